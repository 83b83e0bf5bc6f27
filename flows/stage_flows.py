"""One flow per stage, so each stage can run as its own deployment in its own, right-sized pod.

Each flow calls the matching stage task of ``tasks.steps`` (the plain function of ``tasks.stages``,
measured, its infrastructure errors retried inside the pod) with a ``RunContext``, and hands its
output to the next stage through staging as a run record (``<staging>/_runs/<run_id>/<stage>.json``;
a failure as ``<stage>-error.json``). Stages hand each other paths in staging, never frames, so
``staging`` must be a store every pod can reach (S3 or GCS, or a folder on a volume every pod
mounts; ``tasks.pod.require_shared`` refuses what no pod could share). ``run_id`` names the
pipeline run the stages belong to. ``flows/dispatch.py`` runs these deployments in order for
``daily-trip-etl``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import date
from typing import Any

from prefect import flow

from tasks import steps
from tasks.config import load_settings
from tasks.errors import ChecksFailed, TripflowError
from tasks.stages import RunContext
from tasks.steps import NO_FLOW_RETRIES
from tasks.warehouses import LoadResult


def _context(run_date: date, run_id: str, **overrides: Any) -> RunContext:
    return RunContext.create(run_id, run_date, load_settings(overrides))


def _record_failure(ctx: RunContext, stage: str, exc: TripflowError) -> None:
    failure = {**exc.as_dict(), "failed": getattr(exc, "failed", None)}
    ctx.staging.put_record(ctx.run_id, f"{stage}-error", failure)


def _stage(ctx: RunContext, stage: str, run: Callable[[], tuple[Any, dict[str, Any]]]) -> Any:
    """Run the stage's task (its in-pod retries of infrastructure errors included); record its
    output and measure in staging for the next stage, or its failure for the daily run."""
    try:
        out, measure = run()
    except TripflowError as exc:
        _record_failure(ctx, stage, exc)
        raise
    output = asdict(out)
    ctx.staging.put_record(ctx.run_id, stage, {"output": output, "measure": measure})
    return output


@flow(name="tripflow-extract", **NO_FLOW_RETRIES)
def extract_stage(
    run_date: date,
    run_id: str,
    source: str = "synthetic",
    source_format: str = "trips",
    rows: int | None = None,
    staging: str | None = None,
) -> dict[str, Any]:
    """Read the day from the source into ``raw/``."""
    ctx = _context(
        run_date, run_id, source=source, format=source_format, rows=rows, staging=staging
    )
    return dict(_stage(ctx, "extract", lambda: steps.extract(ctx)))


@flow(name="tripflow-transform", **NO_FLOW_RETRIES)
def transform_stage(
    run_date: date,
    run_id: str,
    source: str | None = None,
    source_format: str = "trips",
    staging: str | None = None,
    regions: list[str] | None = None,
) -> dict[str, Any]:
    """``raw/`` to ``clean/``, ``quarantine/`` and ``region_daily/``.

    The transform reads the staged raw day; of the source it only needs the accepted regions. A
    landed day's source may exist only on the landing machine: the daily run then passes the
    accepted ``regions`` instead of the ``source``.
    """
    ctx = _context(
        run_date, run_id, source=source, format=source_format, staging=staging, regions=regions
    )
    return dict(_stage(ctx, "transform", lambda: steps.transform(ctx)))


@flow(name="tripflow-load", **NO_FLOW_RETRIES)
def load_stage(
    run_date: date, run_id: str, staging: str | None = None, warehouse: str | None = None
) -> dict[str, Any]:
    """Bulk-load the staged day into this run's own warehouse staging tables."""
    ctx = _context(run_date, run_id, staging=staging, warehouse=warehouse)
    return dict(_stage(ctx, "load", lambda: steps.load(ctx)))


@flow(name="tripflow-validate", **NO_FLOW_RETRIES)
def validate_stage(
    run_date: date,
    run_id: str,
    extracted: int,
    quarantined: int,
    loaded: dict[str, Any],
    staging: str | None = None,
    warehouse: str | None = None,
    min_rows: int | None = None,
) -> list[dict[str, Any]]:
    """Run the checks on this run's staging tables; fail if any check fails."""
    ctx = _context(run_date, run_id, staging=staging, warehouse=warehouse, min_rows=min_rows)
    try:
        checks, measure = steps.validate(ctx, extracted, quarantined, LoadResult(**loaded))
    except TripflowError as exc:
        _record_failure(ctx, "validate", exc)
        raise
    output = [c.as_dict() for c in checks]
    # Every check's result is recorded, failed or not: the day's report shows them all.
    ctx.staging.put_record(run_id, "validate", {"output": output, "measure": measure})
    failed = [c.name for c in checks if not c.passed]
    if failed:
        error = ChecksFailed(failed)
        _record_failure(ctx, "validate", error)
        raise error
    return output
