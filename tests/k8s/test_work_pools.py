"""work_pools/ RBAC, ServiceAccounts and Helm values; the Dockerfile; scripts/kind-up.sh.

The RBAC test reads which Kubernetes API calls the installed prefect-kubernetes makes and checks
the Role grants each one the worker can make with our settings, and nothing more.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import prefect_kubernetes
import pytest
import yaml
from k8s.k8s_support import ROOT, WORKER_VALUES, k8s_validate, load_prefect_yaml, load_template

WORK_POOLS = ROOT / "work_pools"
NAMESPACE = "data-pipeline"

#: client method -> (resource, verb) as RBAC names them.
_CALL = re.compile(r"\.(create|delete|list|read|patch|replace)_namespaced_([a-z_]+)\(")
_VERB = {"create": "create", "delete": "delete", "list": "list", "read": "get"}
_RESOURCE = {"job": "jobs", "pod": "pods", "pod_log": "pods/log", "secret": "secrets"}


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((WORK_POOLS / name).read_text()) if d]


def _granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_manifests_are_valid_kubernetes_objects() -> None:
    for name in ("rbac.yaml", "service-accounts.yaml"):
        for doc in _docs(name):
            k8s_validate(doc)
            assert doc["metadata"]["namespace"] == NAMESPACE, (name, doc["kind"])


def test_worker_role_is_least_privilege() -> None:
    kinds = {d["kind"]: d for d in _docs("rbac.yaml")}
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding"}
    for path in WORK_POOLS.glob("*.yaml"):
        text = path.read_text()
        assert "ClusterRole" not in text, path.name
        assert '"*"' not in text and "'*'" not in text and "- *" not in text, path.name
    assert _granted(kinds["Role"]) == {
        *(("batch", "jobs", v) for v in ("create", "get", "list", "watch", "delete")),
        *(("", r, v) for r in ("pods", "pods/log", "events") for v in ("get", "list", "watch")),
    }
    binding = kinds["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": kinds["Role"]["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": kinds["ServiceAccount"]["metadata"]["name"],
            "namespace": NAMESPACE,
        }
    ]


def test_role_grants_every_call_the_installed_worker_makes() -> None:
    """Scan prefect-kubernetes' worker and observer for Kubernetes API calls; with our settings
    (observer namespaced, no Secrets created by the worker) each must be granted."""
    package = Path(prefect_kubernetes.__file__).parent
    calls = set()
    for module in ("worker.py", "observer.py"):
        for verb, kind in _CALL.findall((package / module).read_text()):
            calls.add((_RESOURCE[kind], _VERB.get(verb, verb)))
    # The observer (kopf) lists and watches the Jobs and pods it follows.
    calls |= {("jobs", "list"), ("jobs", "watch"), ("pods", "list"), ("pods", "watch")}
    secret_calls = {c for c in calls if c[0] == "secrets"}
    # Secrets are touched only when the worker creates one for the API key or the env, which our
    # values do not enable (they reference an existing Secret by name instead).
    env = {
        e["name"]: e["value"]
        for e in yaml.safe_load(WORKER_VALUES.read_text())["worker"]["extraEnvVars"]
    }
    assert "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_CREATE_SECRET_FOR_API_KEY" not in env
    assert "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_STORE_ENV_AS_SECRET" not in env
    role = next(d for d in _docs("rbac.yaml") if d["kind"] == "Role")
    granted = {(resource, verb) for _, resource, verb in _granted(role)}
    assert calls - secret_calls <= granted, (calls - secret_calls) - granted
    assert {("jobs", "create"), ("pods", "list"), ("pods/log", "get")} <= calls  # the scan works


def test_pipeline_service_accounts_carry_workload_identity() -> None:
    accounts = {d["metadata"]["name"]: d for d in _docs("service-accounts.yaml")}
    assert set(accounts) == {"tripflow-pipeline", "bigquery-writer", "redshift-writer"}
    assert accounts["bigquery-writer"]["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "bq-writer@my-project.iam.gserviceaccount.com"
    }
    assert accounts["redshift-writer"]["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789:role/RedshiftWriterRole"
    }
    for account in accounts.values():
        assert account["automountServiceAccountToken"] is False
    # The pool's default and every deployment name one of them.
    assert load_template()["variables"]["properties"]["service_account_name"]["default"] in accounts
    for deployment in load_prefect_yaml()["deployments"]:
        assert deployment["work_pool"]["job_variables"]["service_account_name"] in accounts


def test_helm_values_point_the_worker_at_the_pool_with_our_rbac() -> None:
    values = yaml.safe_load(WORKER_VALUES.read_text())
    worker = values["worker"]
    assert worker["config"]["workPool"] == "tripflow-k8s"
    assert worker["config"]["type"] == "kubernetes"
    rbac = {d["kind"]: d for d in _docs("rbac.yaml")}
    assert values["serviceAccount"] == {
        "create": False,
        "name": rbac["ServiceAccount"]["metadata"]["name"],
    }
    assert values["role"]["create"] is False and values["rolebinding"]["create"] is False
    env = {e["name"]: e["value"] for e in worker["extraEnvVars"]}
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"] == NAMESPACE
    assert load_template()["variables"]["properties"]["namespace"]["default"] == NAMESPACE
    assert worker["containerSecurityContext"]["readOnlyRootFilesystem"] is True
    assert worker["containerSecurityContext"]["allowPrivilegeEscalation"] is False
    for deployment in load_prefect_yaml()["deployments"]:
        assert deployment["work_pool"]["name"] == worker["config"]["workPool"]


def test_dockerfile_builds_a_slim_non_root_uv_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    instructions = [
        line.split(None, 1)
        for line in text.splitlines()
        if line.strip() and not line.startswith((" ", "#"))
    ]
    keywords = [i[0] for i in instructions]
    assert [i[1] for i in instructions if i[0] == "FROM"] == [
        "python:3.11-slim AS build",
        "python:3.11-slim",
    ]
    assert "uv sync --frozen --no-dev" in text
    # No ENTRYPOINT/CMD override: Prefect's args (`prefect flow-run execute`) run as given.
    assert "ENTRYPOINT" not in keywords and "CMD" not in keywords
    uid = load_template()["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "securityContext"
    ]["runAsUser"]
    assert keywords[-1] == "USER" and instructions[-1][1] == f"{uid}:{uid}"
    assert "PATH=/app/.venv/bin:$PATH" in text  # `prefect` is on PATH
    # The same uv as scripts/setup installs.
    uv_pin = re.search(r'"uv==([\d.]+)"', (ROOT / "scripts" / "setup").read_text())
    assert uv_pin and f"ghcr.io/astral-sh/uv:{uv_pin.group(1)} " in text
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[1] == "*", "the .dockerignore is an allowlist"
    assert {"!pyproject.toml", "!uv.lock", "!flows", "!tasks"} <= set(ignore)


def test_kind_up_script_parses_and_uses_the_committed_files() -> None:
    script = ROOT / "scripts" / "kind-up.sh"
    bash = shutil.which("bash")
    if bash is None:
        pytest.fail("bash is needed to syntax-check scripts/kind-up.sh")
    subprocess.run([bash, "-n", str(script)], check=True)
    text = script.read_text()
    for path in (p.rstrip(".") for p in re.findall(r"work_pools/[\w.-]+", text)):
        assert (ROOT / path).exists(), path
    for needed in (
        "kind create cluster",
        "kind load docker-image",
        "kubectl apply -f work_pools/rbac.yaml -f work_pools/service-accounts.yaml",
        "prefect/prefect-server",
        "prefect/prefect-worker",
        "prefect work-pool create tripflow-k8s --type kubernetes",
        "--base-job-template work_pools/kubernetes.json",
        "prefect --no-prompt deploy --all",
        "prefect deployment run 'daily-trip-etl/daily-trip-etl'",
        "workload=analytics",
        "analytics=true:NoSchedule",
        "tripflow-pii-key",
    ):
        assert needed in text, needed


def test_every_path_the_pod_writes_is_on_a_mounted_emptydir() -> None:
    """The root filesystem is read-only: the image's settings must point every place tripflow
    and Prefect write (staging, warehouse, PII key file, Prefect's home, HOME) into the Job's
    emptyDirs."""
    from tasks.config import load_settings

    text = (ROOT / "Dockerfile").read_text().split("\nFROM python:3.11-slim\n", 1)[1]
    env_block = re.search(r"^ENV (.*?)(?=^\S)", text, re.S | re.M)
    assert env_block
    env = dict(re.findall(r"([A-Z_]+)=(\S+)", env_block.group(1)))
    settings = load_settings(environ=env, config_file="/nonexistent/tripflow.toml")
    written = {
        "HOME": env["HOME"],
        "PREFECT_HOME": env["PREFECT_HOME"],
        "staging": settings.staging,
        "warehouse": settings.warehouse.removeprefix("duckdb:"),
        "pii_key_file": settings.pii_key_file,
    }
    pod = load_template()["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    emptydirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    container = pod["containers"][0]
    mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in emptydirs]
    for what, path in written.items():
        assert path.startswith("/"), (what, path)
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), (what, path)
