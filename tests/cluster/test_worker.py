"""The prefect-kubernetes worker's failure path on the real control plane (ported from the kmock
stand-in of tests/ops/test_k8s_worker.py; nothing of it needed kmock: our base job template uses
no Job field newer than Kubernetes 1.20, so no kmock test is kept — the strict schema validation
against current Kubernetes versions stays in tests/k8s).

A pod OOM-killed at its memory limit (enforced by the fake kubelet, a STAND-IN: RSS polled, the
process group SIGKILLed, reported ``OOMKilled``/137 as the kubelet reports the kernel's kill):
the real Job controller fails the Job (backoffLimit 0), the worker's observer reports the run
Crashed with the diagnosis in its logs, and tripflow's automations notify a local receiver of the
pod and of the crashed run.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from cluster import alerts
from cluster.conftest import Deployed, Recorder, run_deployment_cli, wait_final
from ops.conftest import Receiver

pytestmark = pytest.mark.timeout(1800)


async def _logs(flow_run_id: uuid.UUID) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return [entry.message for entry in logs]


def test_oom_killed_pod_is_a_crashed_run_with_reason_log_and_alerts(
    deployed: Deployed, receiver: Receiver
) -> None:
    with alerts.applied(receiver.url), Recorder(deployed.admin) as seen:
        # A test-only lower limit (request = limit = 64Mi): the run's process needs more.
        flow_run_id = run_deployment_cli(
            "daily-trip-etl/daily-trip-etl",
            "--param", "run_date=2025-11-13", "--param", "stage_deployments=false",
            "--param", "rows=2000",
            "--job-variable", 'memory_request="64Mi"', "--job-variable", 'memory_limit="64Mi"',
        )  # fmt: skip
        run = wait_final(deployed, flow_run_id, 300)
        assert run.state.name == "Crashed", deployed.worker_log.read_text()[-3000:]
        [pod] = seen.of_flow_run("Pod", flow_run_id)
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (pod["status"]["phase"], terminated["reason"], terminated["exitCode"]) == (
            "Failed", "OOMKilled", 137,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            [job] = seen.of_flow_run("Job", flow_run_id)
            failed = [c for c in job["status"].get("conditions", []) if c["type"] == "Failed"]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert failed and failed[0]["reason"] == "BackoffLimitExceeded", job["status"]
        assert job["spec"]["backoffLimit"] == 0
        messages = "\n".join(asyncio.run(_logs(flow_run_id)))
        assert "killed due to out-of-memory (OOMKilled)" in messages, messages[-3000:]
        pod_alert = receiver.wait_for(lambda p: "(OOMKilled)" in str(p.body.get("subject")), 60)
        assert "memory limit" in pod_alert.body["body"]
        assert str(flow_run_id) in pod_alert.body["body"]
        crashed = receiver.wait_for(
            lambda p: (
                "Crashed" in str(p.body.get("subject")) and str(flow_run_id) in p.body["body"]
            ),
            60,
        )
        assert "run_date: 2025-11-13" in crashed.body["body"]
