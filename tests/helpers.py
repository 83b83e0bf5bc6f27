"""Helpers the tests share (importable as ``helpers``: ``tests/`` is on pytest's pythonpath)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TLC_CSV = FIXTURES / "yellow_tripdata_sample_2019-01.csv"


def tripflow(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the ``tripflow`` console script as a user would (a real subprocess)."""
    full_env = {**os.environ, **(env or {})}
    exe = Path(sys.executable).parent / "tripflow"
    return subprocess.run(
        [str(exe), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def prefect_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the ``prefect`` CLI from the project root against the session's server; must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


async def remove_deployment_and_pool(deployment: str, pool: str) -> None:
    """Delete a test's deployment (``flow/name``) and work pool, if they exist."""
    import contextlib

    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        with contextlib.suppress(ObjectNotFound):
            found = await client.read_deployment_by_name(deployment)
            await client.delete_deployment(found.id)
        with contextlib.suppress(ObjectNotFound):
            await client.delete_work_pool(pool)


def run_sample_day(deployment: str, staging: Path, warehouse: Path, *extra: str) -> uuid.UUID:
    """``prefect deployment run`` the seed sample's day (2025-11-15); the new flow run's id."""
    done = prefect_cli(
        "deployment",
        "run",
        deployment,
        "--param",
        "run_date=2025-11-15",
        "--param",
        "source=sample",
        "--param",
        f"staging={staging}",
        "--param",
        f"warehouse=duckdb:{warehouse}",
        *extra,
    )
    found = re.search(r"UUID:\s*([0-9a-f-]{36})", done.stdout)
    assert found, done.stdout
    return uuid.UUID(found.group(1))


#: Where tests put staging and DuckDB files that per-stage "pods" (processes) share: outside the
#: folders a pod keeps to itself (``tasks.pod.SCRATCH_MOUNTS``: /tmp and /home/tripflow), which
#: ``stage_deployments`` refuses. /var/tmp is the system's other temporary folder.
SHARED_TMP = Path("/var/tmp")


def shared_folder(prefix: str) -> Path:
    """A new folder under ``SHARED_TMP`` (the caller removes it)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"tripflow-{prefix}-", dir=SHARED_TMP))
