"""Every change the live tests make to the SHIPPED configuration, in this one place.

The shipped files (prefect.yaml, work_pools/kubernetes.json, rbac.yaml, service-accounts.yaml,
worker-values.yaml) are used unchanged, except for what a laptop needs, all listed here:

1. ``pull``: the working directory is this checkout (the image's ``/app`` does not exist here).
2. Staging: the shipped ``TRIPFLOW_STAGING`` (``s3://tripflow-staging/trips``) is kept; the S3
   endpoint of the local moto server and its dummy credentials are ADDED to each deployment's env
   (a cluster gets them from its workload identity). No shipped entry is replaced.
3. The warehouse: the shipped ``TRIPFLOW_WAREHOUSE: block:tripflow`` is kept; the test saves a
   ``TripWarehouse`` block named ``tripflow`` (target duckdb, a file in the test's folder) — a
   STAND-IN for a shared warehouse, reachable by every pod because every fake-kubelet pod is a
   process on this host.
4. Time: every time value (TTLs, deadlines, pod-watch timeouts, retry delays, concurrency grace
   periods) multiplied by ``TIME_SCALE``.
5. The worker: its poll interval (Prefect's default 10 s, scaled) and its ``PREFECT_HOME``
   (worker-values.yaml's ``/home/prefect/.prefect``), a folder in the test's folder. The pods'
   ``PREFECT_HOME`` needs no override: it lies under the ``home`` emptyDir mount, which the fake
   kubelet maps to a folder.

The image is NOT overridden: the fake kubelet ignores it (this checkout and its venv run instead).
Tests may add job variables to single runs (``--job-variable``) for a fault they provoke; each
says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Final

#: One factor for every time value of the shipped files (1 h -> 144 s, 5 min -> 12 s).
TIME_SCALE: Final = 0.04

#: prefect.yaml job variables that are durations in seconds.
TIME_JOB_VARIABLES: Final = (
    "ttl_seconds_after_finished",
    "active_deadline_seconds",
    "pod_watch_timeout_seconds",
    "job_watch_timeout_seconds",
)
#: pod env entries that are durations in seconds.
TIME_ENV: Final = ("PREFECT_FLOWS_DEFAULT_RETRY_DELAY_SECONDS",)

#: The bucket of the shipped TRIPFLOW_STAGING.
STAGING_BUCKET: Final = "tripflow-staging"
#: The shipped TRIPFLOW_WAREHOUSE names this block.
WAREHOUSE_BLOCK: Final = "tripflow"


def scaled(seconds: float, minimum: int = 1) -> int:
    """A shipped duration in seconds, scaled (at least ``minimum``)."""
    return max(minimum, math.ceil(seconds * TIME_SCALE))


def staging_env(endpoint: str, keys: dict[str, str]) -> dict[str, str]:
    """What the pods need to reach the local S3 server (ADDED to the shipped env)."""
    return {
        "TRIPFLOW_STAGING_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        **keys,
    }


def worker_env(shipped_values: dict[str, Any], prefect_home: Path) -> dict[str, str]:
    """worker-values.yaml's env for the worker, with PREFECT_HOME overridden."""
    env = {e["name"]: str(e["value"]) for e in shipped_values["worker"]["extraEnvVars"]}
    env["PREFECT_HOME"] = str(prefect_home)
    # Not in the shipped files: Prefect's default poll for due runs (10 s), scaled like the rest.
    env["PREFECT_WORKER_QUERY_SECONDS"] = str(scaled(10))
    env["PREFECT_INTEGRATIONS_KUBERNETES_CLUSTER_UID"] = shipped_values["worker"]["clusterUid"]
    return env


def patch_prefect_yaml(
    shipped: dict[str, Any], checkout: Path, added_env: dict[str, str]
) -> dict[str, Any]:
    """The shipped prefect.yaml (as loaded) with only the overrides above applied."""
    patched: dict[str, Any] = json.loads(json.dumps(shipped))  # unshare YAML aliases
    for step in patched["pull"]:
        if "prefect.deployments.steps.set_working_directory" in step:
            step["prefect.deployments.steps.set_working_directory"]["directory"] = str(checkout)
    for deployment in patched["deployments"]:
        variables = deployment["work_pool"]["job_variables"]
        for key in TIME_JOB_VARIABLES:
            if variables.get(key) is not None:
                variables[key] = scaled(variables[key])
        env = variables["env"]
        for key in TIME_ENV:
            if key in env:
                env[key] = str(scaled(float(env[key])))
        for key, value in added_env.items():
            assert key not in env, f"override {key} would replace a shipped env entry"
            env[key] = value
        limit = deployment.get("concurrency_limit")
        if isinstance(limit, dict) and limit.get("grace_period_seconds"):
            # Prefect refuses a grace period under 60 s: scaled, but not below that.
            limit["grace_period_seconds"] = scaled(limit["grace_period_seconds"], minimum=60)
    return patched


def expected_env(shipped_env: dict[str, str]) -> dict[str, str]:
    """The shipped pod_env as it must appear in every Job (time entries scaled)."""
    return {
        key: str(scaled(float(value))) if key in TIME_ENV else str(value)
        for key, value in shipped_env.items()
    }
