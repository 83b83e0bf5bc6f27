"""Issue 13's defects of the shipped configuration, live (real control plane, fake kubelet).

These fail on the configuration as shipped before the fixes (that is their point):

- The landed trigger: ``tripflow land`` emits ``tripflow.raw.landed``; the triggered run starts
  from the landed raw day, and no extract Job is created (defect 1).
- A failed check: no run, stage or task ever enters a retrying state, and the failure
  notification reaches a local receiver within 60 s of the failing stage's error (defect 2).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

import pytest
from cluster import alerts, overrides
from cluster.conftest import (
    Deployed,
    Recorder,
    child_runs,
    iso_seconds,
    run_deployment_cli,
    wait_final,
)
from helpers import tripflow
from ops.conftest import Receiver

pytestmark = pytest.mark.timeout(1800)


async def _runs_of_day(deployment: str, day: str, after: float) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    async with get_client() as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
        )
    return [
        r
        for r in runs
        if str(r.parameters.get("run_date")) == day and r.created.timestamp() >= after - 5
    ]


def test_landed_trigger_starts_from_the_landed_day_without_an_extract_job(
    deployed: Deployed,
) -> None:
    day = "2025-11-10"
    env = {
        **overrides.staging_env(deployed.s3.endpoint, {}),
        "TRIPFLOW_ROWS": "20000",
        "TRIPFLOW_STAGING": deployed.shipped["definitions"]["pod_env"]["TRIPFLOW_STAGING"],
    }
    with Recorder(deployed.admin) as seen:
        landed_at = time.time()
        done = tripflow(
            "land", "--date", day, "--source", "synthetic", cwd=deployed.cluster.folder, env=env
        )
        assert done.returncode == 0, done.stdout + done.stderr
        deadline = time.monotonic() + 120
        while not (runs := asyncio.run(_runs_of_day("daily-trip-etl", day, landed_at))):
            assert time.monotonic() < deadline, "the landed event started no daily-trip-etl run"
            time.sleep(2)
        [run] = runs
        assert run.parameters.get("landed_run_id"), run.parameters
        daily = deployed.deployment("daily-trip-etl")["work_pool"]["job_variables"]
        final = wait_final(deployed, run.id, daily["active_deadline_seconds"] + 120)
        assert final.state.name == "Completed", deployed.worker_log.read_text()[-3000:]
        stages = sorted(j["metadata"]["labels"]["tripflow.io/stage"]
                        for rid in [run.id, *[c.id for c in child_runs(run.id)]]
                        for j in seen.of_flow_run("Job", rid))  # fmt: skip
        assert "extract" not in stages, stages
        assert stages == ["load", "orchestrate", "transform", "validate"], stages


async def _states(flow_run_ids: list[uuid.UUID]) -> list[tuple[str, str]]:
    """(flow run / task run, state name) of every state those runs and their tasks went through."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    seen = []
    async with get_client() as client:
        for rid in flow_run_ids:
            for state in await client.read_flow_run_states(rid):
                seen.append((f"flow run {rid}", state.name))
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids))
        )
        for task in tasks:
            for state in await client.read_task_run_states(task.id):
                seen.append((f"task run {task.name}", state.name))
    return seen


