"""``backfill``: one ``daily-trip-etl`` run per day, under a concurrency limit.

Locally each day is a child flow run in this process: days extract and transform in parallel; the
warehouse's writer lock serializes load and publish (DuckDB allows one writer per file). With
``day_deployment`` (the Kubernetes pool), each day is a run of that deployment instead — its own
pod(s) — and ``concurrency`` days are in flight at once (the deployment's own concurrency limit
caps them too). A failed day does not stop the others; it is listed and can be re-run alone with
``tripflow run --date D`` or ``prefect deployment run … --param run_date=D``.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment

from flows.daily import daily_trip_etl
from tasks.errors import TripflowError, UsageError, library_message
from tasks.stage_tasks import NO_FLOW_RETRIES


def days_between(start: date, end: date) -> list[date]:
    if end < start:
        raise UsageError(f"--end {end} is before --start {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def _one_day_deployment(day: date, params: dict[str, Any], deployment: str) -> dict[str, Any]:
    """The day as a run of ``deployment``; its outcome from the run's final state."""
    given = {k: v for k, v in params.items() if v is not None}
    child = run_deployment(
        deployment, parameters={"run_date": day.isoformat(), **given}, timeout=None
    )
    state = child.state  # type: ignore[union-attr]
    done = state is not None and state.is_completed()
    out: dict[str, Any] = {
        "run_date": day.isoformat(),
        "status": "published" if done else "failed",
        "flow_run_id": str(child.id),  # type: ignore[union-attr]
    }
    if not done:
        out["message"] = f"{state.name if state else 'no state'}: {state.message if state else ''}"
    return out


def _one_day(day: date, params: dict[str, Any], deployment: str | None = None) -> dict[str, Any]:
    if deployment:
        return _one_day_deployment(day, params, deployment)
    try:
        report: dict[str, Any] = daily_trip_etl(run_date=day, **params)
        return report
    except Exception as exc:
        report = getattr(exc, "tripflow_report", {})
        message = exc.message if isinstance(exc, TripflowError) else library_message(exc)
        return {**report, "run_date": day.isoformat(), "status": "failed", "message": message}


@flow(
    name="backfill", description="Run daily-trip-etl for every day of a range.", **NO_FLOW_RETRIES
)
def backfill(
    start: date,
    end: date,
    concurrency: int = 2,
    source: str = "synthetic",
    source_format: str = "trips",
    rows: int | None = None,
    staging: str | None = None,
    warehouse: str | None = None,
    min_rows: int | None = None,
    day_deployment: str | None = None,
) -> list[dict[str, Any]]:
    """Backfill a range of days.

    Args:
        start: The first business day.
        end: The last business day (inclusive).
        concurrency: How many days run at once.
        source: synthetic, sample, or file:PATH.
        source_format: trips or nyc-tlc-yellow.
        rows: Trips per day for the synthetic source.
        staging: Where stages hand each other Parquet.
        warehouse: The warehouse spec.
        min_rows: The fewest loaded rows that pass the min_rows check.
        day_deployment: Run each day as a run of this deployment (e.g.
            ``daily-trip-etl/backfill-day``: its own pods) instead of in this process.
    """
    if concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    params = {
        "source": source,
        "source_format": source_format,
        "rows": rows,
        "staging": staging,
        "warehouse": warehouse,
        "min_rows": min_rows,
    }
    days = days_between(start, end)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        # Each day runs as a child flow run of this backfill (the context is copied per thread).
        futures = [
            pool.submit(contextvars.copy_context().run, _one_day, day, params, day_deployment)
            for day in days
        ]
        days_done = [f.result() for f in futures]
    # A deployment run's return value is not kept: its log is where an operator finds the
    # failed days (e.g. a backfill run in its own pod on the Kubernetes pool).
    logger = get_run_logger()
    for day_done in days_done:
        if day_done["status"] != "published":
            logger.error(
                "backfill: day %s failed (flow run %s): %s",
                day_done["run_date"],
                day_done.get("flow_run_id", "-"),
                day_done.get("message", ""),
            )
    failed = sum(d["status"] != "published" for d in days_done)
    logger.info("backfill: %d of %d days published", len(days_done) - failed, len(days_done))
    return days_done
