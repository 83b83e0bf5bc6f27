"""The daily pod killed mid-stage, live: its stage run is cancelled or finishes before any re-run of
the day writes the same staging — never two writers on one day.

The day's transform stage runs in its own pod; the test holds it mid-stage (SIGSTOP: a slow
stage, as a big day is) and deletes the daily run's pod (as a node drain or an operator would;
the fake kubelet, a STAND-IN, sends SIGTERM, then SIGKILL after the grace period). Then the day is
re-run at once, as an operator would (``prefect deployment run … --param run_date=…``); on
Kubernetes 1.20 the Job controller may also start a replacement pod for the killed daily run (a
deleted pod is not counted as failed). The held stage is let go (SIGCONT: slow, not dead) as soon
as its pod is being deleted (it then handles SIGTERM as a live process would), or any other stage
pod of the day starts, or after ``HOLD_S``.

The killed daily run asks for its stage run to be cancelled, but Prefect 3.9.1's worker cancels
only runs that have not started: the held transform runs on. What keeps the day to one writer is
``flows.stages.wait_for_earlier_stage_runs``: a run of the day dispatches no stage while an
earlier stage run of the day has not ended. Without it, the re-run's extract pod started while
the held transform still ran (this test failed).

Proved: no stage pod of the day started after the kill runs while the killed day's stage still
runs (its container's end, or its pod's deletion, comes first), and the re-run publishes the day.
"""

from __future__ import annotations

import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cluster.conftest import (
    NAMESPACE,
    Deployed,
    Recorder,
    child_runs,
    run_deployment_cli,
    wait_final,
)
from cluster.faults_support import (
    published_runs,
    shared_warehouse_fixture,  # noqa: F401 - a fixture
    signal_flow_run,
    stages_of,
    state_names,
    wait_for,
)

pytestmark = pytest.mark.timeout(1800)

DAY = "2025-11-03"
#: The longest the killed day's stage is held (SIGSTOP) if no other stage pod starts: longer than
#: the killed run's wait for its stage's cancellation (flows.stages.CANCEL_WAIT_SECONDS) plus a
#: re-run's first stage pod start on this machine, so that a second writer would show.
HOLD_S = 90


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _interval(seen: Recorder, pod: dict[str, Any]) -> tuple[float, float] | None:
    """(container started, container ended or pod deleted or now), None if it never ran."""
    state = ((pod["status"].get("containerStatuses") or [{}])[0]).get("state", {})
    started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
    if not started:
        return None
    finished = (state.get("terminated") or {}).get("finishedAt")
    if finished:
        return _ts(started), _ts(finished)
    return _ts(started), seen.deleted.get(pod["metadata"]["uid"], time.time())


def _stage_pods(seen: Recorder) -> list[dict[str, Any]]:
    return [
        o
        for o in list(seen.objects.values())
        if o["kind"] == "Pod"
        and o["metadata"].get("labels", {}).get("tripflow.io/stage")
        in ("extract", "transform", "load", "validate")
    ]


def test_daily_pod_killed_mid_stage_never_two_writers_on_one_day(
    deployed: Deployed, shared_warehouse: Path
) -> None:
    with Recorder(deployed.admin) as seen:
        first = run_deployment_cli(
            "daily-trip-etl/daily-trip-etl", "--param", f"run_date={DAY}", "--param", "rows=20000"
        )

        def transform_running() -> Any:
            children = child_runs(first)
            for child, stage in zip(children, stages_of(children), strict=True):
                if stage == "transform" and "Running" in state_names(child.id):
                    return child
            return None

        orphan = wait_for(transform_running, 600, "the day's transform run Running")
        wait_for(lambda: signal_flow_run(orphan.id, signal.SIGSTOP), 60, "the transform process")
        [daily_pod] = [
            p for p in seen.of_flow_run("Pod", first) if p["metadata"]["uid"] not in seen.deleted
        ]
        name = daily_pod["metadata"]["name"]
        assert deployed.admin.status("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}") == 200
        killed_at = time.time()
        [orphan_pod] = seen.of_flow_run("Pod", orphan.id)
        orphan_uid = orphan_pod["metadata"]["uid"]

        rerun = run_deployment_cli(
            "daily-trip-etl/daily-trip-etl", "--param", f"run_date={DAY}", "--param", "rows=20000"
        )

        def other_writer_started() -> bool:
            for pod in _stage_pods(seen):
                if pod["metadata"]["uid"] == orphan_uid:
                    continue
                interval = _interval(seen, pod)
                if interval and interval[0] >= killed_at:
                    return True
            return False

        def orphan_terminating() -> bool:
            return bool(seen.objects[orphan_uid]["metadata"].get("deletionTimestamp"))

        deadline = time.monotonic() + HOLD_S
        while time.monotonic() < deadline and not (other_writer_started() or orphan_terminating()):
            time.sleep(0.2)
        signal_flow_run(orphan.id, signal.SIGCONT)  # let it go (if it still lives)

        daily = deployed.deployment("daily-trip-etl")["work_pool"]["job_variables"]
        final = wait_final(deployed, rerun, daily["active_deadline_seconds"] + 120)
        orphan_final = wait_final(deployed, orphan.id, 600)
        wait_final(deployed, first, 600)
        print(
            f"killed day: {state_names(first)}; its held transform: "
            f"{state_names(orphan.id)} (final {orphan_final.state.name}); "
            f"the re-run: {final.state.name}"
        )

        orphan_interval = _interval(seen, seen.objects[orphan_uid])
        assert orphan_interval is not None
        others = []
        for pod in _stage_pods(seen):
            interval = _interval(seen, pod)
            if pod["metadata"]["uid"] == orphan_uid or interval is None:
                continue
            if interval[0] >= killed_at:
                others.append((pod["metadata"]["labels"]["tripflow.io/stage"], interval))
        assert others, "no re-run of the day ran any stage"
        first_other = min(i[0] for _, i in others)
        print(
            f"after the kill: the held transform ended at {orphan_interval[1] - killed_at:.1f} s, "
            f"the first later stage pod started at {first_other - killed_at:.1f} s"
        )
        overlapping = [(s, i) for s, i in others if i[0] < orphan_interval[1]]
        assert not overlapping, (
            f"two writers on {DAY}: the killed day's transform ran until "
            f"{orphan_interval[1] - killed_at:.1f} s after the kill, while these stage pods of a "
            f"re-run had started: "
            f"{[(s, round(i[0] - killed_at, 1)) for s, i in overlapping]}"
        )
        assert final.state.name == "Completed", final.state
        # Published by the re-run (and, on 1.20, possibly before it by the killed run's
        # replacement pod: one after the other, each a whole day, never side by side).
        published = published_runs(shared_warehouse, DAY)
        print(f"published by: {published} (re-run {rerun}, killed run {first})")
        assert str(rerun) in published, published
