"""``daily-trip-etl``: one business day from the source to the warehouse, published exactly once."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from prefect import flow
from prefect.context import TagsContext
from prefect.runtime import flow_run

from flows.stages import run_stages_as_deployments
from tasks import artifacts, stage_tasks
from tasks.config import Settings, load_settings
from tasks.errors import ChecksFailed
from tasks.locks import day_lock
from tasks.pod import require_shared
from tasks.report import RunReport
from tasks.sources import make_source
from tasks.stage_tasks import NO_FLOW_RETRIES
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
    **NO_FLOW_RETRIES,
)
def daily_trip_etl(
    run_date: date | None = None,
    source: str = "synthetic",
    source_format: str = "trips",
    rows: int | None = None,
    staging: str | None = None,
    warehouse: str | None = None,
    min_rows: int | None = None,
    stage_deployments: bool = False,
    landed_run_id: str | None = None,
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
        stage_deployments: Run each stage as its own deployment run (its own pod on the
            Kubernetes pool) instead of in this process.
        landed_run_id: The raw day was already staged by ``tripflow land`` (its run id, from the
            ``tripflow.raw.landed`` event): start from it instead of extracting again.
    """
    settings = load_settings(
        {
            "source": source,
            "format": source_format,
            "rows": rows,
            "staging": staging or None,  # an event's empty field means "not given"
            "warehouse": warehouse,
            "min_rows": min_rows,
        }
    )
    if stage_deployments:
        require_shared(settings.staging, settings.warehouse, _duckdb_file(settings.warehouse))
    day = run_date or default_run_date(settings)
    ctx = RunContext.create(str(flow_run.id or "local"), day, settings)
    report = RunReport(ctx, flow_run_id=flow_run.id)
    # The flow run keeps the caller's tags (the CLI's ``tripflow``), its task runs get none: a
    # tagged task run makes Prefect acquire and release a lease on the tag's concurrency slot
    # through the API around every task, which cost ~4 s of an 8M day's ~30 s (bench/README.md).
    with TagsContext(current_tags=set()):
        try:
            with day_lock(settings.staging, day):
                if stage_deployments:
                    run_stages_as_deployments(
                        ctx,
                        report,
                        {"source": source, "source_format": source_format},
                        landed_run_id or None,  # "" from an event: none
                    )
                else:
                    _run_stages(ctx, report, landed_run_id or None)  # "" from an event: none
                _publish(ctx, report)
        except BaseException as exc:
            if hasattr(exc, "tripflow_stage"):
                report.add_stage(exc.tripflow_stage)
            report.fail(exc)
            artifacts.record_failed_run(ctx, report.ledger("failed"), return_state=True)
            artifacts.publish_artifacts(report, return_state=True)
            exc.tripflow_report = report.as_dict()  # type: ignore[attr-defined]
            raise
        artifacts.publish_artifacts(report)
    return report.as_dict()


def _duckdb_file(spec: str) -> str | None:
    """The DuckDB file a warehouse spec names (a ``block:`` spec through its block), or None."""
    kind, _, rest = spec.partition(":")
    if kind == "duckdb":
        return rest
    if kind == "block":
        from tasks.warehouses import load_block

        block = load_block(rest)
        return block.path if block.target == "duckdb" else None
    return None


def _run_stages(ctx: RunContext, report: RunReport, landed_run_id: str | None) -> None:
    """extract (unless it landed), transform, load, validate: each a Prefect task.

    The transform runs next in this process, so the extract may apply it in its own pass.
    """
    landed = stage_tasks.landed_extract(ctx, landed_run_id) if landed_run_id else None
    report.extracted, measure = landed or stage_tasks.extract(ctx, transform_in_pass=True)
    report.add_stage(measure)
    report.transformed, measure = stage_tasks.transform(ctx)
    report.add_stage(measure)
    report.read_regions()
    report.loaded, measure = stage_tasks.load(ctx)
    report.add_stage(measure)
    report.checks, measure = stage_tasks.validate(
        ctx, report.rows["extracted"], report.rows["quarantined"], report.loaded
    )
    report.add_stage(measure)


def _publish(ctx: RunContext, report: RunReport) -> None:
    """Publish the day if every check passed; raises ``ChecksFailed`` otherwise."""
    failed = [c.name for c in report.checks if not c.passed]
    if failed:
        raise ChecksFailed(failed)
    assert report.loaded is not None
    report.status = "published"
    report.published_rows, measure = stage_tasks.publish(
        ctx, report.loaded, report.ledger("published")
    )
    report.add_stage(measure)
