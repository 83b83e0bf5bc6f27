"""Per-stage runs for real: ``daily-trip-etl`` with ``stage_deployments`` on a process work pool.

The Kubernetes pool's behaviour, minus the cluster: on the session's real Prefect server, the daily
flow and the four stage flows are deployed to a process pool from this repository, a real
``prefect worker`` runs them, and the daily run starts each stage as a run of its own deployment
(``run_deployment``, as a child flow run) — on Kubernetes each would be its own pod with that
deployment's job variables. The first transform process is SIGKILLed (as a spot node reclaim or
an OOM kill would), its run is reported Crashed, and the daily run dispatches it again. The day is
published once, and the ledger carries each stage's peak memory measured in its own process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers import (
    ROOT,
    prefect_cli,
    remove_deployment_and_pool,
    run_sample_day,
    shared_folder,
    tripflow,
)

from flows.stages import STAGE_DEPLOYMENTS
from tasks.marts import MART
from tasks.staging import Staging

POOL = "tripflow-ops-stages"
#: The production name: the downstream refresh's trigger matches runs of this deployment.
DAILY = "daily-trip-etl"
REFRESH = "downstream-refresh/region-30d"
ENTRYPOINTS = {
    "extract": "flows/stages.py:extract_stage",
    "transform": "flows/stages.py:transform_stage",
    "load": "flows/stages.py:load_stage",
    "validate": "flows/stages.py:validate_stage",
}


async def _clean_up() -> None:
    for name in STAGE_DEPLOYMENTS.values():
        await remove_deployment_and_pool(name, POOL)
    await remove_deployment_and_pool(REFRESH, POOL)
    await remove_deployment_and_pool("backfill/ops-backfill", POOL)
    await remove_deployment_and_pool(f"daily-trip-etl/{DAILY}", POOL)


@pytest.fixture
def shared() -> Iterator[Path]:
    """Staging and the DuckDB file every stage process reaches: outside /tmp, which a pod keeps
    to itself and ``stage_deployments`` therefore refuses (tasks/pod.py)."""
    import shutil

    folder = shared_folder("stage-pods")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def stage_pool(prefect_server: str) -> Iterator[str]:
    prefect_cli("work-pool", "create", POOL, "--type", "process", "--overwrite")
    yield POOL
    asyncio.run(_clean_up())


def _deploy(entrypoint: str, name: str, env: dict[str, str], **options: Any) -> None:
    from prefect import flow

    remote = flow.from_source(source=str(ROOT), entrypoint=entrypoint)
    remote.deploy(  # type: ignore[union-attr]
        name=name,
        work_pool_name=POOL,
        job_variables={"env": env},
        print_next_steps=False,
        ignore_warnings=True,
        **options,
    )


def _refresh_triggers() -> list[Any]:
    """The downstream refresh's triggers exactly as prefect.yaml declares them."""
    from k8s.k8s_support import deployments_by_name
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers

    spec = deployments_by_name()["region-30d"]
    return list(_initialize_deployment_triggers("region-30d", spec["triggers"]))


async def _runs_of(deployment_names: list[str]) -> dict[str, list[Any]]:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    out: dict[str, list[Any]] = {}
    async with get_client() as client:
        for name in deployment_names:
            deployment = await client.read_deployment_by_name(name)
            out[name] = list(
                await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id]))
                )
            )
    return out


async def _flow_run(flow_run_id: uuid.UUID) -> Any:
    from prefect import get_client

    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


async def _parent_flow_run_id(task_run_id: uuid.UUID) -> uuid.UUID:
    from prefect import get_client

    async with get_client() as client:
        task_run = await client.read_task_run(task_run_id)
        assert task_run.flow_run_id is not None
        return task_run.flow_run_id