def test_failed_check_never_retries_and_is_alerted_within_60_s(
    deployed: Deployed, receiver: Receiver
) -> None:
    with alerts.applied(receiver.url):
        flow_run_id = run_deployment_cli(
            "daily-trip-etl/daily-trip-etl",
            "--param", "run_date=2025-11-09", "--param", "rows=2000",
            # The min_rows check cannot pass: validate fails the day.
            "--param", "min_rows=1000000000",
        )  # fmt: skip
        daily = deployed.deployment("daily-trip-etl")["work_pool"]["job_variables"]
        final = wait_final(deployed, flow_run_id, daily["active_deadline_seconds"] + 120)
        assert final.state.name == "Failed", final.state
        children = child_runs(flow_run_id)
        # The clock starts at the failing stage's error: the end of the first validate run (its
        # parameters are validate's own), else the day's own first failure.
        validate_ends = [
            c.state.timestamp.timestamp()
            for c in children
            if "loaded" in c.parameters and c.state is not None and c.state.is_final()
        ]
        started = min(validate_ends, default=final.state.timestamp.timestamp())
        alert = receiver.wait_for(
            lambda p: "Failed" in str(p.body.get("subject")) and str(flow_run_id) in str(p.body),
            120,
        )
        took = alert.at - started
        print(f"failed check -> notification: {took:.1f} s from the failing stage's end")
        states = asyncio.run(_states([flow_run_id, *[c.id for c in children]]))
        retrying = [s for s in states if s[1] in ("AwaitingRetry", "Retrying")]
        assert not retrying, retrying
        assert took < 60, took


def _running_intervals(seen: Recorder, pods: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(started, ended) of each pod's container: ended = terminated, else deleted, else now."""
    out = []
    for pod in pods:
        statuses = pod["status"].get("containerStatuses") or [{}]
        state = statuses[0].get("state", {})
        started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
        if not started:
            continue
        finished = (state.get("terminated") or {}).get("finishedAt")
        end = (
            iso_seconds(finished)
            if finished
            else seen.deleted.get(pod["metadata"]["uid"], time.time())
        )
        out.append((iso_seconds(started), end))
    return sorted(out)


def test_spot_reclaimed_transform_runs_one_at_a_time_and_publishes_once(
    deployed: Deployed,
) -> None:
    """The transform pod is deleted mid-run (grace 0: its node was reclaimed). Kubernetes 1.20's
    Job controller does not count a deleted pod as failed and starts a replacement pod for the
    same flow run, while the day re-dispatches the crashed stage: never both side by side."""
    from cluster.test_day import _ledger

    day = "2025-11-08"
    with Recorder(deployed.admin) as seen:
        flow_run_id = run_deployment_cli(
            "daily-trip-etl/daily-trip-etl", "--param", f"run_date={day}", "--param", "rows=20000"
        )
        deadline = time.monotonic() + 300
        victim = None
        while victim is None:
            assert time.monotonic() < deadline, "no transform pod ran"
            for pod in seen.objects.values():
                labels = pod["metadata"].get("labels", {})
                running = (pod["status"].get("containerStatuses") or [{}])[0].get("state", {})
                if (
                    pod["kind"] == "Pod"
                    and labels.get("tripflow.io/stage") == "transform"
                    and "running" in running
                ):
                    victim = pod
                    break
            time.sleep(0.2)
        name = victim["metadata"]["name"]
        code = deployed.admin.status(
            "DELETE", f"/api/v1/namespaces/data-pipeline/pods/{name}", {"gracePeriodSeconds": 0}
        )
        assert code == 200, code
        daily = deployed.deployment("daily-trip-etl")["work_pool"]["job_variables"]
        final = wait_final(deployed, flow_run_id, daily["active_deadline_seconds"] + 120)
        children = {str(c.id) for c in child_runs(flow_run_id)}
        transform_pods = [
            o
            for o in seen.objects.values()
            if o["kind"] == "Pod"
            and o["metadata"].get("labels", {}).get("prefect.io/flow-run-id") in children
            and o["metadata"]["labels"].get("tripflow.io/stage") == "transform"
        ]
        intervals = _running_intervals(seen, transform_pods)
        # A pod's startedAt has 1 s resolution (rounded down): closer than that is not an overlap.
        overlaps = [(a, b) for a, b in itertools.pairwise(intervals) if b[0] + 1 < a[1]]
        assert not overlaps, f"two transform executions side by side: {intervals}"
        assert final.state.name == "Completed", final.state.message
        published = [r for r in _ledger(deployed, day) if r[1] == "published"]
        assert len(published) == 1, published
