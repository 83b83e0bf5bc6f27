"""The base job template: reproducible from the pinned version, every variable used, valid."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
from k8s.k8s_support import (
    K8S_VERSIONS,
    MANIFEST_VARIABLES,
    ROOT,
    TEMPLATE,
    k8s_validate,
    load_template,
)

PLACEHOLDER = re.compile(r"\{\{\s*([\w.]+)\s*\}\}")


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_template", ROOT / "work_pools" / "build_template.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _placeholders(node: Any) -> set[str]:
    if isinstance(node, str):
        return set(PLACEHOLDER.findall(node))
    if isinstance(node, dict):
        return set().union(*(_placeholders(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_placeholders(v) for v in node)) if node else set()
    return set()


def test_committed_template_is_the_generators_output() -> None:
    """work_pools/kubernetes.json == build_template.py's output (refresh: run the script)."""
    assert TEMPLATE.read_text(encoding="utf-8") == _builder().render(), (
        "work_pools/kubernetes.json is stale: uv run python work_pools/build_template.py"
    )


def test_generator_starts_from_the_clis_default_template() -> None:
    """The generator's starting point is exactly what the documented CLI command prints."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "work-pool",
            "get-default-base-job-template",
            "--type",
            "kubernetes",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert json.loads(out) == _builder().default_template()


def test_every_variable_is_referenced_in_the_job_manifest() -> None:
    """An unreferenced variable would be accepted by the pool and silently ignored."""
    template = load_template()
    config = template["job_configuration"]
    used = _placeholders(config["job_manifest"])
    # Not in the manifest by design: settings of the worker itself (how it connects and watches),
    # and `env`, which the worker writes into the container's env (checked in test_manifests.py).
    worker_side = {
        "cluster_config",
        "job_watch_timeout_seconds",
        "pod_watch_timeout_seconds",
        "stream_output",
        "env",
    }
    for name in worker_side:
        assert _placeholders(config[name]) == {name}, f"{name} is not referenced at all"
    declared = set(template["variables"]["properties"])
    assert declared - worker_side - used == set(), "declared but not used in job_manifest"
    assert used <= declared | {"name", "command"}, "used but not declared"
    for name in sorted(MANIFEST_VARIABLES):
        assert name in used, name
    assert "pod_watch_timeout_seconds" in _placeholders(config["pod_watch_timeout_seconds"])
    assert template["variables"]["properties"]["backoff_limit"]["default"] == 0


def test_prefects_default_template_fails_strict_validation_and_ours_passes(render) -> None:
    """The default puts completions/parallelism in the pod spec; ours in the Job spec."""
    default = _builder().default_template()
    job = render({"image": "x:1"}, flow_name="f", run_name="r", template=default).job
    assert job["spec"]["template"]["spec"]["completions"] == 1
    with pytest.raises(kubernetes_validate.ValidationError, match=r"completions|parallelism"):
        kubernetes_validate.validate(job, K8S_VERSIONS[-1], strict=True)

    ours = render({}, flow_name="f", run_name="r").job
    k8s_validate(ours)
    assert ours["spec"]["completions"] == ours["spec"]["parallelism"] == 1
    assert "completions" not in ours["spec"]["template"]["spec"]


def test_template_defaults_alone_render_a_hardened_bounded_job(render) -> None:
    """With no job variables at all, the Job is still limited, deadlined, cleaned up, hardened."""
    job = render({}, flow_name="daily-trip-etl", run_name="defaults").job
    k8s_validate(job)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert job["metadata"]["namespace"] == "data-pipeline"
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 7200
    assert spec["ttlSecondsAfterFinished"] == 3600
    assert pod["serviceAccountName"] == "tripflow-pipeline"
    assert pod["automountServiceAccountToken"] is False
    assert container["image"] == "tripflow:0.1.0"
    assert container["resources"] == {
        "requests": {"cpu": "200m", "memory": "256Mi"},
        "limits": {"cpu": "1", "memory": "1Gi"},
    }
    assert pod["nodeSelector"] == {} and pod["tolerations"] == []


def test_pod_learns_its_own_size_and_capacity_from_the_downward_api(render) -> None:
    """The cost report's only source of pod sizes: the container's own requests and limits and
    the pod's capacity label, as env vars from the downward API (tasks/pod.py names them)."""
    from tasks.pod import CAPACITY_LABEL, DOWNWARD_API_ENV

    job = render({"labels": {CAPACITY_LABEL: "spot"}}, flow_name="f", run_name="r").job
    k8s_validate(job)
    [container] = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    for name, source in DOWNWARD_API_ENV.items():
        assert env[name] == {"name": name, "valueFrom": source}
    fields = {
        s["resourceFieldRef"]["resource"]
        for s in DOWNWARD_API_ENV.values()
        if "resourceFieldRef" in s
    }
    assert fields == {"requests.cpu", "limits.cpu", "requests.memory", "limits.memory"}
    assert job["spec"]["template"]["metadata"]["labels"][CAPACITY_LABEL] == "spot"
