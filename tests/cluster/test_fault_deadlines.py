"""Deadlines, live: a stuck stage is alerted before its deadline kills it; a Job past its deadline
fails ``DeadlineExceeded`` (the REAL Job controller), its run ends Crashed and is alerted.

"Stuck" is a stage process stopped with SIGSTOP (as a read hung on a dead mount would hold it),
after a slow start (its process held ``START_STALL_S`` before its run is Running, as an image
pull on a new node would hold it):
the fake kubelet (a STAND-IN) keeps its pod Running, the flow run stays Running. The Job
controller's deadline then deletes the pod (SIGTERM, SIGKILL after the grace period).

Kubernetes 1.20 schedules one re-check of a Job's deadline; the controller-manager's resync
(``--min-resync-period=10s``) is the backstop: the tests wait on the Job's condition with a
generous timeout, never a fixed sleep.

That the daily Job's deadline covers its stages' deadlines x dispatch attempts plus pod-watch
time, and that the alert's window is shorter than every deadline, is checked from the files
themselves by tests/k8s/test_deadlines.py (k8sfix); here the scaled values run for real.

Test-only overrides (stated here): the first test's extract deployment waits at its pause point
(``TRIPFLOW_PAUSE_AT=extract``, ``tasks.faults.barrier_point``) so that it is stopped mid-stage for
certain: a 2 000-trip extract can otherwise finish between the test seeing its run Running and
stopping it (seen twice: the run Completed, so nothing was stuck and no alert was due); the
re-dispatched extract, the barrier's second party, goes through. The second test gives its one
daily run a lower ``active_deadline_seconds`` (``--job-variable``), so the daily Job's deadline
comes in seconds.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from cluster import alerts
from cluster.conftest import (
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
    shared_warehouse_fixture,  # noqa: F401 - a fixture
    signal_flow_run,
    stages_of,
    state_names,
    state_timeline,
    wait_for,
)
from ops.conftest import Receiver

from flows.stages import STAGE_DEPLOYMENTS

pytestmark = pytest.mark.timeout(1800)

#: How long the stuck stage's pod takes to start (its process held before its run is Running):
#: more than the margin between the "Running longer than" window and the extract Job's deadline
#: (45 min against 1 h, scaled: 108 s against 144 s). Counted from Running, the window then ended
#: after the deadline had killed the stage, and the stuck stage was never alerted.
START_STALL_S = 45

#: Beyond a Job's deadline, how long the Job controller may take to fail it (its one scheduled
#: re-check can be missed; the resync period is the backstop) on this loaded machine.
CONTROLLER_SLACK_S = 300


def _deadline_exceeded(seen: Recorder, flow_run_id: Any) -> dict[str, Any] | None:
    for job in seen.of_flow_run("Job", flow_run_id):
        for condition in job["status"].get("conditions") or []:
            if condition["type"] == "Failed" and condition["status"] == "True":
                return {"job": job, "condition": condition}
    return None


def _running(flow_run_id: Any) -> bool:
    return "Running" in state_names(flow_run_id)


def test_stuck_stage_is_alerted_before_its_deadline_then_fails_deadline_exceeded(
    deployed: Deployed, shared_warehouse: Path, receiver: Receiver, request: pytest.FixtureRequest
) -> None:
    day = "2025-11-05"
    # Outside /tmp: the fake kubelet maps a pod's /tmp (an emptyDir) to a folder of its own.
    barrier = shared_warehouse.parent / "extract-barrier"
    extract_env = deployed.deployment("extract")["work_pool"]["job_variables"]["env"]
    pause = {"TRIPFLOW_PAUSE_AT": "extract", "TRIPFLOW_BARRIER": f"{barrier}:2"}
    with (
        alerts.applied(receiver.url),
        Recorder(deployed.admin) as seen,
        job_variables(STAGE_DEPLOYMENTS["extract"], env={**extract_env, **pause}),
    ):
        flow_run_id = run_deployment_cli(
            "daily-trip-etl/daily-trip-etl", "--param", f"run_date={day}", "--param", "rows=2000"
        )
        extract = wait_for(
            lambda: next(iter(child_runs(flow_run_id)), None), 300, "the extract stage's run"
        )
        assert stages_of([extract]) == ["extract"]
        # What the test stopped never outlives it (a stopped `prefect.engine` process of this
        # run was seen left behind, stopped, after the session; why is not known).
        request.addfinalizer(lambda: signal_flow_run(extract.id, signal.SIGKILL) and None)
        # A pod slow to start: its process held from its first moments, before its run is Running.
        wait_for(
            lambda: signal_flow_run(extract.id, signal.SIGSTOP),
            300,
            "the extract pod's process",
            every=0.05,
        )
        assert not _running(extract.id), "the extract run was Running before its pod was held"
        time.sleep(START_STALL_S)
        signal_flow_run(extract.id, signal.SIGCONT)
        wait_for(lambda: _running(extract.id), 300, "the extract stage's run Running")
        wait_for(
            lambda: at_pause_point(barrier),
            300,
            "the extract at its pause point",
            every=0.2,
        )
        stopped = wait_for(
            lambda: signal_flow_run(extract.id, signal.SIGSTOP), 60, "the extract pod's process"
        )
        assert stopped >= 1
        ended = [n for n in state_names(extract.id) if n in FINAL_STATES]
        assert not ended, f"the held extract ended before it was stopped: {ended}"
        [job] = wait_for(lambda: seen.of_flow_run("Job", extract.id), 60, "the extract Job")
        deadline_s = job["spec"]["activeDeadlineSeconds"]
        assert (
            deadline_s
            == deployed.deployment("extract")["work_pool"]["job_variables"][
                "active_deadline_seconds"
            ]
        )

        try:
            alert = receiver.wait_for(
                lambda p: (
                    "Running longer than" in str(p.body.get("subject"))
                    and extract.name in str(p.body.get("subject"))
                ),
                deadline_s + 60,
            )
        except AssertionError as missing:
            # Seen once in ~10 full runs (the pod killed at its deadline, no alert at all): the
            # timeline says whether the window could have started at Pending.
            start = job["status"].get("startTime")
            raise AssertionError(
                f"{missing}; extract run states (from its Job's start, else its first state): "
                f"{state_timeline(extract.id, iso_seconds(start) if start else None)}"
            ) from None
        failed = wait_for(
            lambda: _deadline_exceeded(seen, extract.id),
            deadline_s + CONTROLLER_SLACK_S,
            "the extract Job's Failed condition",
        )
        assert failed["condition"]["reason"] == "DeadlineExceeded", failed["condition"]
        job_started = iso_seconds(failed["job"]["status"]["startTime"])
        job_failed = iso_seconds(failed["condition"]["lastTransitionTime"])
        # Alerted before the deadline could kill the stage (the Job's start + its deadline).
        print(
            f"stuck stage alerted {job_started + deadline_s - alert.at:.0f} s before its "
            f"{deadline_s} s deadline; Job failed {job_failed - job_started:.0f} s after start"
        )
        assert alert.at < job_started + deadline_s, (alert.at, job_started, deadline_s)

        stage_final = wait_final(deployed, extract.id, CONTROLLER_SLACK_S)
        assert stage_final.state.name == "Crashed", stage_final.state
        # The day dispatches the crashed stage once more (flows.dispatch) and goes on.
        daily = deployed.deployment("daily-trip-etl")["work_pool"]["job_variables"]
        final = wait_final(deployed, flow_run_id, daily["active_deadline_seconds"] + 120)
        assert final.state.name == "Completed", final.state.message
        stages = stages_of(child_runs(flow_run_id))
        assert stages == ["extract", "extract", "transform", "load", "validate"], stages


def test_daily_job_past_its_deadline_fails_and_its_crashed_run_is_alerted(
    deployed: Deployed, shared_warehouse: Path, receiver: Receiver
) -> None:
    day = "2025-11-04"
    deadline_s = 45  # test-only: this run's daily Job deadline
    with alerts.applied(receiver.url), Recorder(deployed.admin) as seen:
        flow_run_id = run_deployment_cli(
            "daily-trip-etl/daily-trip-etl",
            "--param", f"run_date={day}", "--param", "rows=2000",
            "--job-variable", f"active_deadline_seconds={deadline_s}",
        )  # fmt: skip
        wait_for(lambda: _running(flow_run_id), 300, "the daily run Running")
        wait_for(
            lambda: signal_flow_run(flow_run_id, signal.SIGSTOP), 60, "the daily pod's process"
        )
        try:
            failed = wait_for(
                lambda: _deadline_exceeded(seen, flow_run_id),
                deadline_s + CONTROLLER_SLACK_S,
                "the daily Job's Failed condition",
            )
            assert failed["job"]["spec"]["activeDeadlineSeconds"] == deadline_s
            assert failed["condition"]["reason"] == "DeadlineExceeded", failed["condition"]
            failed_at = time.time()
            final = wait_final(deployed, flow_run_id, CONTROLLER_SLACK_S)
            assert final.state.name == "Crashed", final.state
            alert = receiver.wait_for(
                lambda p: (
                    "Crashed" in str(p.body.get("subject")) and str(flow_run_id) in str(p.body)
                ),
                120,
            )
            assert f"run_date: {day}" in alert.body["body"], alert.body
            print(f"daily Job DeadlineExceeded -> Crashed alert: {alert.at - failed_at:.1f} s")
        finally:
            # What the test stopped never outlives it (a stopped process ignores SIGTERM).
            signal_flow_run(flow_run_id, signal.SIGKILL)
        # Whatever stage it had started runs out on its own; let it end before the next test.
        for child in child_runs(flow_run_id):
            wait_final(deployed, child.id, 600)
