"""One flow per stage, so each stage can run as its own deployment in its own, right-sized pod.

Each flow calls the matching plain function in ``tasks.stages`` with a ``RunContext``. Stages hand
each other paths in staging, never frames, so ``staging`` must be a store every pod can reach
(the pod's local disk only works when all stages share one pod). ``run_id`` names the pipeline
run the stages belong to: load, validate (and publish) must agree on it.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date
from typing import Any

from prefect import flow

from tasks import stages
from tasks.config import load_settings
from tasks.errors import ChecksFailed
from tasks.stages import RunContext
from tasks.warehouses import LoadResult


def _context(run_date: date, run_id: str, **overrides: Any) -> RunContext:
    return RunContext.create(run_id, run_date, load_settings(overrides))


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
    return asdict(stages.extract(ctx))


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
    return asdict(stages.transform(ctx))


@flow(name="tripflow-load")
def load_stage(
    run_date: date, run_id: str, staging: str | None = None, warehouse: str | None = None
) -> dict[str, Any]:
    """Bulk-load the staged day into this run's own warehouse staging tables."""
    ctx = _context(run_date, run_id, staging=staging, warehouse=warehouse)
    return asdict(stages.load(ctx))


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
    checks = stages.validate(ctx, extracted, quarantined, LoadResult(**loaded))
    failed = [c.name for c in checks if not c.passed]
    if failed:
        raise ChecksFailed(failed)
    return [c.as_dict() for c in checks]
