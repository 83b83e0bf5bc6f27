"""Backfill, live: ``prefect deployment run backfill/backfill --param start=… --param end=…`` fans
the days out as ``daily-trip-etl/backfill-day`` runs, each its own orchestrator Job (and its
stages' Jobs); the number of concurrently active ``backfill-day`` runs and of their orchestrator
Jobs, sampled every second while the backfill runs, never exceeds that deployment's concurrency
limit (prefect.yaml, read from the deployed file); a failing day is listed in the backfill run's
log, the other days are published. Prefect's limit holds flow runs: a run frees its slot when it
reaches its final state, and its Job is marked Complete only after its pod has exited, so for a
few seconds a finished run's Job can be up beside the next run's (printed, not bounded).

Test-only parameters (stated here): ``concurrency`` one above ``backfill-day``'s limit, so that
the deployment's limit, not the backfill's own thread pool, is what must hold the days back;
``source``, a folder of CSV files in the test's folder (every pod is a process on this host),
one day of which fails its checks (a third of its trips have no distance), as in
tests/test_cli.py's local backfill test.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from cluster.conftest import Deployed, Recorder, run_deployment_cli, wait_final
from cluster.faults_support import (
    published_runs,
    shared_warehouse_fixture,  # noqa: F401 - a fixture
    state_names,
)

pytestmark = pytest.mark.timeout(1800)

START = date(2025, 10, 20)
DAYS = 5
BAD_DAY = "2025-10-22"


async def _day_runs(after: float) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    async with get_client() as client:
        runs = await client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["backfill-day"]))
        )
    return [r for r in runs if r.created.timestamp() >= after - 5]


async def _logs(flow_run_id: uuid.UUID) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return [entry.message for entry in logs]


def _active_jobs(seen: Recorder, run_ids: set[str]) -> int:
    """Orchestrator Jobs of those runs not finished (no Complete/Failed condition) nor deleted.

    Pass the runs not yet final for the Jobs the limit holds; pass every run for all Jobs still
    up: a run that reached its final state frees its slot at once, while its pod exits and the
    Job controller marks its Job Complete a few seconds later (seen: 5 such Jobs at once, limit
    4, one of them a finished run's)."""
    count = 0
    for job in list(seen.objects.values()):
        labels = job["metadata"].get("labels", {})
        if (
            job["kind"] != "Job"
            or labels.get("prefect.io/flow-run-id") not in run_ids
            or job["metadata"]["uid"] in seen.deleted
        ):
            continue
        done = [
            c
            for c in job["status"].get("conditions") or []
            if c["type"] in ("Complete", "Failed") and c["status"] == "True"
        ]
        if not done:
            count += 1
    return count


def test_backfill_days_fan_out_under_the_concurrency_limit_and_a_failing_day_is_listed(
    deployed: Deployed,
    shared_warehouse: Path,
) -> None:
    limit = deployed.deployment("backfill-day")["concurrency_limit"]["limit"]
    data = deployed.cluster.folder / "backfill-days"
    data.mkdir()
    days = [(START + timedelta(days=i)).isoformat() for i in range(DAYS)]
    for day in days:
        rows = [f"{day}-{i},{day},5,10,us-east" for i in range(100)]
        if day == BAD_DAY:
            rows += [f"{day}-bad{i},{day},0,10,us-east" for i in range(50)]
        (data / f"{day}.csv").write_text(
            "trip_id,date,distance_km,fare_usd,region\n" + "\n".join(rows) + "\n"
        )

    # (active backfill-day runs, their unfinished orchestrator Jobs, unfinished Jobs of any run)
    samples: list[tuple[int, int, int]] = []
    stop = threading.Event()
    started = time.time()

    def sample() -> None:
        while not stop.is_set():
            try:
                runs = asyncio.run(_day_runs(started))
            except Exception:  # a busy server: sample again
                time.sleep(1)
                continue
            active = {str(r.id) for r in runs if r.state is not None and r.state.is_running()}
            pending = {str(r.id) for r in runs if r.state is not None and r.state.is_pending()}
            live = {str(r.id) for r in runs if r.state is None or not r.state.is_final()}
            samples.append(
                (
                    len(active | pending),
                    _active_jobs(seen, live),
                    _active_jobs(seen, {str(r.id) for r in runs}),
                )
            )
            time.sleep(1)

    with Recorder(deployed.admin) as seen:
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            backfill = run_deployment_cli(
                "backfill/backfill",
                "--param", f"start={days[0]}", "--param", f"end={days[-1]}",
                "--param", f"concurrency={limit + 1}", "--param", f"source=file:{data}/*.csv",
            )  # fmt: skip
            final = wait_final(deployed, backfill, 1500)
        finally:
            stop.set()
            sampler.join(timeout=30)
    assert final.state.name == "Completed", final.state.message

    day_runs = asyncio.run(_day_runs(started))
    by_day = {str(r.parameters["run_date"]): r for r in day_runs}
    assert sorted(by_day) == days and len(day_runs) == DAYS, [r.parameters for r in day_runs]
    assert {d: r.state.name for d, r in by_day.items()} == {
        d: "Failed" if d == BAD_DAY else "Completed" for d in days
    }
    # Each day its own orchestrator Job, created by the worker.
    for run in day_runs:
        jobs = seen.of_flow_run("Job", run.id)
        assert [j["metadata"]["labels"]["tripflow.io/stage"] for j in jobs] == ["orchestrate"]

    most_runs = max(s[0] for s in samples)
    most_jobs = max(s[1] for s in samples)
    print(f"backfill: {len(samples)} samples; at most {most_runs} backfill-day runs and "
          f"{most_jobs} of their orchestrator Jobs active at once (limit {limit}); with the "
          f"Jobs of runs already final: {max(s[2] for s in samples)}")  # fmt: skip
    assert most_runs <= limit and most_jobs <= limit, samples
    # The limit was met, and it held a day back (the backfill asked for one day more).
    assert most_runs == limit, samples
    waited = [r for r in day_runs if "AwaitingConcurrencySlot" in state_names(r.id)]
    assert waited, [state_names(r.id) for r in day_runs]

    messages = "\n".join(asyncio.run(_logs(backfill)))
    assert f"day {BAD_DAY} failed (flow run {by_day[BAD_DAY].id})" in messages, messages[-3000:]
    assert f"{DAYS - 1} of {DAYS} days published" in messages, messages[-3000:]
    for day in days:
        published = published_runs(shared_warehouse, day)
        assert published == ([] if day == BAD_DAY else [str(by_day[day].id)]), (day, published)
