"""The deployed Jobs and the worker's identity against the REAL apiserver (Kubernetes 1.20).

- Every deployment's Job, rendered from what the Prefect server holds (the pool's base job template
  + the deployment's job variables) as the worker renders it, is accepted by a server-side dry
  run (``dryRun=All``: admission, defaulting and validation, nothing persisted) submitted as the
  worker's ServiceAccount, and carries the shipped ``pod_env``.
- Least privilege: the shipped Role lets that identity do what the worker does, and nothing else.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from cluster import overrides
from cluster.conftest import NAMESPACE, POOL, Deployed, _flow_name

pytestmark = pytest.mark.timeout(1800)


async def _rendered_jobs(deployed: Deployed) -> dict[str, dict[str, Any]]:
    """Each deployment's Job manifest, as the worker renders it for a flow run."""
    import prefect_kubernetes.worker as k8s_worker
    from prefect import get_client
    from prefect.client.schemas.objects import Flow, FlowRun

    jobs = {}
    async with get_client() as client:
        pool = await client.read_work_pool(POOL)
        for spec in deployed.patched["deployments"]:
            flow_name = _flow_name(spec)
            deployment = await client.read_deployment_by_name(f"{flow_name}/{spec['name']}")
            config = await k8s_worker.KubernetesWorkerJobConfiguration.from_template_and_values(
                pool.base_job_template, deployment.job_variables or {}, client=client
            )
            flow = Flow(id=deployment.flow_id, name=flow_name)
            run = FlowRun(id=uuid.uuid4(), name="dry-run", flow_id=flow.id)
            config.prepare_for_flow_run(flow_run=run, flow=flow, worker_name="dry-run")
            jobs[spec["name"]] = config.job_manifest
    return jobs


def test_every_deployment_job_is_accepted_by_a_server_side_dry_run(deployed: Deployed) -> None:
    jobs = asyncio.run(_rendered_jobs(deployed))
    assert set(jobs) == {d["name"] for d in deployed.shipped["deployments"]}
    shipped_env = overrides.expected_env(deployed.shipped["definitions"]["pod_env"])
    for name, job in jobs.items():
        response = deployed.cluster.worker.client.post(
            f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs",
            params={"dryRun": "All"},
            json=job,
        )
        assert response.status_code == 201, (name, response.text)
        accepted = response.json()
        container = accepted["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        missing = {k: v for k, v in shipped_env.items() if env.get(k) != v}
        assert not missing, (name, missing)
        spec = deployed.deployment(name)["work_pool"]["job_variables"]
        resources = container["resources"]
        assert resources["requests"]["memory"] == spec["memory_request"], name
        assert resources["limits"]["memory"] == spec["memory_limit"], name
        assert accepted["spec"]["activeDeadlineSeconds"] == spec["active_deadline_seconds"]
        assert accepted["spec"]["ttlSecondsAfterFinished"] == spec["ttl_seconds_after_finished"]
    # Nothing persisted by a dry run.
    assert deployed.admin.jobs(labelSelector="prefect.io/flow-run-name=dry-run") == []


def _allowed(deployed: Deployed, method: str, path: str, body: Any = None, **params: Any) -> int:
    return deployed.cluster.worker.status(method, path, body, **params)


def test_worker_identity_has_its_role_and_nothing_more(deployed: Deployed) -> None:
    ns = f"/api/v1/namespaces/{NAMESPACE}"
    jobs = f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs"
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"generateName": "least-privilege-", "namespace": NAMESPACE},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    # No node has this label: the pod is never started by the fake kubelet.
                    "nodeSelector": {"tripflow.io/none": "none"},
                    "containers": [{"name": "c", "image": "none", "command": ["true"]}],
                }
            },
        },
    }
    created = deployed.cluster.worker.client.post(jobs, json=job)
    assert created.status_code == 201, created.text
    name = created.json()["metadata"]["name"]
    allowed = {
        "jobs get": _allowed(deployed, "GET", f"{jobs}/{name}"),
        "jobs list": _allowed(deployed, "GET", jobs),
        "jobs watch": _allowed(deployed, "GET", jobs, watch="1", timeoutSeconds="1"),
        "pods get/list": _allowed(deployed, "GET", f"{ns}/pods"),
        "pods watch": _allowed(deployed, "GET", f"{ns}/pods", watch="1", timeoutSeconds="1"),
        "events list": _allowed(deployed, "GET", f"{ns}/events"),
        "events watch": _allowed(deployed, "GET", f"{ns}/events", watch="1", timeoutSeconds="1"),
        "jobs delete": _allowed(
            deployed, "DELETE", f"{jobs}/{name}", {"propagationPolicy": "Background"}
        ),
    }
    assert allowed == dict.fromkeys(allowed, 200), allowed
    # Authorization comes first: a pod that does not exist answers 404 where the Role allows.
    assert _allowed(deployed, "GET", f"{ns}/pods/no-such-pod") == 404
    assert _allowed(deployed, "GET", f"{ns}/pods/no-such-pod/log") == 404
    refused = {
        "secrets list": _allowed(deployed, "GET", f"{ns}/secrets"),
        "secrets get": _allowed(deployed, "GET", f"{ns}/secrets/tripflow-pii-key"),
        "secrets create": _allowed(
            deployed, "POST", f"{ns}/secrets", {"metadata": {"name": "x"}, "data": {}}
        ),
        "pods create": _allowed(
            deployed,
            "POST",
            f"{ns}/pods",
            {"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        ),
        "pods delete": _allowed(deployed, "DELETE", f"{ns}/pods/x"),
        "jobs patch": _allowed(deployed, "PATCH", f"{jobs}/x", {}),
        "jobs in default": _allowed(deployed, "GET", "/apis/batch/v1/namespaces/default/jobs"),
        "jobs create in default": _allowed(
            deployed, "POST", "/apis/batch/v1/namespaces/default/jobs", job
        ),
        "pods in kube-system": _allowed(deployed, "GET", "/api/v1/namespaces/kube-system/pods"),
        "jobs cluster-wide": _allowed(deployed, "GET", "/apis/batch/v1/jobs"),
        "pods cluster-wide": _allowed(deployed, "GET", "/api/v1/pods"),
        "nodes": _allowed(deployed, "GET", "/api/v1/nodes"),
        "namespaces": _allowed(deployed, "GET", "/api/v1/namespaces"),
        "kube-system namespace (cluster uid)": _allowed(
            deployed, "GET", "/api/v1/namespaces/kube-system"
        ),
        "roles": _allowed(
            deployed, "GET", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/roles"
        ),
    }
    assert refused == dict.fromkeys(refused, 403), refused
