"""Build ``work_pools/kubernetes.json``, tripflow's Kubernetes base job template.

It starts from the default template of the pinned prefect-kubernetes (the same document
``prefect work-pool get-default-base-job-template --type kubernetes`` prints) and changes it:

- fixes the default's misplaced ``completions``/``parallelism`` (it puts them in the *pod* spec,
  where the Kubernetes schema has no such fields; they belong to the Job spec);
- adds our variables, each one referenced in ``job_manifest`` (an unreferenced variable is
  silently ignored by the worker);
- hardens the pod: non-root, read-only root filesystem with emptyDirs for /tmp and the app home
  (``tasks.pod.SCRATCH_MOUNTS``, which also tells the flow what pods cannot share), no privilege
  escalation, every capability dropped, seccomp RuntimeDefault, no API token;
- reads the PII key from a Kubernetes Secret (never a job variable);
- tells the pod its own requests, limits and capacity label through the downward API
  (``tasks.pod.DOWNWARD_API_ENV``): the cost report prices each stage by the pod it ran in.

Regenerate (``tests/k8s/test_template.py`` fails when the committed file differs):

    uv run python work_pools/build_template.py            # writes work_pools/kubernetes.json
    uv run python work_pools/build_template.py --check    # exit 1 if the file is stale
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

from tasks.pod import DOWNWARD_API_ENV, SCRATCH_MOUNTS

OUT = Path(__file__).with_name("kubernetes.json")

UID = 10001

#: Variables we change or add: name -> JSON schema (with the default).
VARIABLES: dict[str, dict[str, Any]] = {
    "image": {
        "title": "Image",
        "type": "string",
        "default": "tripflow:0.1.0",
        "description": "The tripflow pipeline image (see the Dockerfile).",
    },
    "image_pull_policy": {
        "title": "Image Pull Policy",
        "type": "string",
        "enum": ["IfNotPresent", "Always", "Never"],
        "default": "IfNotPresent",
        "description": "The Kubernetes image pull policy to use for job containers.",
    },
    "namespace": {
        "title": "Namespace",
        "type": "string",
        "default": "data-pipeline",
        "description": "The namespace the pipeline's Jobs run in (the worker's Role is "
        "scoped to it).",
    },
    "service_account_name": {
        "title": "Service Account Name",
        "type": "string",
        "default": "tripflow-pipeline",
        "description": "The pipeline's ServiceAccount (workload identity: bigquery-writer on GKE, "
        "redshift-writer on EKS, see work_pools/service-accounts.yaml).",
    },
    "cpu_request": {
        "title": "CPU Request",
        "type": "string",
        "default": "200m",
        "description": "CPU request of the pipeline container (Kubernetes quantity).",
    },
    "memory_request": {
        "title": "Memory Request",
        "type": "string",
        "default": "256Mi",
        "description": "Memory request of the pipeline container (Kubernetes quantity).",
    },
    "cpu_limit": {
        "title": "CPU Limit",
        "type": "string",
        "default": "1",
        "description": "CPU limit of the pipeline container (Kubernetes quantity).",
    },
    "memory_limit": {
        "title": "Memory Limit",
        "type": "string",
        "default": "1Gi",
        "description": "Memory limit of the pipeline container. Always set: an OOM kill must be "
        "a failed pod, not a node under pressure (PrefectHQ/prefect#21022).",
    },
    "node_selector": {
        "title": "Node Selector",
        "type": "object",
        "additionalProperties": {"type": "string"},
        "default": {},
        "description": "Node labels the pod must match, e.g. {'workload': 'analytics'} for the "
        "spot pool.",
    },
    "tolerations": {
        "title": "Tolerations",
        "type": "array",
        "items": {"type": "object"},
        "default": [],
        "description": "Pod tolerations, e.g. the spot pool's analytics=true:NoSchedule taint.",
    },
    "ttl_seconds_after_finished": {
        "title": "TTL Seconds After Finished",
        "type": "integer",
        "minimum": 0,
        "default": 3600,
        "description": "Kubernetes deletes the finished Job (and its pod) after this many seconds, "
        "so no Job outlives its run for long (PrefectHQ/prefect#21863).",
    },
    "backoff_limit": {
        "title": "Backoff Limit",
        "type": "integer",
        "minimum": 0,
        "default": 0,
        "description": "Kubernetes pod retries. 0: Prefect, not Kubernetes, retries the run (and "
        "an evicted pod's run is rescheduled).",
    },
    "active_deadline_seconds": {
        "title": "Active Deadline Seconds",
        "type": "integer",
        "minimum": 1,
        "default": 7200,
        "description": "Kubernetes kills the Job after this many seconds: a hung run ends.",
    },
    "labels": {
        "title": "Labels",
        "type": "object",
        "additionalProperties": {"type": "string"},
        "default": {"app.kubernetes.io/part-of": "tripflow"},
        "description": "Labels on the Job and its pod (Prefect adds its own flow-run labels).",
    },
    "pod_watch_timeout_seconds": {
        "title": "Pod Watch Timeout Seconds",
        "type": "integer",
        "minimum": 1,
        "default": 300,
        "description": "Seconds the worker waits for the pod to start. Use >= 600 on scaled-to-"
        "zero spot pools, where a node must be created first (PrefectHQ/prefect#12071).",
    },
    "pii_key_secret_name": {
        "title": "PII Key Secret Name",
        "type": "string",
        "default": "tripflow-pii-key",
        "description": "The Secret (key 'key') the PII hashing key is read from as "
        "TRIPFLOW_PII_KEY. The key itself never travels as a job variable.",
    },
    "scratch_size_limit": {
        "title": "Scratch Size Limit",
        "type": "string",
        "default": "2Gi",
        "description": "sizeLimit of the emptyDirs mounted at /tmp and the app home.",
    },
}

#: Default variables that no longer apply: ``finished_job_ttl`` is ``ttl_seconds_after_finished``.
REMOVED = ("finished_job_ttl",)


def default_template() -> dict[str, Any]:
    """Prefect's default Kubernetes base job template, from the installed (pinned) package."""
    from prefect_kubernetes.worker import KubernetesWorker

    return copy.deepcopy(KubernetesWorker.get_default_base_job_template())


