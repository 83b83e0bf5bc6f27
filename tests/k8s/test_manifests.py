"""Every deployment's Job, as the Kubernetes worker renders and submits it, checked and snapshotted.

Rendering uses prefect-kubernetes' own code (see conftest.py); validation uses the Kubernetes
OpenAPI schema in strict mode (kubernetes-validate, offline). The expected sizes below are the
issue's (the seed's per-stage sizes), written here independently of prefect.yaml on purpose.

Refresh the snapshot after an intended change, then review the diff:

    TRIPFLOW_UPDATE_SNAPSHOTS=1 uv run pytest tests/k8s/test_manifests.py -q
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from typing import Any

import pytest
from k8s.k8s_support import (
    CANARY_API_KEY,
    CANARY_AUTH_STRING,
    CANARY_PII_KEY,
    ROOT,
    SNAPSHOTS,
    automations_of,
    deployments_by_name,
    flow_name_of,
    k8s_validate,
)

UPDATE_SNAPSHOTS = os.environ.get("TRIPFLOW_UPDATE_SNAPSHOTS") == "1"
SNAPSHOT = SNAPSHOTS / "deployments.json"

SPOT_SELECTOR = {"workload": "analytics"}
SPOT_TOLERATION = {"key": "analytics", "operator": "Equal", "value": "true", "effect": "NoSchedule"}

#: deployment -> (cpu request, memory request, on the spot pool, activeDeadlineSeconds)
EXPECTED: dict[str, tuple[str, str, bool, int]] = {
    # Orchestrates the stage deployments' pods and publishes: small, but alive the longest.
    "daily-trip-etl": ("250m", "512Mi", False, 14400),
    "extract": ("500m", "1Gi", False, 3600),
    "transform": ("2", "8Gi", True, 7200),
    "load": ("500m", "512Mi", False, 3600),
    "validate": ("200m", "256Mi", False, 1800),
    # Both only wait on other runs' pods (the days', the stages'): small, on-demand.
    "backfill": ("250m", "512Mi", False, 86400),
    "backfill-day": ("250m", "512Mi", False, 14400),
    "region-30d": ("250m", "512Mi", False, 1800),
}

_SUFFIX = {"m": Decimal("0.001"), "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value: str) -> Decimal:
    """A Kubernetes quantity (the forms we use: 500m, 2, 512Mi, 8Gi) as a number."""
    for suffix, factor in _SUFFIX.items():
        if value.endswith(suffix):
            return Decimal(value[: -len(suffix)]) * Decimal(factor)
    return Decimal(value)


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"duplicate env entries: {names}"
    return {e["name"]: e for e in container["env"]}


def _render_deployment(render, name: str):
    deployment = deployments_by_name()[name]
    return render(
        deployment["work_pool"]["job_variables"],
        flow_name=flow_name_of(deployment["entrypoint"]),
        run_name=f"{name}-snapshot-run",
    )


def test_every_deployment_is_covered() -> None:
    assert set(deployments_by_name()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rendered_job_is_valid_sized_bounded_and_hardened(render, name: str) -> None:
    cpu, memory, spot, deadline = EXPECTED[name]
    config, job = _render_deployment(render, name)

    k8s_validate(job)

    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "data-pipeline"
    assert job["metadata"]["generateName"] == f"{name}-snapshot-run-"
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == deadline
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert spec["completions"] == spec["parallelism"] == 1

    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "tripflow-pipeline"
    assert pod["automountServiceAccountToken"] is False
    if spot:
        assert pod["nodeSelector"] == SPOT_SELECTOR
        assert pod["tolerations"] == [SPOT_TOLERATION]
        assert config.pod_watch_timeout_seconds >= 600
    else:
        assert pod["nodeSelector"] == {} and pod["tolerations"] == []
        assert config.pod_watch_timeout_seconds >= 60

    [container] = pod["containers"]
    assert container["image"] == "tripflow:0.1.0"
    # Prefect's own start command, as args; the image's command is never overridden.
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert "command" not in container
    resources = container["resources"]
    assert resources["requests"] == {"cpu": cpu, "memory": memory}
    for kind in ("cpu", "memory"):
        assert quantity(resources["limits"][kind]) >= quantity(resources["requests"][kind]), kind

    # The hardened pod.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/tmp", "/home/tripflow"):
        assert "emptyDir" in volumes[mounts[path]], path

    # The flow-run label the observer, the worker and a janitor find the Job and pod by.
    run_id = str(config.job_manifest["metadata"]["labels"]["prefect.io/flow-run-id"])
    assert job["metadata"]["labels"]["prefect.io/flow-run-id"] == run_id
    assert spec["template"]["metadata"]["labels"]["prefect.io/flow-run-id"] == run_id
    assert job["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tripflow"

    env = _env(container)
    assert env["PREFECT_API_URL"]["value"].startswith("http://prefect-server.prefect.svc")
    # The deployment's env wins over the worker's own PREFECT_HOME, which leaks in otherwise.
    assert env["PREFECT_HOME"]["value"] == "/home/tripflow/.prefect"
    assert env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"]["value"] == "reschedule"
    assert env["PREFECT_FLOWS_DEFAULT_RETRIES"]["value"] == "1"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_no_secret_value_in_any_job(render, name: str) -> None:
    """The worker holds an API key, an auth string and the PII key; no Job carries any of them."""
    _, job = _render_deployment(render, name)
    text = json.dumps(job)
    for canary in (CANARY_API_KEY, CANARY_AUTH_STRING, CANARY_PII_KEY):
        assert canary not in text
    env = _env(job["spec"]["template"]["spec"]["containers"][0])
    refs = {
        "PREFECT_API_KEY": ("prefect-api-key", "key"),
        "PREFECT_API_AUTH_STRING": ("prefect-api-auth-string", "auth-string"),
        "TRIPFLOW_PII_KEY": ("tripflow-pii-key", "key"),
    }
    for var, (secret, key) in refs.items():
        assert "value" not in env[var], var
        assert env[var]["valueFrom"] == {"secretKeyRef": {"name": secret, "key": key}}, var
    for var, entry in env.items():
        if any(word in var for word in ("KEY", "SECRET", "PASSWORD", "TOKEN", "AUTH")):
            assert "valueFrom" in entry, f"{var} is set in plain text"


def test_without_the_workers_secret_settings_the_api_key_would_leak(render, monkeypatch) -> None:
    """Why worker-values.yaml sets the *_SECRET_NAME settings: the worker copies its own Prefect
    settings, the API key included, into every Job's env unless told to reference a Secret."""
    monkeypatch.delenv("PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_KEY_SECRET_NAME")
    monkeypatch.delenv("PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_KEY_SECRET_KEY")
    _, job = _render_deployment(render, "extract")
    assert CANARY_API_KEY in json.dumps(job)


