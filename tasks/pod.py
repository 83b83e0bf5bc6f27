"""What a pipeline pod knows about itself, and what its pods cannot share.

One source of truth for two facts of the Kubernetes base job template
(``work_pools/build_template.py`` imports them to build ``work_pools/kubernetes.json``):

- ``SCRATCH_MOUNTS``: the pod's own emptyDir volumes. A path inside one of them exists in that pod
  only, so per-stage pods cannot hand each other staging or a DuckDB file there.
- ``DOWNWARD_API_ENV``: the environment variables through which a pod learns its own requests and
  limits from its Job (the downward API's ``resourceFieldRef``) and whether it was placed on the
  spot pool (its ``tripflow.io/capacity`` label). The cost report reads them (``tasks.cost``);
  outside a pod they are unset and the report says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any, Final

from tasks.errors import UsageError
from tasks.storage import is_remote

#: Where the image keeps its writable home (see the Dockerfile).
APP_HOME: Final = "/home/tripflow"
#: The pod's emptyDir volumes: volume name -> mount path (the root filesystem is read-only).
SCRATCH_MOUNTS: Final[dict[str, str]] = {"tmp": "/tmp", "home": APP_HOME}

#: The label whose value says which capacity the pod was placed on (``spot`` or ``on-demand``).
CAPACITY_LABEL: Final = "tripflow.io/capacity"

CPU_REQUEST_ENV: Final = "TRIPFLOW_POD_CPU_REQUEST_MILLICORES"
CPU_LIMIT_ENV: Final = "TRIPFLOW_POD_CPU_LIMIT_MILLICORES"
MEMORY_REQUEST_ENV: Final = "TRIPFLOW_POD_MEMORY_REQUEST_MIB"
MEMORY_LIMIT_ENV: Final = "TRIPFLOW_POD_MEMORY_LIMIT_MIB"
CAPACITY_ENV: Final = "TRIPFLOW_POD_CAPACITY"

#: env name -> the downward API source the base job template gives it (the container's own
#: requests and limits, in millicores and MiB, rounded up; the pod's capacity label).
DOWNWARD_API_ENV: Final[dict[str, dict[str, Any]]] = {
    CPU_REQUEST_ENV: {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}},
    CPU_LIMIT_ENV: {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}},
    MEMORY_REQUEST_ENV: {"resourceFieldRef": {"resource": "requests.memory", "divisor": "1Mi"}},
    MEMORY_LIMIT_ENV: {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
    CAPACITY_ENV: {"fieldRef": {"fieldPath": f"metadata.labels['{CAPACITY_LABEL}']"}},
}


@dataclass(frozen=True)
class PodResources:
    """The pod's own requests and limits, as its Job gave them."""

    cpu_request: float  # cores
    cpu_limit: float
    memory_request_gib: float
    memory_limit_gib: float
    spot: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def current_pod(environ: Mapping[str, str] | None = None) -> PodResources | None:
    """This process's pod, from the downward API env; None when not running in a pod."""
    env = os.environ if environ is None else environ
    names = (CPU_REQUEST_ENV, CPU_LIMIT_ENV, MEMORY_REQUEST_ENV, MEMORY_LIMIT_ENV)
    if not all(env.get(name) for name in names):
        return None
    try:
        cpu_req, cpu_lim, mem_req, mem_lim = (float(env[name]) for name in names)
    except ValueError:
        return None
    return PodResources(
        cpu_request=cpu_req / 1000,
        cpu_limit=cpu_lim / 1000,
        memory_request_gib=mem_req / 1024,
        memory_limit_gib=mem_lim / 1024,
        spot=env.get(CAPACITY_ENV, "") == "spot",
    )


def _pod_local(path: str) -> str | None:
    """Why separate pods cannot share ``path`` (None: they can, given a shared volume there)."""
    p = PurePosixPath(path)
    if not p.is_absolute():
        return "a relative path (each pod resolves it in its own working folder)"
    for mount in SCRATCH_MOUNTS.values():
        if p == PurePosixPath(mount) or PurePosixPath(mount) in p.parents:
            return f"inside {mount}, an emptyDir of each pod's own"
    return None


def require_shared(staging: str, warehouse: str, duckdb_path: str | None) -> None:
    """Refuse what per-stage pods could not share: a local staging folder or a DuckDB file that is
    relative or inside the pod's own emptyDirs. An absolute path elsewhere (a ReadWriteMany volume
    every pod mounts) is allowed, as are object storage and networked warehouses."""
    if not is_remote(staging):
        reason = _pod_local(staging)
        if reason:
            raise UsageError(
                f"setting 'staging' ({staging}) is {reason}: with stage_deployments every stage "
                "runs in its own pod; use s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or a folder on "
                "a volume every pod mounts"
            )
    if duckdb_path is not None:
        reason = _pod_local(duckdb_path)
        if reason:
            raise UsageError(
                f"setting 'warehouse' ({warehouse}): its DuckDB file {duckdb_path} is {reason}: "
                "with stage_deployments every stage runs in its own pod; use a warehouse block "
                "(BigQuery, Redshift, Snowflake) or a DuckDB file on a volume every pod mounts"
            )