@contextmanager
def _worker(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real process worker on the pool (polling every second), stopped afterwards."""
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--limit", "3"],
        cwd=tmp_path,
        env={**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield worker
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()


def _until_final(flow_run_id: uuid.UUID, worker: subprocess.Popen[bytes], deadline: float) -> Any:
    """The flow run once it reaches a final state (the worker must stay up meanwhile)."""
    while True:
        run = asyncio.run(_flow_run(flow_run_id))
        if run.state is not None and run.state.is_final():
            return run
        assert worker.poll() is None, "the worker exited"
        assert time.monotonic() < deadline, f"flow run {flow_run_id} did not finish"
        time.sleep(1)


def test_daily_run_dispatches_each_stage_to_its_own_deployment(
    stage_pool: str, tmp_path: Path, shared: Path
) -> None:
    warehouse = shared / "warehouse.duckdb"
    env = {
        "TRIPFLOW_PII_KEY_FILE": str(tmp_path / "pii.key"),
        "TRIPFLOW_RETRY_DELAYS": "1,1",
    }
    for stage, entrypoint in ENTRYPOINTS.items():
        extra = (
            {"TRIPFLOW_KILL_AT": "transform", "TRIPFLOW_KILL_ONCE": str(tmp_path / "killed")}
            if stage == "transform"
            else {}
        )
        _deploy(entrypoint, STAGE_DEPLOYMENTS[stage].split("/")[1], {**env, **extra})
    _deploy("flows/daily.py:daily_trip_etl", DAILY, env)
    _deploy(
        "flows/downstream.py:downstream_refresh",
        "region-30d",
        env,
        parameters={"staging": str(shared / "staging"), "warehouse": f"duckdb:{warehouse}"},
        triggers=_refresh_triggers(),
    )

    flow_run_id = run_sample_day(
        f"daily-trip-etl/{DAILY}",
        shared / "staging",
        warehouse,
        "--param",
        "stage_deployments=true",
    )
    deadline = time.monotonic() + 400
    with _worker(tmp_path) as worker:
        run = _until_final(flow_run_id, worker, deadline)
        # Completed fires the downstream refresh's trigger: the worker runs that too.
        while run.state.is_completed():
            refreshes = asyncio.run(_runs_of([REFRESH]))[REFRESH]
            if refreshes and all(r.state.is_final() for r in refreshes):
                break
            assert time.monotonic() < deadline, "no downstream refresh ran"
            time.sleep(1)
    worker_log = (tmp_path / "worker.log").read_text()
    assert run.state.name == "Completed", worker_log[-5000:]

    # Every stage ran as a child flow run of the daily run, from its own deployment; the killed
    # transform was reported Crashed and dispatched once more.
    runs = asyncio.run(_runs_of(list(STAGE_DEPLOYMENTS.values())))
    for stage, name in STAGE_DEPLOYMENTS.items():
        states = sorted(r.state.name for r in runs[name])
        expected = ["Completed", "Crashed"] if stage == "transform" else ["Completed"]
        assert states == expected, (stage, states)
        for child in runs[name]:
            assert child.parameters["run_id"] == str(flow_run_id)
            assert child.parent_task_run_id is not None
            assert asyncio.run(_parent_flow_run_id(child.parent_task_run_id)) == flow_run_id
    assert (tmp_path / "killed").exists()

    # The day is published once, and the ledger has every stage's measure from its own process.
    with duckdb.connect(str(warehouse), read_only=True) as con:
        [(status, loaded, stages)] = con.execute(
            "SELECT status, rows_loaded, stages FROM analytics.runs WHERE run_id = ?",
            [str(flow_run_id)],
        ).fetchall()
        [(published,)] = con.execute(
            "SELECT count(*) FROM analytics.trips WHERE trip_date = DATE '2025-11-15'"
        ).fetchall()
    assert status == "published" and loaded == published == 10
    measures = {m["name"]: m for m in json.loads(stages)["measures"]}
    assert set(measures) == {"extract", "transform", "load", "validate"}
    assert all(m["peak_rss_mb"] > 0 and m["seconds"] > 0 for m in measures.values()), measures

    # The trigger ran the downstream refresh once, naming the run that completed, and it built
    # the rolling summary from the day that was published.
    [refresh] = asyncio.run(_runs_of([REFRESH]))[REFRESH]
    assert refresh.state.name == "Completed"
    assert refresh.parameters["triggered_by"] == run.name == "daily-trip-etl/2025-11-15"
    mart = Staging(str(shared / "staging")).read(MART, date(2025, 11, 15))
    summary = mart.scan({}).collect()
    assert summary["trip_count"].sum() == 10
    assert sorted(summary["region"]) == ["eu-west", "us-east", "us-west"]
    assert set(summary["days_covered"]) == {1}


def test_backfill_fans_days_out_as_runs_of_the_day_deployment(
    stage_pool: str, tmp_path: Path
) -> None:
    """Each day of the backfill is its own run of the day deployment (on Kubernetes: its own
    pods); a failing day (2025-11-14 has no trips: min_rows fails) does not stop the other."""
    warehouse = tmp_path / "warehouse.duckdb"
    env = {"TRIPFLOW_PII_KEY_FILE": str(tmp_path / "pii.key")}
    _deploy("flows/daily.py:daily_trip_etl", DAILY, env)
    _deploy("flows/backfill.py:backfill", "ops-backfill", env)
    done = prefect_cli(
        "deployment",
        "run",
        "backfill/ops-backfill",
        "--param",
        "start=2025-11-14",
        "--param",
        "end=2025-11-15",
        "--param",
        "source=sample",
        "--param",
        f"staging={tmp_path / 'staging'}",
        "--param",
        f"warehouse=duckdb:{warehouse}",
        "--param",
        f"day_deployment=daily-trip-etl/{DAILY}",
    )
    backfill_id = uuid.UUID(done.stdout.split("UUID:")[1].split()[0])
    with _worker(tmp_path) as worker:
        run = _until_final(backfill_id, worker, time.monotonic() + 400)
    assert run.state.name == "Completed", (tmp_path / "worker.log").read_text()[-5000:]
    days = asyncio.run(_runs_of([f"daily-trip-etl/{DAILY}"]))[f"daily-trip-etl/{DAILY}"]
    by_day = {r.parameters["run_date"]: r for r in days}
    assert set(by_day) == {"2025-11-14", "2025-11-15"}
    assert by_day["2025-11-15"].state.name == "Completed"
    assert by_day["2025-11-14"].state.name == "Failed"
    for child in days:
        assert child.parent_task_run_id is not None
        assert asyncio.run(_parent_flow_run_id(child.parent_task_run_id)) == backfill_id
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.execute(
            "SELECT run_date::VARCHAR, status FROM analytics.runs ORDER BY run_date"
        ).fetchall()
    assert rows == [("2025-11-14", "failed"), ("2025-11-15", "published")]


#: A default a cluster operator might set for every flow run (the env var Prefect reads for flows
#: that set no retries of their own). tripflow's flows set retries=0: it must change nothing.
CLUSTER_WIDE_RETRIES = {
    "PREFECT_FLOWS_DEFAULT_RETRIES": "1",
    "PREFECT_FLOWS_DEFAULT_RETRY_DELAY_SECONDS": "300",
}
RETRY_STATES = {"AwaitingRetry", "Retrying"}


async def _state_names(flow_run_ids: list[uuid.UUID]) -> dict[str, list[str]]:
    """Every state each flow run and each of its task runs ever entered (the server's history)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    out: dict[str, list[str]] = {}
    async with get_client() as client:
        for run_id in flow_run_ids:
            states = await client.read_flow_run_states(run_id)
            out[f"flow run {run_id}"] = [s.name for s in states if s.name]
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )
            for task in tasks:
                history = await client.read_task_run_states(task.id)
                out[f"task run {task.name}"] = [s.name for s in history if s.name]
    return out


def test_landed_day_failing_its_checks_is_not_retried_and_not_extracted_again(
    stage_pool: str, tmp_path: Path, shared: Path
) -> None:
    """The landed-event trigger's run with stage_deployments, on a real worker: the daily run
    starts from the landed raw day (no extract run at all), the validate stage fails its check,
    and the day fails at once: no flow or task run ever enters AwaitingRetry or Retrying, even
    with a cluster-wide default of flow retries in every process's environment."""
    warehouse = shared / "warehouse.duckdb"
    staging = shared / "staging"
    env = {"TRIPFLOW_PII_KEY_FILE": str(tmp_path / "pii.key"), **CLUSTER_WIDE_RETRIES}
    for stage, entrypoint in ENTRYPOINTS.items():
        _deploy(entrypoint, STAGE_DEPLOYMENTS[stage].split("/")[1], env)
    _deploy("flows/daily.py:daily_trip_etl", DAILY, env)

    landed = tripflow(
        "land",
        "--date",
        "2025-11-15",
        "--source",
        "sample",
        "--staging",
        str(staging),
        "--no-emit",
        "--json",
        cwd=tmp_path,
        env={"TRIPFLOW_PII_KEY_FILE": str(tmp_path / "pii.key")},
    )
    assert landed.returncode == 0, landed.stderr
    landed_run_id = json.loads(landed.stdout)["payload"]["landed_run_id"]

    flow_run_id = run_sample_day(
        f"daily-trip-etl/{DAILY}",
        staging,
        warehouse,
        "--param",
        "stage_deployments=true",
        "--param",
        f"landed_run_id={landed_run_id}",
        "--param",
        "min_rows=1000",  # the sample day has 10 trips: the min_rows check fails
    )
    deadline = time.monotonic() + 400
    with _worker(tmp_path) as worker:
        while True:
            run = asyncio.run(_flow_run(flow_run_id))
            children = asyncio.run(_runs_of(list(STAGE_DEPLOYMENTS.values())))
            ids = [flow_run_id, *(r.id for runs in children.values() for r in runs)]
            seen = asyncio.run(_state_names(ids))
            retried = {k: v for k, v in seen.items() if RETRY_STATES & set(v)}
            assert not retried, retried
            if run.state is not None and run.state.is_final():
                break
            assert worker.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, "the daily run did not finish"
            time.sleep(1)
    worker_log = (tmp_path / "worker.log").read_text()
    assert run.state.name == "Failed", worker_log[-5000:]
    assert "min_rows" in (run.state.message or "")

    runs = asyncio.run(_runs_of(list(STAGE_DEPLOYMENTS.values())))
    assert runs[STAGE_DEPLOYMENTS["extract"]] == [], "a landed day was extracted again"
    assert [r.state.name for r in runs[STAGE_DEPLOYMENTS["transform"]]] == ["Completed"]
    [validate] = runs[STAGE_DEPLOYMENTS["validate"]]
    assert validate.state.name == "Failed"
    for stage in ("transform", "load", "validate"):
        for child in runs[STAGE_DEPLOYMENTS[stage]]:
            assert "source" not in child.parameters, (stage, child.parameters)
    # The raw day is still the landed one; nothing was published.
    assert Staging(str(staging)).read("raw", date(2025, 11, 15)).manifest["run_id"] == (
        landed_run_id
    )
    with duckdb.connect(str(warehouse), read_only=True) as con:
        [(status,)] = con.execute(
            "SELECT status FROM analytics.runs WHERE run_id = ?", [str(flow_run_id)]
        ).fetchall()
    assert status == "failed"
