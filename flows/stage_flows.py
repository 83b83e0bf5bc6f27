"""One flow per stage, so each stage can run as its own deployment in its own, right-sized pod.

Each flow calls the matching plain function in ``tasks.stages`` with a ``RunContext``, measures
its time and peak memory, and hands its output to the next stage through staging as a run record
(``<staging>/_runs/<run_id>/<stage>.json``; a failure as ``<stage>-error.json``). Stages hand each
other paths in staging, never frames, so ``staging`` must be a store every pod can reach (S3 or
GCS; a local folder only when the stages share one machine). ``run_id`` names the pipeline run the
stages belong to. ``flows/dispatch.py`` runs these deployments in order for ``daily-trip-etl``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import date
from typing import Any

from prefect import flow

from tasks import stages
from tasks.config import load_settings
from tasks.errors import ChecksFailed, TripflowError
from tasks.metrics import StageMeasure, measure
from tasks.stages import RunContext
from tasks.warehouses import LoadResult, Usage


def _context(run_date: date, run_id: str, **overrides: Any) -> RunContext:
    return RunContext.create(run_id, run_date, load_settings(overrides))


@contextmanager
def _recorded(ctx: RunContext, stage: str) -> Iterator[tuple[dict[str, Any], StageMeasure]]:
    """Measure the stage; record its output (or its failure) in staging for the next stage."""
    record: dict[str, Any] = {}
    try:
        with measure(stage) as m:
            yield record, m
    except TripflowError as exc:
        failure = {**exc.as_dict(), "failed": getattr(exc, "failed", None)}
        ctx.staging.put_record(ctx.run_id, f"{stage}-error", failure)
        raise
    ctx.staging.put_record(ctx.run_id, stage, {**record, "measure": m.as_dict()})


def _stage(ctx: RunContext, stage: str, work: Callable[[Usage], Any]) -> dict[str, Any]:
    with _recorded(ctx, stage) as (record, m):
        record["output"] = asdict(work(m.warehouse))
    return dict(record["output"])


@flow(name="tripflow-extract")
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
    return _stage(ctx, "extract", lambda _: stages.extract(ctx))


@flow(name="tripflow-transform")
def transform_stage(
    run_date: date,
    run_id: str,
    source: str = "synthetic",
    source_format: str = "trips",
    staging: str | None = None,
) -> dict[str, Any]:
    """``raw/`` to ``clean/``, ``quarantine/`` and ``region_daily/``."""
    ctx = _context(run_date, run_id, source=source, format=source_format, staging=staging)
    return _stage(ctx, "transform", lambda _: stages.transform(ctx))


@flow(name="tripflow-load")
def load_stage(
    run_date: date, run_id: str, staging: str | None = None, warehouse: str | None = None
) -> dict[str, Any]:
    """Bulk-load the staged day into this run's own warehouse staging tables."""
    ctx = _context(run_date, run_id, staging=staging, warehouse=warehouse)
    return _stage(ctx, "load", lambda usage: stages.load(ctx, usage))


@flow(name="tripflow-validate")
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
    with _recorded(ctx, "validate") as (record, m):
        checks = stages.validate(ctx, extracted, quarantined, LoadResult(**loaded), m.warehouse)
        record["output"] = [c.as_dict() for c in checks]
    failed = [c.name for c in checks if not c.passed]
    if failed:
        error = ChecksFailed(failed)
        ctx.staging.put_record(run_id, "validate-error", {**error.as_dict(), "failed": failed})
        raise error
    return list(record["output"])
