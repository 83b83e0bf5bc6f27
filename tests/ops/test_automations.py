"""Automations as code (flows/automations.py): their snapshot, idempotent apply, and that they
fire on a real Prefect server, with the time from a failed day to the notification measured.

The notification block is a real ``CustomWebhookNotificationBlock`` pointed at a local HTTP
receiver (``receiver`` in conftest.py); the Prefect server's triggers and actions services send it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import ROOT, tripflow
from ops.conftest import Received, Receiver

from flows import automations as autos

SNAPSHOT = Path(__file__).parent / "snapshots" / "automations.json"
#: A fixed block id, so the snapshot is the same on every machine.
BLOCK_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")


def _ops_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m flows.ops_cli`` = ``tripflow automations`` once wired into flows/cli.py."""
    return subprocess.run(
        [sys.executable, "-m", "flows.ops_cli", *args],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _definitions_json() -> list[dict[str, Any]]:
    """The definitions as JSON, with the triggers' sets sorted (a set's order varies by run)."""
    return [autos.comparable(a) for a in autos.definitions(BLOCK_ID)]


def test_definitions_match_snapshot() -> None:
    """An accidental change to any trigger, template or window shows up as a diff in review.

    Refresh after an intended change: TRIPFLOW_UPDATE_SNAPSHOTS=1 uv run pytest tests/ops -q
    """
    current = json.loads(json.dumps(_definitions_json(), sort_keys=True))
    if os.environ.get("TRIPFLOW_UPDATE_SNAPSHOTS") or not SNAPSHOT.exists():
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text()), "refresh: TRIPFLOW_UPDATE_SNAPSHOTS=1"


def test_definitions_are_valid_for_the_server() -> None:
    """The server's own schema accepts every automation, including its Jinja templates."""
    from prefect.server.events.schemas.automations import AutomationCore

    for data in _definitions_json():
        parsed = AutomationCore.model_validate(data)
        assert parsed.name.startswith(autos.PREFIX)
    by_name = {d["name"]: d for d in _definitions_json()}
    assert by_name[autos.FAILED]["trigger"]["expect"] == [
        "prefect.flow-run.Crashed",
        "prefect.flow-run.Failed",
    ]
    stale = by_name[autos.STALE]["trigger"]
    assert (stale["posture"], stale["expect"], stale["within"]) == (
        "Proactive",
        ["prefect.flow-run.Completed"],
        26 * 3600.0,
    )
    assert sorted(by_name[autos.RUNNING_LONG]["trigger"]["after"]) == [
        "prefect.flow-run.Pending",
        "prefect.flow-run.Running",
    ]
    watched = by_name[autos.RUNNING_LONG]["trigger"]["match_related"]["prefect.resource.name"]
    stages = ("extract", "transform", "load", "validate")
    assert sorted(watched) == sorted(["daily-trip-etl", *(f"tripflow-{s}" for s in stages)])
    assert "prefect.kubernetes.pod.evicted" in by_name[autos.POD_FAILED]["trigger"]["expect"]


def test_parse_duration() -> None:
    assert autos.parse_duration("26h") == timedelta(hours=26)
    assert autos.parse_duration("20s") == autos.parse_duration("20") == timedelta(seconds=20)
    assert autos.parse_duration("1.5m") == timedelta(seconds=90)
    with pytest.raises(ValueError):
        autos.parse_duration("soon")


async def _ours() -> dict[str, list[Any]]:
    from prefect import get_client

    async with get_client() as client:
        found = await client.read_automations()
    mine: dict[str, list[Any]] = {}
    for automation in found:
        if automation.name.startswith(autos.PREFIX) and automation.owner_resource is None:
            mine.setdefault(automation.name, []).append(automation)
    return mine


async def _clean_up(block_name: str) -> None:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        for name in (autos.FAILED, autos.STALE, autos.POD_FAILED, autos.RUNNING_LONG):
            for automation in await client.read_automations_by_name(name):
                await client.delete_automation(automation.id)
        try:
            block = await client.read_block_document_by_name(block_name, "custom-webhook")
        except ObjectNotFound:
            return
        await client.delete_block_document(block.id)


@pytest.fixture
def clean_automations(prefect_server: str) -> Any:
    yield
    asyncio.run(_clean_up("tripflow-ops-test"))


def test_apply_is_idempotent(clean_automations: None, receiver: Receiver) -> None:
    """Applying twice leaves one of each; a changed window updates in place (same id)."""
    args = ("apply", "--webhook-block", "tripflow-ops-test", "--webhook-url", receiver.url)
    first = _ops_cli(*args, "--json")
    assert first.returncode == 0, first.stderr
    created = json.loads(first.stdout)["automations"]
    count = len(autos.definitions(uuid.uuid4()))  # every automation tripflow defines
    assert [a["action"] for a in created] == ["created"] * count
    second = _ops_cli(*args, "--json")
    assert second.returncode == 0, second.stderr
    assert [a["action"] for a in json.loads(second.stdout)["automations"]] == ["unchanged"] * count
    mine = asyncio.run(_ours())
    assert sorted(mine) == sorted(a["name"] for a in created)
    assert all(len(found) == 1 for found in mine.values())
    third = _ops_cli(*args, "--stale-after", "30h", "--json")
    assert third.returncode == 0, third.stderr
    actions = {a["name"]: (a["action"], a["id"]) for a in json.loads(third.stdout)["automations"]}
    assert actions[autos.STALE][0] == "updated"
    assert {n: i for n, (_, i) in actions.items()} == {a["name"]: a["id"] for a in created}
    [stale] = asyncio.run(_ours())[autos.STALE]
    assert stale.trigger.within == timedelta(hours=30)
    # An unknown block is a clear error, not a traceback.
    missing = _ops_cli("apply", "--webhook-block", "no-such-block")
    assert missing.returncode == 3
    assert "no notification block 'no-such-block'" in missing.stderr