def job_manifest() -> dict[str, Any]:
    volume_mounts = [{"name": name, "mountPath": path} for name, path in SCRATCH_MOUNTS.items()]
    container = {
        "name": "prefect-job",
        "image": "{{ image }}",
        "imagePullPolicy": "{{ image_pull_policy }}",
        # Prefect fills `args` with `prefect flow-run execute`; `command` is never overridden
        # (the image has no ENTRYPOINT), so cancellation signals reach the flow run.
        "args": "{{ command }}",
        # A list, so the worker prepends the rendered `{{ env }}` and keeps these entries.
        "env": [
            {
                "name": "TRIPFLOW_PII_KEY",
                "valueFrom": {"secretKeyRef": {"name": "{{ pii_key_secret_name }}", "key": "key"}},
            },
            *({"name": name, "valueFrom": source} for name, source in DOWNWARD_API_ENV.items()),
        ],
        "resources": {
            "requests": {"cpu": "{{ cpu_request }}", "memory": "{{ memory_request }}"},
            "limits": {"cpu": "{{ cpu_limit }}", "memory": "{{ memory_limit }}"},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": volume_mounts,
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "annotations": "{{ annotations }}",
            "generateName": "{{ name }}-",
            "labels": "{{ labels }}",
            "namespace": "{{ namespace }}",
        },
        "spec": {
            # In the Job spec, where Kubernetes reads them (the default puts them in the pod spec).
            "completions": 1,
            "parallelism": 1,
            "backoffLimit": "{{ backoff_limit }}",
            "activeDeadlineSeconds": "{{ active_deadline_seconds }}",
            "ttlSecondsAfterFinished": "{{ ttl_seconds_after_finished }}",
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": "{{ service_account_name }}",
                    # Workload identity needs no mounted API token (GKE uses the metadata
                    # server; EKS IRSA projects its own token); the pipeline never calls the API.
                    "automountServiceAccountToken": False,
                    "nodeSelector": "{{ node_selector }}",
                    "tolerations": "{{ tolerations }}",
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": UID,
                        "runAsGroup": UID,
                        "fsGroup": UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": name, "emptyDir": {"sizeLimit": "{{ scratch_size_limit }}"}}
                        for name in SCRATCH_MOUNTS
                    ],
                }
            },
        },
    }


def build() -> dict[str, Any]:
    template = default_template()
    config = template["job_configuration"]
    default_pod = config["job_manifest"]["spec"]["template"]["spec"]
    # The fix this file exists for; fail loudly if a new prefect-kubernetes changes the default.
    assert default_pod.get("completions") == 1 and default_pod.get("parallelism") == 1, (
        "the default template no longer puts completions/parallelism in the pod spec: review "
        "build_template.py against the new default"
    )
    config["job_manifest"] = job_manifest()
    properties = template["variables"]["properties"]
    for name in REMOVED:
        properties.pop(name, None)
    for name, schema in VARIABLES.items():
        properties[name] = schema
    return template


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run `uv run python work_pools/build_template.py`")
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
