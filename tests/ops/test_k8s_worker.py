"""The real prefect-kubernetes worker against a STAND-IN of the Kubernetes API (k8s_standin.py).

The worker (``prefect worker start --type kubernetes``, prefect-kubernetes 0.8.0, its observer
included) renders our base job template (work_pools/kubernetes.json) into a Job and POSTs it to
the stand-in, which plays the pod by running the container's command as a local process (see
k8s_standin.py for everything it does not do). Proves: worker -> Job -> pod -> flow run
Completed with the day published; the Job's TTL, backoff limit and labels; and a pod OOM-killed
at its memory limit reported as a Crashed run with the reason and the pod's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers import ROOT, prefect_cli, remove_deployment_and_pool, run_sample_day
from ops.conftest import Receiver
from ops.k8s_standin import KubernetesStandIn
from ops.test_automations import _clean_up as _clean_up_automations
from ops.test_automations import _ops_cli

BLOCK = "tripflow-ops-test"
# kmock 0.8 loads its bundled API resources with a deprecated importlib call.
pytestmark = pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")

POOL = "tripflow-ops-k8s-standin"
DEPLOYMENT = "ops-k8s-standin"
NAMESPACE = "data-pipeline"


def _prefect(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return prefect_cli(*args, timeout=timeout)


async def _clean_up() -> None:
    await remove_deployment_and_pool(f"daily-trip-etl/{DEPLOYMENT}", POOL)


async def _flow_run(flow_run_id: uuid.UUID) -> Any:
    from prefect import get_client

    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


async def _logs(flow_run_id: uuid.UUID) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return [entry.message for entry in logs]


def _wait_final(flow_run_id: uuid.UUID, timeout: float, worker: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        run = asyncio.run(_flow_run(flow_run_id))
        if run.state is not None and run.state.is_final():
            return run
        assert worker.poll() is None, "the worker exited"
        assert time.monotonic() < deadline, f"run still {run.state.name if run.state else None}"
        time.sleep(0.5)


@dataclass
class Cluster:
    standin: KubernetesStandIn
    tmp_path: Path
    worker: subprocess.Popen[bytes]


@pytest.fixture
def cluster(prefect_server: str, tmp_path: Path) -> Iterator[Cluster]:
    """The stand-in, the pool (our base job template), a deployment, and a running worker."""
    with KubernetesStandIn(workdir=ROOT) as standin:
        _prefect(
            "work-pool",
            "create",
            POOL,
            "--type",
            "kubernetes",
            "--base-job-template",
            str(ROOT / "work_pools" / "kubernetes.json"),
            "--overwrite",
        )
        from prefect import flow

        remote = flow.from_source(source=str(ROOT), entrypoint="flows/daily.py:daily_trip_etl")
        remote.deploy(  # type: ignore[union-attr]
            name=DEPLOYMENT,
            work_pool_name=POOL,
            image="tripflow:0.1.0",
            build=False,
            push=False,
            job_variables={
                "namespace": NAMESPACE,
                "ttl_seconds_after_finished": 600,
                "backoff_limit": 0,
                "memory_limit": "2Gi",
                "env": {
                    # The "pod" is a local process: its home and key file live in tmp_path.
                    "PREFECT_HOME": str(tmp_path / "pod-home"),
                    "TRIPFLOW_PII_KEY_FILE": str(tmp_path / "pii.key"),
                    "PREFECT_LOGGING_LEVEL": "INFO",
                },
            },
            print_next_steps=False,
            ignore_warnings=True,
        )
        env = {
            **os.environ,
            "KUBECONFIG": str(standin.kubeconfig(tmp_path / "kubeconfig")),
            # The worker otherwise reads the kube-system namespace's uid.
            "PREFECT_INTEGRATIONS_KUBERNETES_CLUSTER_UID": "tripflow-standin",
            "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": NAMESPACE,
            # Poll for scheduled runs every 2 s (default 10 s): a shorter test.
            "PREFECT_WORKER_QUERY_SECONDS": "2",
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                POOL,
                "--type",
                "kubernetes",
                "--prefetch-seconds",
                "5",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield Cluster(standin, tmp_path, worker)
        finally:
            # The worker needs two SIGINTs to exit (observer thread + worker).
            for _ in range(2):
                if worker.poll() is None:
                    worker.send_signal(signal.SIGINT)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        worker.wait(timeout=10)
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
            log.close()
            asyncio.run(_clean_up())
            asyncio.run(_clean_up_automations(BLOCK))


def _run(tmp_path: Path, name: str, *extra: str) -> uuid.UUID:
    folder = tmp_path / name
    return run_sample_day(
        f"daily-trip-etl/{DEPLOYMENT}", folder / "staging", folder / "warehouse.duckdb", *extra
    )


def test_worker_job_pod_flow_run_completed(cluster: Cluster) -> None:
    standin, tmp_path = cluster.standin, cluster.tmp_path
    flow_run_id = _run(tmp_path, "ok")
    run = _wait_final(flow_run_id, 180, cluster.worker)
    assert run.state.name == "Completed", (tmp_path / "worker.log").read_text()[-3000:]

    job = standin.job_of(str(flow_run_id))
    assert job["metadata"]["namespace"] == NAMESPACE
    assert job["spec"]["ttlSecondsAfterFinished"] == 600  # cleaned up by Kubernetes after 10 min
    assert job["spec"]["backoffLimit"] == 0
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "tripflow:0.1.0"
    assert container["resources"]["limits"]["memory"] == "2Gi"
    assert "TRIPFLOW_PII_KEY" in standin.skipped_env  # from a Secret: not played by the stand-in
    pod = standin.pod_of(job["metadata"]["name"], ("Succeeded", "Failed"), 60)
    assert pod["phase"] == "Succeeded"
    print("peak RSS of the pod's process (MiB):", {k: v >> 20 for k, v in standin.peak_rss.items()})
    assert pod["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0

    with duckdb.connect(str(tmp_path / "ok" / "warehouse.duckdb"), read_only=True) as con:
        [(status,)] = con.execute(
            "SELECT status FROM analytics.runs WHERE run_id = ?", [str(flow_run_id)]
        ).fetchall()
    assert status == "published"


def test_oom_killed_pod_is_a_crashed_run_with_reason_and_log(
    cluster: Cluster, receiver: Receiver
) -> None:
    """Also: the observer's real pod event and the Crashed state reach people through the
    automations (flows/automations.py), applied here with a local HTTP receiver."""
    standin, tmp_path = cluster.standin, cluster.tmp_path
    applied = _ops_cli("apply", "--webhook-block", BLOCK, "--webhook-url", receiver.url)
    assert applied.returncode == 0, applied.stderr
    # 64Mi: below what the run needs (its process peaks near 90 MiB here): the OOM killer ends it.
    flow_run_id = _run(tmp_path, "oom", "--job-variable", 'memory_limit="64Mi"')
    run = _wait_final(flow_run_id, 180, cluster.worker)
    worker_log = (tmp_path / "worker.log").read_text()
    assert run.state.name == "Crashed", worker_log[-3000:]
    job = standin.job_of(str(flow_run_id))
    status = standin.pod_of(job["metadata"]["name"], ("Succeeded", "Failed"), 10)
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert (status["phase"], terminated["reason"], terminated["exitCode"]) == (
        "Failed",
        "OOMKilled",
        137,
    )
    # The observer's diagnosis, in the run's logs.
    messages = "\n".join(asyncio.run(_logs(flow_run_id)))
    assert "killed due to out-of-memory (OOMKilled)" in messages, messages[-3000:]
    # The notifications: the pod (from prefect-kubernetes' own pod event) and the crashed run.
    pod = receiver.wait_for(lambda p: "(OOMKilled)" in str(p.body.get("subject")), 60)
    assert "memory limit" in pod.body["body"] and str(flow_run_id) in pod.body["body"]
    crashed = receiver.wait_for(
        lambda p: "Crashed" in str(p.body.get("subject")) and str(flow_run_id) in p.body["body"], 60
    )
    assert "run_date: 2025-11-15" in crashed.body["body"]