def _emit_pod_event(flow_run_id: str, flow_run_name: str) -> None:
    """An event shaped exactly as prefect-kubernetes 0.8.0's observer emits for a pod whose
    container was OOM-killed (observer.py: a Failed pod with a terminated reason becomes
    ``prefect.kubernetes.pod.evicted`` with ``kubernetes.reason``). Synthesized here: no cluster."""
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    uid = str(uuid.uuid4())
    emit_event(
        event="prefect.kubernetes.pod.evicted",
        resource={
            "prefect.resource.id": f"prefect.kubernetes.pod.{uid}",
            "prefect.resource.name": "daily-trip-etl-abcde-xyz12",
            "kubernetes.namespace": "data-pipeline",
            "kubernetes.diagnosis": "OOMKilled",
            "kubernetes.reason": "OOMKilled",
        },
        related=[
            {
                "prefect.resource.id": f"prefect.flow-run.{flow_run_id}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": flow_run_name,
            }
        ],
    )
    EventsWorker.drain_all(timeout=10)


def _subject(post: Received) -> str:
    return str(post.body.get("subject", ""))


async def _created_at(name: str) -> float:
    """When the server created the automation ``name`` (its own clock: this machine's)."""
    from datetime import datetime

    from prefect import get_client

    async with get_client() as client:
        response = await client.request(
            "POST", "/automations/filter", json={"automations": {"name": {"any_": [name]}}}
        )
    [found] = [a for a in response.json() if a["name"] == name]
    return datetime.fromisoformat(found["created"]).timestamp()


def test_time_to_detection(
    clean_automations: None, receiver: Receiver, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A day fails; the failure notification arrives within seconds, with what a person needs.

    Also: the proactive "no Completed run" alert fires (window shortened to 20 s), the pod
    failure alert diagnoses an OOM kill, and "Running longer than" fires for a stuck stage run
    (window shortened to 10 s).
    """
    applied = _ops_cli(
        "apply",
        "--webhook-block",
        "tripflow-ops-test",
        "--webhook-url",
        receiver.url,
        "--stale-after",
        "20s",
        "--running-longer-than",
        "10s",
    )
    assert applied.returncode == 0, applied.stderr
    # The stale window starts when the server created the automation (before the CLI returned).
    applied_at = asyncio.run(_created_at(autos.STALE))

    # 1. A day fails its min_rows check (the sample has ~10k rows, not 1,000,000).
    done = tripflow(
        "run",
        "--source",
        "sample",
        "--date",
        "2025-11-15",
        "--min-rows",
        "1000000",
        "--json",
        cwd=workdir,
    )
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    flow_run_id = report["flow_run_id"]
    failed = receiver.wait_for(
        lambda p: "Failed" in _subject(p) and flow_run_id in p.body.get("body", ""), 120
    )
    body = failed.body["body"]
    assert "daily-trip-etl/2025-11-15" in body  # the run's name
    assert "run_date: 2025-11-15" in body
    assert "min_rows" in body and "checks failed" in body  # the failed check
    assert f"/runs/flow-run/{flow_run_id}" in body  # the link
    assert "link: http" in body

    from prefect import get_client

    async def _failed_at() -> float:
        async with get_client() as client:
            run = await client.read_flow_run(uuid.UUID(flow_run_id))
        assert run.state is not None and run.state.name == "Failed"
        return run.state.timestamp.timestamp()

    detection = failed.at - asyncio.run(_failed_at())
    with capsys.disabled():
        print(f"\ntime to detection (Failed state -> notification received): {detection:.2f} s")
        print(body)
    assert 0 <= detection < 120

    # 2. A pod OOM-killed (an event of the shape prefect-kubernetes' observer emits).
    _emit_pod_event(flow_run_id, "daily-trip-etl/2025-11-15")
    pod = receiver.wait_for(lambda p: "pod" in _subject(p), 60)
    assert "(OOMKilled)" in _subject(pod)
    assert "memory limit" in pod.body["body"] and "daily-trip-etl/2025-11-15" in pod.body["body"]

    # 3. No Completed daily-trip-etl run for 20 s since the automation was applied (only a
    # failed one): the proactive alert fires.
    stale = receiver.wait_for(lambda p: "no Completed" in _subject(p), 120)
    assert stale.at - applied_at >= 20
    with capsys.disabled():
        print(f"'no Completed run in 20 s' alert after {stale.at - applied_at:.1f} s")

    # 4. A stage run stuck in Running (as a stuck transform pod's run would be): it waits until
    # its own "Running longer than" alert arrives.
    from prefect import flow

    alerted = threading.Event()
    receiver.add_listener(lambda p: alerted.set() if "Running longer" in _subject(p) else None)

    @flow(name="tripflow-transform", flow_run_name="ops-test-stuck-stage")
    def stuck() -> bool:
        return alerted.wait(timeout=90)

    assert stuck() is True, "no 'Running longer than' alert for a stage Running past 10 s"
    long_post = receiver.wait_for(lambda p: "Running longer" in _subject(p), 1)
    assert "ops-test-stuck-stage" in long_post.body["body"]
