"""What tests/k8s share: paths, canary secrets, the worker environment, loaders, validation.

Importable as ``k8s.k8s_support`` (``tests/`` is on pytest's pythonpath).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "work_pools" / "kubernetes.json"
PREFECT_YAML = ROOT / "prefect.yaml"
SNAPSHOTS = Path(__file__).with_name("snapshots")

#: Validated against the oldest and newest Kubernetes the managed clouds offer (kubernetes-validate
#: ships schemas 1.25-1.37 and works offline).
K8S_VERSIONS = ("1.33.0", "1.37.0")

#: Canary secrets: each is set where a careless setup would leak it into a Job.
CANARY_API_KEY = "pnu_canary_api_key_7f3e9b1d"
CANARY_PII_KEY = "canary-pii-key-5c1a8e2f"
CANARY_AUTH_STRING = "admin:canary-auth-string-90ab"

WORKER_VALUES = ROOT / "work_pools" / "worker-values.yaml"

#: The job variables our template adds for the issue, each referenced in ``job_manifest``.
MANIFEST_VARIABLES = frozenset(
    {
        "image",
        "namespace",
        "service_account_name",
        "cpu_request",
        "cpu_limit",
        "memory_request",
        "memory_limit",
        "node_selector",
        "tolerations",
        "ttl_seconds_after_finished",
        "backoff_limit",
        "active_deadline_seconds",
        "labels",
    }
)


def worker_environment() -> dict[str, str]:
    """The worker pod's environment as work_pools/worker-values.yaml gives it (its API URL and
    extra env vars), plus the canaries a real worker may hold: its API key, its API auth string,
    and a PII key it has no business passing on."""
    values = yaml.safe_load(WORKER_VALUES.read_text(encoding="utf-8"))["worker"]
    env = {"PREFECT_API_URL": values["serverApiConfig"]["apiUrl"]}
    env.update({e["name"]: str(e["value"]) for e in values["extraEnvVars"]})
    env.update(
        {
            "PREFECT_API_KEY": CANARY_API_KEY,
            "PREFECT_API_AUTH_STRING": CANARY_AUTH_STRING,
            "TRIPFLOW_PII_KEY": CANARY_PII_KEY,
        }
    )
    return env


class StubPrefectClient:
    """Stands in for the PrefectClient: rendering must never need the API."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"rendering called the Prefect API ({name}); it must not")


def load_template() -> dict[str, Any]:
    return json.loads(TEMPLATE.read_text(encoding="utf-8"))


def load_prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))


def deployments_by_name() -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in load_prefect_yaml()["deployments"]}


def flow_name_of(entrypoint: str) -> str:
    """The flow's name, read from the real flow object the entrypoint points at."""
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(ROOT / entrypoint)).name


def k8s_validate(manifest: dict[str, Any]) -> None:
    """Strict validation against every Kubernetes version in ``K8S_VERSIONS``."""
    import kubernetes_validate

    for version in K8S_VERSIONS:
        kubernetes_validate.validate(manifest, version, strict=True)


def automations_of(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    """The automations ``prefect deploy`` creates from a deployment's triggers, via Prefect's own
    trigger models (ids fixed, so the result is stable)."""
    import uuid

    from prefect.cli.deploy._triggers import _initialize_deployment_triggers

    deployment_id = uuid.uuid5(uuid.NAMESPACE_URL, f"deployment/{deployment['name']}")
    out = []
    for trigger in _initialize_deployment_triggers(
        deployment["name"], [dict(t) for t in deployment.get("triggers", [])]
    ):
        trigger.set_deployment_id(deployment_id)
        out.append(trigger.as_automation().model_dump(mode="json"))
    return out