def test_job_variables_override_per_run(render) -> None:
    """A flow run's job variables (e.g. `--job-variable memory_limit=4Gi`) reach the Job."""
    deployment = deployments_by_name()["transform"]
    variables = {**deployment["work_pool"]["job_variables"], "memory_limit": "24Gi"}
    _, job = render(variables, flow_name="tripflow-transform", run_name="override")
    k8s_validate(job)
    limits = job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["memory"] == "24Gi"


def _snapshot(render) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, deployment in sorted(deployments_by_name().items()):
        config, job = _render_deployment(render, name)
        out[name] = {
            "entrypoint": deployment["entrypoint"],
            "flow": flow_name_of(deployment["entrypoint"]),
            "tags": deployment.get("tags", []),
            "schedules": deployment.get("schedules", []),
            "parameters": deployment.get("parameters", {}),
            "concurrency_limit": deployment.get("concurrency_limit"),
            "automations": automations_of(deployment),
            "worker": {
                "pod_watch_timeout_seconds": config.pod_watch_timeout_seconds,
                "job_watch_timeout_seconds": config.job_watch_timeout_seconds,
            },
            "job": job,
        }
    # The trigger other projects attach to their deployment (deployments/README.md).
    from prefect.cli.deploy._triggers import _gather_deployment_trigger_definitions

    path = ROOT / "deployments" / "downstream-refresh.trigger.yaml"
    specs = _gather_deployment_trigger_definitions([str(path)], [])
    out["(trigger file) deployments/downstream-refresh.trigger.yaml"] = {
        "automations": automations_of({"name": "downstream-refresh", "triggers": specs})
    }
    return out


def test_rendered_deployments_match_the_snapshot(render) -> None:
    """Any change to a deployment, its triggers, the template or Prefect shows up in review."""
    current = json.dumps(_snapshot(render), indent=2, sort_keys=True) + "\n"
    if UPDATE_SNAPSHOTS:
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(current, encoding="utf-8")
    assert SNAPSHOT.exists(), "no snapshot: TRIPFLOW_UPDATE_SNAPSHOTS=1 uv run pytest tests/k8s"
    assert json.loads(SNAPSHOT.read_text(encoding="utf-8")) == json.loads(current), (
        "rendered deployments changed: review, then TRIPFLOW_UPDATE_SNAPSHOTS=1 "
        "uv run pytest tests/k8s/test_manifests.py"
    )
