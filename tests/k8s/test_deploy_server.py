"""`prefect deploy --all` of prefect.yaml against a real Prefect server (the session's test server).

Proves what the offline tests cannot: the server accepts the pool's base job template, every
deployment (schedules, concurrency limits, parameters, job variables validated against the pool's
schema) and the triggers (as automations). Then the Job for a flow run is rendered from what the
server stored, through the worker's own ``resolve_for_flow_run``, and validated.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from typing import Any

from helpers import prefect_cli
from k8s.k8s_support import TEMPLATE, deployments_by_name, k8s_validate


def _prefect(*args: str) -> subprocess.CompletedProcess[str]:
    return prefect_cli(*args, timeout=300)


async def _stored(names: list[str]) -> dict[str, Any]:
    from prefect import get_client

    async with get_client() as client:
        pool = await client.read_work_pool("tripflow-k8s")
        deployments = {name: await client.read_deployment_by_name(name) for name in names}
        automations = await client.read_automations()
        run = await client.create_flow_run_from_deployment(
            deployments["tripflow-transform/transform"].id,
            parameters={"run_date": "2025-11-15", "run_id": "server-test"},
            job_variables={"memory_limit": "20Gi"},
        )
        from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

        config = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
            run, client=client, work_pool=pool, worker_name="tripflow-worker"
        )
        await client.delete_flow_run(run.id)
        return {
            "pool": pool,
            "deployments": deployments,
            "automations": automations,
            "job": config.job_manifest,
        }


async def _clean_up(names: list[str]) -> None:
    """The session's server is shared: leave no deployment, automation or pool behind."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        for name in names:
            try:
                deployment = await client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            await client.delete_resource_owned_automations(f"prefect.deployment.{deployment.id}")
            await client.delete_deployment(deployment.id)
        with contextlib.suppress(ObjectNotFound):
            await client.delete_work_pool("tripflow-k8s")


NAMES = [
    "daily-trip-etl/daily-trip-etl",
    "tripflow-extract/extract",
    "tripflow-transform/transform",
    "tripflow-load/load",
    "tripflow-validate/validate",
    "backfill/backfill",
]


def test_prefect_yaml_deploys_to_a_real_server(prefect_server: str) -> None:
    try:
        _check_deploy()
    finally:
        asyncio.run(_clean_up(NAMES))


def _check_deploy() -> None:
    _prefect(
        "work-pool",
        "create",
        "tripflow-k8s",
        "--type",
        "kubernetes",
        "--base-job-template",
        str(TEMPLATE),
        "--overwrite",
    )
    _prefect("--no-prompt", "deploy", "--all")
    stored = asyncio.run(_stored(NAMES))

    daily = stored["deployments"]["daily-trip-etl/daily-trip-etl"]
    [schedule] = daily.schedules
    assert schedule.schedule.cron == "0 6 * * *" and schedule.schedule.timezone == "UTC"
    assert daily.global_concurrency_limit.limit == 1
    assert daily.work_pool_name == "tripflow-k8s"
    backfill = stored["deployments"]["backfill/backfill"]
    assert backfill.global_concurrency_limit.limit == 1
    assert backfill.concurrency_options.grace_period_seconds == 900
    transform = stored["deployments"]["tripflow-transform/transform"]
    assert transform.job_variables["node_selector"] == {"workload": "analytics"}
    assert transform.job_variables["pod_watch_timeout_seconds"] >= 600

    automations = {a.name: a for a in stored["automations"]}
    raw_landed = automations["tripflow-raw-landed"]
    assert raw_landed.trigger.expect == {"tripflow.raw.landed"}
    [action] = raw_landed.actions
    assert action.deployment_id == daily.id

    job = stored["job"]
    k8s_validate(job)
    container = job["spec"]["template"]["spec"]["containers"][0]
    shipped = deployments_by_name()["transform"]["work_pool"]["job_variables"]
    assert container["resources"]["requests"] == {
        "cpu": shipped["cpu_request"],
        "memory": shipped["memory_request"],
    }
    assert container["resources"]["limits"]["memory"] == "20Gi"  # the run's override
    assert job["spec"]["template"]["spec"]["tolerations"][0]["key"] == "analytics"
