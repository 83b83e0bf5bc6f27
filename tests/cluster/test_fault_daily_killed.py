"""The daily pod killed mid-stage, live: its stage run is cancelled or finishes before any re-run of
the day writes the same staging — never two writers on one day.

The day's transform stage runs in its own pod; the test holds it mid-stage (at its pause point,
clean and quarantine written, then SIGSTOP: a slow stage that cannot act on a cancel, as one
inside a long native call is) and deletes the daily run's pod (as a node drain or an operator would;
the fake kubelet, a STAND-IN, sends SIGTERM, then SIGKILL after the grace period). Then the day is
re-run at once, as an operator would (``prefect deployment run … --param run_date=…``); on
Kubernetes 1.20 the Job controller may also start a replacement pod for the killed daily run (a
deleted pod is not counted as failed). The held stage is let go (SIGCONT: slow, not dead) as soon
as its pod is being deleted (it then handles SIGTERM as a live process would), or a stage run of
the day started after the kill is Running (a second writer: the test has seen what it looks for),
or after ``HOLD_S``. (Letting it go when another stage *pod* started, as a first version did, let
it finish before that pod's run was Running: without the fix the test then passed, with the
re-run's extract Running at the very moment the held run was Cancelled.)

The killed daily run asks for its stage run to be cancelled, but Prefect 3.9.1's worker cancels
only runs that have not started: the held transform runs on. What keeps the day to one writer is
``flows.stages.wait_for_earlier_stage_runs``: a run of the day dispatches no stage while an
earlier stage run of the day has not ended. Without it, the re-run's extract pod started while
the held transform still ran (this test failed).

Proved, on the Prefect server's own clock: the killed day's stage run reached its final state
(which its process sets after its last write, or the observer sets once its pod is gone) before
any stage run of the day started after the kill entered Running (which its process must reach
before it writes anything), and the re-run publishes the day. The order is causal, not a race the
test can win by luck: the re-run's first dispatch is made only after it has read the held run's
final state. The containers' lives are printed beside it; they are not the criterion, since a
stage process's exit comes a few seconds after its final state (Prefect's teardown writes nothing
to the day's staging), and the pods of the re-run start only after that wait.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from cluster.conftest import (
    NAMESPACE,
    Deployed,
    Recorder,
    child_runs,
    iso_seconds,
    run_deployment_cli,
    wait_final,
)
from cluster.faults_support import (
    FINAL_STATES,
    at_pause_point,
    job_variables,
    published_runs,
    shared_warehouse_fixture,  # noqa: F401 - a fixture
    signal_flow_run,
    stage_deployment_ids,
    stages_of,
    state_names,
    wait_for,
)

pytestmark = pytest.mark.timeout(1800)

DAY = "2025-11-03"
#: The longest the killed day's stage is held (SIGSTOP) if no later stage run is Running: longer
#: than the killed run's wait for its stage's cancellation (flows.stages.CANCEL_WAIT_SECONDS) plus
#: a re-run's first stage pod start on this machine, so that a second writer would show.
HOLD_S = 90


def _interval(seen: Recorder, pod: dict[str, Any]) -> tuple[float, float] | None:
    """(container started, container ended or pod deleted or now), None if it never ran."""
    state = ((pod["status"].get("containerStatuses") or [{}])[0]).get("state", {})
    started = (state.get("running") or state.get("terminated") or {}).get("startedAt")
    if not started:
        return None
    finished = (state.get("terminated") or {}).get("finishedAt")
    if finished:
        return iso_seconds(started), iso_seconds(finished)
    return iso_seconds(started), seen.deleted.get(pod["metadata"]["uid"], time.time())


async def _stage_run_times() -> dict[Any, tuple[str, float | None, float | None]]:
    """Every stage flow run of ``DAY`` (no other test's): (stage, its first Running time, its
    first final state's time), from the Prefect server's states."""
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    out: dict[Any, tuple[str, float | None, float | None]] = {}
    ids = await stage_deployment_ids()
    async with get_client() as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(ids)))
        )
        for run in runs:
            if (run.parameters or {}).get("run_date") != DAY:
                continue
            states = sorted(await client.read_flow_run_states(run.id), key=lambda s: s.timestamp)
            running = next((s.timestamp.timestamp() for s in states if s.name == "Running"), None)
            final = next((s.timestamp.timestamp() for s in states if s.is_final()), None)
            out[run.id] = (
                ids.get(run.deployment_id, "?") if run.deployment_id else "?",
                running,
                final,
            )
    return out


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
    # Test-only override: the transform waits at its pause point (tasks.faults.barrier_point:
    # clean and quarantine written, region totals not yet) until the test adds the second party,
    # so that the SIGSTOP lands mid-stage for certain (a 20 000-trip transform can otherwise end
    # between seeing its run Running and stopping it: seen once).
    # Outside /tmp: the fake kubelet maps a pod's /tmp (an emptyDir) to a folder of its own.
    barrier = shared_warehouse.parent / "transform-barrier"
    transform = deployed.deployment("transform")["work_pool"]["job_variables"]
    pause = {"TRIPFLOW_PAUSE_AT": "transform", "TRIPFLOW_BARRIER": f"{barrier}:2"}
    with (
        Recorder(deployed.admin) as seen,
        job_variables("tripflow-transform/transform", env={**transform["env"], **pause}),
    ):
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
        wait_for(
            lambda: at_pause_point(barrier),
            600,
            "the transform at its pause point",
            every=0.2,
        )
        wait_for(lambda: signal_flow_run(orphan.id, signal.SIGSTOP), 60, "the transform process")
        ended = [n for n in state_names(orphan.id) if n in FINAL_STATES]
        assert not ended, f"the held transform ended before the kill: {ended}"

        def release() -> None:
            (barrier / "the-test").touch()  # the second party: the pause point lets it go
            signal_flow_run(orphan.id, signal.SIGCONT)

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
            return any(
                run_id != orphan.id and running is not None and running >= killed_at
                for run_id, (_, running, _) in asyncio.run(_stage_run_times()).items()
            )

        def orphan_terminating() -> bool:
            return bool(seen.objects[orphan_uid]["metadata"].get("deletionTimestamp"))

        deadline = time.monotonic() + HOLD_S
        while time.monotonic() < deadline and not (other_writer_started() or orphan_terminating()):
            time.sleep(1)
        release()  # let it go (if it still lives)

        daily = deployed.deployment("daily-trip-etl")["work_pool"]["job_variables"]
        final = wait_final(deployed, rerun, daily["active_deadline_seconds"] + 120)
        orphan_final = wait_final(deployed, orphan.id, 600)
        wait_final(deployed, first, 600)
        print(
            f"killed day: {state_names(first)}; its held transform: "
            f"{state_names(orphan.id)} (final {orphan_final.state.name}); "
            f"the re-run: {final.state.name}"
        )

        times = asyncio.run(_stage_run_times())
        _, _, orphan_final_at = times[orphan.id]
        assert orphan_final_at is not None, f"the held transform never ended: {times[orphan.id]}"
        later = sorted(
            (running, stage, run_id)
            for run_id, (stage, running, _) in times.items()
            if run_id != orphan.id and running is not None and running >= killed_at
        )
        assert later, "no re-run of the day ran any stage"
        orphan_interval = _interval(seen, seen.objects[orphan_uid])
        pods = sorted(
            (interval[0], pod["metadata"]["labels"]["tripflow.io/stage"])
            for pod in _stage_pods(seen)
            if pod["metadata"]["uid"] != orphan_uid
            and (interval := _interval(seen, pod)) is not None
            and interval[0] >= killed_at
        )
        print(
            f"after the kill: the held transform's run final at {orphan_final_at - killed_at:.1f} s"
            f" (its container ended at "
            f"{'?' if orphan_interval is None else f'{orphan_interval[1] - killed_at:.1f}'} s); "
            f"the first later stage run Running at {later[0][0] - killed_at:.1f} s "
            f"({later[0][1]}), the first later stage pod's container at "
            f"{'?' if not pods else f'{pods[0][0] - killed_at:.1f}'} s"
        )
        overlapping = [(stage, run_id, t) for t, stage, run_id in later if t < orphan_final_at]
        assert not overlapping, (
            f"two writers on {DAY}: the killed day's transform run ended "
            f"{orphan_final_at - killed_at:.1f} s after the kill, while these stage runs of a "
            f"re-run were already Running: "
            f"{[(s, str(r), round(t - killed_at, 1)) for s, r, t in overlapping]}"
        )
        assert final.state.name == "Completed", final.state.message
        # Published by the re-run (and, on 1.20, possibly before it by the killed run's
        # replacement pod: one after the other, each a whole day, never side by side).
        published = published_runs(shared_warehouse, DAY)
        print(f"published by: {published} (re-run {rerun}, killed run {first})")
        assert str(rerun) in published, published
