"""The orchestration path for real: process work pool -> deployment -> worker -> flow run.

On a real Prefect server (the session's): ``prefect work-pool create --type process``, the
``daily-trip-etl`` flow deployed from this repository as a local source, ``prefect deployment run
… --param run_date=2025-11-15 --param source=sample``, ``prefect worker start --run-once``, and the
day published in the DuckDB warehouse. On the way, the load stage fails once (its warehouse folder
is blocked by a plain file, an ``InfrastructureError``); the test frees it as soon as the server
shows the task waiting for its retry, and the retry succeeds.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers import ROOT, prefect_cli, remove_deployment_and_pool, run_sample_day

POOL = "tripflow-ops-process"
DEPLOYMENT = "ops-process"
#: Seconds before a failed stage is retried, in the flow's process (job variable env).
RETRY_DELAY = 8


def _prefect(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return prefect_cli(*args, timeout=timeout)


async def _clean_up() -> None:
    await remove_deployment_and_pool(f"daily-trip-etl/{DEPLOYMENT}", POOL)


@pytest.fixture
def process_pool(prefect_server: str) -> Iterator[str]:
    _prefect("work-pool", "create", POOL, "--type", "process", "--overwrite")
    yield POOL
    asyncio.run(_clean_up())


def _deploy(tmp_path: Path) -> None:
    """Deploy daily-trip-etl from this repository (a local source) to the process pool."""
    from prefect import flow

    remote = flow.from_source(source=str(ROOT), entrypoint="flows/daily.py:daily_trip_etl")
    remote.deploy(  # type: ignore[union-attr]
        name=DEPLOYMENT,
        work_pool_name=POOL,
        job_variables={
            "env": {
                "TRIPFLOW_RETRY_DELAYS": f"{RETRY_DELAY},{RETRY_DELAY}",
                # The run's cwd is the repository: keep the PII key file out of it.
                "TRIPFLOW_PII_KEY_FILE": str(tmp_path / "pii.key"),
                # The session sets WARNING; the retry is logged at INFO level.
                "PREFECT_LOGGING_LEVEL": "INFO",
            }
        },
        print_next_steps=False,
        ignore_warnings=True,
    )


async def _flow_run(flow_run_id: uuid.UUID) -> Any:
    from prefect import get_client

    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


async def _task_runs(flow_run_id: uuid.UUID) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        return list(
            await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        )


async def _logs(flow_run_id: uuid.UUID) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        return list(
            await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )
        )


def test_deployment_run_by_a_process_worker_with_a_retried_stage(
    process_pool: str, tmp_path: Path
) -> None:
    _deploy(tmp_path)
    warehouse_dir = tmp_path / "warehouse"
    # A plain file where the warehouse's folder should be: opening the warehouse fails
    # (InfrastructureError, which the stage tasks retry) until the file is removed.
    warehouse_dir.write_text("blocked\n")
    warehouse = warehouse_dir / "warehouse.duckdb"
    flow_run_id = run_sample_day(f"daily-trip-etl/{DEPLOYMENT}", tmp_path / "staging", warehouse)

    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--run-once"],
        cwd=tmp_path,
        env=os.environ.copy(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # Observe the failure on the server: a stage task waiting for its retry.
        deadline = time.monotonic() + 150
        waiting: Any = None
        while waiting is None:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, "no stage went to AwaitingRetry"
            for task_run in asyncio.run(_task_runs(flow_run_id)):
                if task_run.state and task_run.state.name == "AwaitingRetry":
                    waiting = task_run
            time.sleep(0.25)
        retry_at = waiting.state.state_details.scheduled_time
        warehouse_dir.unlink()  # free it before the retry starts
        freed_at = time.time()
        assert freed_at < retry_at.timestamp(), "freed too late to prove the retry"
        assert waiting.task_key.startswith("load") or waiting.name.startswith("load")
        worker.wait(timeout=150)
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=30)
        log.close()
    worker_log = (tmp_path / "worker.log").read_text()

    run = asyncio.run(_flow_run(flow_run_id))
    assert run.state.name == "Completed", worker_log
    assert run.name == "daily-trip-etl/2025-11-15"
    assert run.deployment_id is not None and run.work_pool_name == POOL
    retried = {t.id: t for t in asyncio.run(_task_runs(flow_run_id))}[waiting.id]
    assert retried.state.name == "Completed"
    assert retried.run_count == 2  # failed once, succeeded on its retry

    # The first attempt's error, from the run's logs on the server.
    messages = [entry.message for entry in asyncio.run(_logs(flow_run_id))]
    assert any(
        "InfrastructureError" in m and str(warehouse_dir) in m and "Retry 1/2" in m
        for m in messages
    ), messages

    with duckdb.connect(str(warehouse), read_only=True) as con:
        [(status, loaded)] = con.execute(
            "SELECT status, rows_loaded FROM analytics.runs WHERE run_id = ?", [str(flow_run_id)]
        ).fetchall()
        published = con.execute(
            "SELECT count(*) FROM analytics.trips WHERE _run_id = ?", [str(flow_run_id)]
        ).fetchone()
        kinds = con.execute(
            "SELECT count(*) FROM analytics.partitions WHERE trip_date = DATE '2025-11-15'"
        ).fetchone()
    assert status == "published"
    assert published is not None and published[0] == loaded > 0
    assert kinds is not None and kinds[0] >= 1
