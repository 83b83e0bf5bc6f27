"""Rendering Kubernetes Jobs offline, with prefect-kubernetes' own code.

``render`` does what the worker does for a flow run (``KubernetesWorkerJobConfiguration``:
``from_template_and_values`` then ``prepare_for_flow_run``) with a stub in place of the Prefect
client (which it only needs for block or variable references, and our templates have none), and
under a fixed "worker environment": the worker's Prefect settings leak into every Job's env, so
the tests pin what they are. No Prefect server, cluster or Docker engine is involved.
"""

from __future__ import annotations

import asyncio
import copy
import os
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any, ClassVar, NamedTuple

import pytest
from k8s.k8s_support import StubPrefectClient, load_template, worker_environment


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The process environment and Prefect settings of a worker pod, for this test only."""
    from prefect.context import SettingsContext
    from prefect.settings import Settings
    from prefect.settings.profiles import Profile

    for name in list(os.environ):
        if name.startswith(("PREFECT_", "TRIPFLOW_")):
            monkeypatch.delenv(name)
    env = worker_environment()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with SettingsContext(profile=Profile(name="tripflow-worker", settings={}), settings=Settings()):
        yield env


class Rendered(NamedTuple):
    config: Any  # KubernetesWorkerJobConfiguration after prepare_for_flow_run
    job: dict[str, Any]  # the Job the worker POSTs to the Kubernetes API


Render = Callable[..., Rendered]


class _RecordingBatchApi:
    """Records ``create_namespaced_job`` instead of calling a cluster (a stand-in, named so)."""

    posted: ClassVar[list[tuple[str, dict[str, Any]]]] = []

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    async def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> Any:
        self.posted.append((namespace, copy.deepcopy(body)))
        return SimpleNamespace(metadata=SimpleNamespace(name="recorded", namespace=namespace))


@pytest.fixture
def render(worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Render:
    """Render the Job for one flow run of a deployment, as the Kubernetes worker would.

    The configuration comes from ``from_template_and_values`` + ``prepare_for_flow_run``; the Job
    is what the worker's own ``_create_job`` hands the Kubernetes client (after swapping secrets
    for Secret references as its settings say), recorded by a stand-in for ``BatchV1Api``.
    """
    import prefect_kubernetes.worker as k8s_worker
    from prefect.client.schemas.objects import Flow, FlowRun

    monkeypatch.setattr(k8s_worker, "BatchV1Api", _RecordingBatchApi)

    def _render(
        job_variables: dict[str, Any],
        *,
        flow_name: str,
        run_name: str,
        template: dict[str, Any] | None = None,
    ) -> Rendered:
        config = asyncio.run(
            k8s_worker.KubernetesWorkerJobConfiguration.from_template_and_values(
                template or load_template(), job_variables, client=StubPrefectClient()
            )
        )
        # Fixed ids, so a rendered manifest is the same on every machine (snapshots).
        flow = Flow(id=uuid.uuid5(uuid.NAMESPACE_URL, f"flow/{flow_name}"), name=flow_name)
        flow_run = FlowRun(
            id=uuid.uuid5(uuid.NAMESPACE_URL, f"flow-run/{run_name}"),
            name=run_name,
            flow_id=flow.id,
        )
        config.prepare_for_flow_run(flow_run=flow_run, flow=flow, worker_name="tripflow-worker")
        worker = k8s_worker.KubernetesWorker(work_pool_name="tripflow-k8s", name="tripflow-worker")
        _RecordingBatchApi.posted.clear()
        asyncio.run(worker._create_job(config, client=None))
        [(namespace, job)] = _RecordingBatchApi.posted
        assert namespace == config.namespace
        return Rendered(config, job)

    return _render
