"""``daily-trip-etl``: one business day from the source to the warehouse, published exactly once."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from prefect import flow
from prefect.runtime import flow_run

from tasks import steps
from tasks.config import Settings, load_settings
from tasks.errors import ChecksFailed
from tasks.locks import day_lock
from tasks.report import RunReport
from tasks.sources import make_source
from tasks.stages import RunContext


def default_run_date(settings: Settings) -> date:
    """Yesterday in the source's timezone."""
    tz = make_source(settings).timezone
    return datetime.now(ZoneInfo(tz)).date() - timedelta(days=1)


def _run_name() -> str:
    run_date = flow_run.parameters.get("run_date") or "yesterday"
    return f"daily-trip-etl/{run_date}"


@flow(
    name="daily-trip-etl",
    flow_run_name=_run_name,
    description="Extract one day of trips, transform with Polars, stage Parquet, bulk-load, "
    "validate and publish the day exactly once.",
    log_prints=True,
)
def daily_trip_etl(
    run_date: date | None = None,
    source: str = "synthetic",
    source_format: str = "trips",
    rows: int | None = None,
    staging: str | None = None,
    warehouse: str | None = None,
    min_rows: int | None = None,
) -> dict[str, Any]:
    """Run the daily trips pipeline for one business day.

    Args:
        run_date: The business day (a trip's pickup date in the source timezone); default yesterday.
        source: synthetic, sample, file:PATH (CSV or Parquet; a glob), postgres, or kafka:TOPIC.
        source_format: How a file's columns map onto the trip contract: trips or nyc-tlc-yellow.
        rows: How many trips the synthetic source generates (default from configuration).
        staging: Where stages hand each other Parquet (default .tripflow/staging).
        warehouse: The warehouse, e.g. duckdb:.tripflow/warehouse.duckdb.
        min_rows: The fewest loaded rows that pass the min_rows check.
    """
    settings = load_settings(
        {
            "source": source,
            "format": source_format,
            "rows": rows,
            "staging": staging,
            "warehouse": warehouse,
            "min_rows": min_rows,
        }
    )
    day = run_date or default_run_date(settings)
    ctx = RunContext.create(str(flow_run.id or "local"), day, settings)
    report = RunReport(ctx, flow_run_id=flow_run.id)
    try:
        with day_lock(settings.staging, day):
            _run_stages(ctx, report)
    except BaseException as exc:
        if hasattr(exc, "tripflow_stage"):
            report.add_stage(exc.tripflow_stage)
        report.fail(exc)
        steps.record_failed_run(ctx, report.ledger("failed"), return_state=True)
        steps.publish_artifacts(report, return_state=True)
        exc.tripflow_report = report.as_dict()  # type: ignore[attr-defined]
        raise
    steps.publish_artifacts(report)
    return report.as_dict()


def _run_stages(ctx: RunContext, report: RunReport) -> None:
    """extract, transform, load, validate, publish: each a Prefect task; raises on failure."""
    report.extracted, measure = steps.extract(ctx)
    report.add_stage(measure)
    report.transformed, measure = steps.transform(ctx)
    report.add_stage(measure)
    report.read_regions()
    report.loaded, measure = steps.load(ctx)
    report.add_stage(measure)
    report.checks, measure = steps.validate(
        ctx, report.rows["extracted"], report.rows["quarantined"], report.loaded
    )
    report.add_stage(measure)
    failed = [c.name for c in report.checks if not c.passed]
    if failed:
        raise ChecksFailed(failed)
    report.status = "published"
    report.published_rows, measure = steps.publish(ctx, report.loaded, report.ledger("published"))
    report.add_stage(measure)
