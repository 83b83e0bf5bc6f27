"""OOMKilled stage, live: the real control plane, the real worker, the fake kubelet (a STAND-IN that
enforces the container's memory limit: RSS polled, the process group SIGKILLed, reported
``OOMKilled``/137 as the kubelet reports the kernel's kill).

Test-only override (stated here, in the style of overrides.py): the ``tripflow-transform/
transform`` deployment's ``memory_request`` and ``memory_limit`` are lowered to 64Mi for this test
(restored after), below what any stage process needs. The daily run's own pod is unchanged.

What it proves: each transform pod ends ``OOMKilled`` (exit 137); the day dispatches the crashed
stage once more (``flows.stages.CRASH_ATTEMPTS`` runs in all, no more); with the limit still too
low the day then fails with the stage's crash as its error (never Completed); the pod alert of
flows/automations.py names ``OOMKilled`` with its diagnosis and the remedy (the memory limit).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster import alerts
from cluster.conftest import Deployed, Recorder, child_runs, run_deployment_cli, wait_final
from cluster.faults_support import (
    job_variables,
    shared_warehouse_fixture,  # noqa: F401 - a fixture
    stages_of,
)
from ops.conftest import Receiver

from flows.stages import CRASH_ATTEMPTS

pytestmark = pytest.mark.timeout(1800)

DAY = "2025-11-07"
TEST_ONLY_LIMIT = "64Mi"


def test_oom_killed_transform_is_dispatched_once_more_and_alerted(
    deployed: Deployed, shared_warehouse: Path, receiver: Receiver
) -> None:
    with (
        alerts.applied(receiver.url),
        Recorder(deployed.admin) as seen,
        job_variables(
            "tripflow-transform/transform",
            memory_request=TEST_ONLY_LIMIT,
            memory_limit=TEST_ONLY_LIMIT,
        ),
    ):
        flow_run_id = run_deployment_cli(
            "daily-trip-etl/daily-trip-etl", "--param", f"run_date={DAY}", "--param", "rows=2000"
        )
        daily = deployed.deployment("daily-trip-etl")["work_pool"]["job_variables"]
        final = wait_final(deployed, flow_run_id, daily["active_deadline_seconds"] + 120)
        log = deployed.worker_log.read_text()[-3000:]
        assert final.state.name == "Failed", (final.state, log)
        assert "transform" in (final.state.message or ""), final.state.message

        children = child_runs(flow_run_id)
        stages = stages_of(children)
        transforms = [c for c, s in zip(children, stages, strict=True) if s == "transform"]
        # Crashed, dispatched once more, crashed again: CRASH_ATTEMPTS runs, then the day fails.
        assert len(transforms) == CRASH_ATTEMPTS == 2, stages
        assert [c.state.name for c in transforms] == ["Crashed"] * CRASH_ATTEMPTS, transforms
        assert "load" not in stages and "validate" not in stages, stages
        for run in transforms:
            [pod] = seen.of_flow_run("Pod", run.id)
            container = pod["spec"]["containers"][0]
            assert container["resources"]["limits"]["memory"] == TEST_ONLY_LIMIT
            terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
            assert (pod["status"]["phase"], terminated["reason"], terminated["exitCode"]) == (
                "Failed", "OOMKilled", 137,
            )  # fmt: skip

        names = {p["metadata"]["name"] for r in transforms for p in seen.of_flow_run("Pod", r.id)}
        alert = receiver.wait_for(
            lambda p: (
                "(OOMKilled)" in str(p.body.get("subject")) and any(n in str(p.body) for n in names)
            ),
            120,
        )
        body = alert.body["body"]
        assert "reason: OOMKilled" in body, body
        assert "diagnosis: none" not in body and "diagnosis: " in body, body
        assert "memory limit" in body and "memory_limit" in body, body
        print(f"OOMKilled alert: {alert.body['subject']}\n{body}")
