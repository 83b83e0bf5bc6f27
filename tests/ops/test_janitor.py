"""The janitor flow (flows/janitor.py) against a stand-in of the Kubernetes API.

STAND-IN: ``kmock``'s ``KubernetesEmulator`` (an in-memory, HTTP-speaking imitation of the
Kubernetes API: create/list/get/delete of stored JSON objects) stands in for a cluster; the real
``kubernetes_asyncio`` client talks to it over HTTP. What it does not do: admission, validation,
garbage collection of a Job's pods, TTLs, and server-side label selectors (it ignores them; the
janitor filters by label itself, which this test relies on). The flow runs' states are real:
they live on the session's Prefect server.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import kmock
import pytest

from flows.janitor import LABEL, k8s_janitor, prefect_state_of, sweep

NAMESPACE = "data-pipeline"


def _job(name: str, flow_run_id: str | None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/part-of": "tripflow"}
    if flow_run_id:
        labels[LABEL] = flow_run_id
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "ttlSecondsAfterFinished": 3600,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "containers": [{"name": "prefect-job", "image": "tripflow:0.1.0"}],
                    "restartPolicy": "Never",
                }
            },
        },
    }


async def _flow_runs() -> dict[str, str]:
    """Real flow runs on the Prefect server, one per state the janitor tells apart."""
    from prefect import flow, get_client
    from prefect.states import Cancelled, Completed, Crashed, Failed, Running, Scheduled

    @flow(name="tripflow-janitor-test")
    def placeholder() -> None:
        pass

    runs: dict[str, str] = {}
    async with get_client() as client:
        for label, state in {
            "completed": Completed(),
            "failed": Failed(),
            "crashed": Crashed(),
            "cancelled": Cancelled(),
            "running": Running(),
            "scheduled": Scheduled(),
        }.items():
            run = await client.create_flow_run(placeholder, state=state)
            runs[label] = str(run.id)
    runs["deleted"] = str(uuid.uuid4())  # a run that no longer exists on the server
    return runs


async def _scenario(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    from kubernetes_asyncio.client import ApiClient, BatchV1Api, Configuration

    runs = await _flow_runs()
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources.load_bundled()
        url = str(server.url).rstrip("/")
        async with ApiClient(Configuration(host=url)) as api_client:
            batch = BatchV1Api(api_client)
            for label, run_id in runs.items():
                await batch.create_namespaced_job(NAMESPACE, _job(f"job-{label}", run_id))
            await batch.create_namespaced_job(NAMESPACE, _job("not-prefects", None))

            dry = await sweep(batch, NAMESPACE, prefect_state_of, dry_run=True)
            listed = await batch.list_namespaced_job(NAMESPACE)
            assert len(listed.items) == len(runs) + 1  # a dry run deletes nothing

            # The flow itself, connecting as the worker does (here: a kubeconfig).
            kubeconfig = tmp_path / "kubeconfig"
            kubeconfig.write_text(
                json.dumps(
                    {
                        "apiVersion": "v1",
                        "kind": "Config",
                        "clusters": [{"name": "standin", "cluster": {"server": url}}],
                        "users": [{"name": "standin", "user": {"token": "not-a-secret"}}],
                        "contexts": [
                            {
                                "name": "standin",
                                "context": {"cluster": "standin", "user": "standin"},
                            }
                        ],
                        "current-context": "standin",
                    }
                )
            )
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("KUBECONFIG", str(kubeconfig))
                mp.delenv("KUBERNETES_SERVICE_HOST", raising=False)
                report = await k8s_janitor(namespace=NAMESPACE)
            left = [j.metadata.name for j in (await batch.list_namespaced_job(NAMESPACE)).items]
    return dry.as_dict(), report, sorted(left)


@pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning")
def test_janitor_deletes_jobs_of_finished_runs_only(prefect_server: str, tmp_path: Path) -> None:
    dry, report, left = asyncio.run(_scenario(tmp_path))
    finished = ["job-cancelled", "job-completed", "job-crashed", "job-deleted", "job-failed"]
    assert sorted(dry["deleted"]) == finished
    assert sorted(report["deleted"]) == finished
    assert sorted(report["kept"]) == ["job-running", "job-scheduled"]
    assert "no longer exists" in report["reasons"]["job-deleted"]
    assert "COMPLETED" in report["reasons"]["job-completed"]
    # Unfinished runs keep their Jobs; a Job without Prefect's label is never touched.
    assert left == ["job-running", "job-scheduled", "not-prefects"]
