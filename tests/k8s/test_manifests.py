"""Every deployment's Job, as the Kubernetes worker renders and submits it, checked and snapshotted.

Rendering uses prefect-kubernetes' own code (see conftest.py); validation uses the Kubernetes
OpenAPI schema in strict mode (kubernetes-validate, offline). Pod sizes are read from prefect.yaml
(their one copy) and checked against the peaks measured for each stage in its own process; the
deadlines are checked in test_deadlines.py.

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

#: The deployments placed on the spot pool (the heavy, idempotent stage).
SPOT = {"transform"}

#: Each stage's peak memory (MiB) measured in its own process on an 8M-trip day, the larger of the
#: synthetic day (bench/README.md, bench/stage_process_bench.py) and the PostgreSQL day
#: (bench/POSTGRES.md, 847 MB extract = 808 MiB). The orchestrating pods run publish (217 MiB).
MEASURED_PEAK_MIB = {
    "extract": 808,
    "transform": 854,
    "load": 671,
    "validate": 639,
    "daily-trip-etl": 217,
    "backfill-day": 217,
}
#: A limit this far above the measured peak at least: room for a larger day before an OOM kill.
LIMIT_HEADROOM = Decimal("1.5")

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


def test_every_stage_and_orchestrating_pod_has_a_measured_peak() -> None:
    assert set(MEASURED_PEAK_MIB) <= set(deployments_by_name())
    assert set(deployments_by_name()) >= SPOT


@pytest.mark.parametrize("name", sorted(MEASURED_PEAK_MIB))
def test_memory_requests_cover_the_measured_peaks_with_headroom_in_the_limits(name: str) -> None:
    """The scheduler places a pod by its request: a request below the stage's real peak
    overcommits the node, and that pod is the first evicted."""
    variables = deployments_by_name()[name]["work_pool"]["job_variables"]
    peak = Decimal(MEASURED_PEAK_MIB[name]) * 2**20
    assert quantity(variables["memory_request"]) >= peak, (name, variables["memory_request"])
    assert quantity(variables["memory_limit"]) >= peak * LIMIT_HEADROOM, (
        name,
        variables["memory_limit"],
    )


@pytest.mark.parametrize("name", sorted(deployments_by_name()))
def test_rendered_job_is_valid_sized_bounded_and_hardened(render, name: str) -> None:
    from tasks import pod as pod_module

    variables = deployments_by_name()[name]["work_pool"]["job_variables"]
    spot = name in SPOT
    config, job = _render_deployment(render, name)

    k8s_validate(job)

    assert job["kind"] == "Job" and job["metadata"]["namespace"] == "data-pipeline"
    assert job["metadata"]["generateName"] == f"{name}-snapshot-run-"
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == variables["active_deadline_seconds"] > 0
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert spec["completions"] == spec["parallelism"] == 1

    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "tripflow-pipeline"
    assert pod["automountServiceAccountToken"] is False
    capacity = job["metadata"]["labels"][pod_module.CAPACITY_LABEL]
    assert spec["template"]["metadata"]["labels"][pod_module.CAPACITY_LABEL] == capacity
    if spot:
        assert capacity == "spot"
        assert pod["nodeSelector"] == SPOT_SELECTOR
        assert pod["tolerations"] == [SPOT_TOLERATION]
        assert config.pod_watch_timeout_seconds >= 600
    else:
        assert capacity == "on-demand"
        assert pod["nodeSelector"] == {} and pod["tolerations"] == []
        assert config.pod_watch_timeout_seconds >= 60

    [container] = pod["containers"]
    assert container["image"] == "tripflow:0.1.0"
    # Prefect's own start command, as args; the image's command is never overridden.
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert "command" not in container
    resources = container["resources"]
    assert resources["requests"] == {
        "cpu": variables["cpu_request"],
        "memory": variables["memory_request"],
    }
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
    # No flow-level retries in any pod (a failed check must fail the day at once).
    assert not {n for n in env if n.startswith("PREFECT_FLOWS_DEFAULT_RETRY")}, sorted(env)
    # The pod learns its own requests, limits and capacity from its Job (the cost report's only
    # source of pod sizes).
    for var, source in pod_module.DOWNWARD_API_ENV.items():
        assert env[var] == {"name": var, "valueFrom": source}, var


@pytest.mark.parametrize("name", sorted(deployments_by_name()))
def test_deployment_env_is_the_shipped_pod_env(name: str) -> None:
    """Every deployment's env is prefect.yaml's pod_env, and it sets no default flow retries."""
    from k8s.k8s_support import load_prefect_yaml

    pod_env = load_prefect_yaml()["definitions"]["pod_env"]
    env = deployments_by_name()[name]["work_pool"]["job_variables"]["env"]
    assert env == pod_env
    assert not {n for n in env if "RETRIES" in n or "RETRY_DELAY" in n}, sorted(env)


@pytest.mark.parametrize("name", sorted(deployments_by_name()))
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
