"""The downstream refresh: a rolling regional summary for dashboards, rebuilt after a publish.

``region_30d`` (in staging, ``region_30d/date=<end>/`` with its manifest) holds, per region, the
trips, distance and fare of the last N published days. Only what was published counts: for each
day, the latest published run in the warehouse's ledger, and that day's staged ``region_daily``
only if its manifest comes from that same run (a later, unpublished re-run of the day is skipped,
and said so).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, Final

import polars as pl

from tasks.config import Settings
from tasks.contract import REGION_DAILY_SCHEMA
from tasks.errors import InfrastructureError
from tasks.stages import RunContext
from tasks.staging import PARQUET_WRITE
from tasks.transforms import region_window
from tasks.warehouses import make_warehouse

MART: Final = "region_30d"


@dataclass(frozen=True)
class MartResult:
    end: date | None
    days_used: list[str]
    days_skipped: dict[str, str]
    regions: list[dict[str, Any]]
    folder: str | None


def published_runs(settings: Settings, days: int) -> dict[date, str]:
    """The latest published run id of each day, from the warehouse's ledger."""
    out: dict[date, str] = {}
    for run in make_warehouse(settings.warehouse).recent_runs(days * 4):  # newest first
        day = (
            run["run_date"]
            if isinstance(run["run_date"], date)
            else date.fromisoformat(str(run["run_date"]))
        )
        if run["status"] == "published" and day not in out:
            out[day] = str(run["run_id"])
    return out


def refresh_region_window(settings: Settings, run_id: str, days: int = 30) -> MartResult:
    """Rebuild ``region_30d`` ending at the latest published day."""
    published = published_runs(settings, days)
    if not published:
        return MartResult(None, [], {}, [], None)
    end = max(published)
    ctx = RunContext.create(run_id, end, settings)
    used: list[str] = []
    skipped: dict[str, str] = {}
    frames: list[pl.LazyFrame] = []
    for day, published_run in sorted(published.items()):
        if (end - day).days >= days:
            continue
        try:
            staged = ctx.staging.read("region_daily", day)
        except InfrastructureError as exc:
            skipped[day.isoformat()] = exc.message
            continue
        if staged.manifest.get("run_id") != published_run:
            skipped[day.isoformat()] = (
                f"staged region_daily is from run {staged.manifest.get('run_id')}, "
                f"not the published run {published_run}"
            )
            continue
        used.append(day.isoformat())
        frames.append(staged.scan(REGION_DAILY_SCHEMA).filter(pl.col("trip_date") == day))
    summary = region_window(
        pl.concat(frames) if frames else pl.LazyFrame(schema=REGION_DAILY_SCHEMA), end, days
    ).collect()
    with ctx.staging.write(MART, end, run_id) as folder:
        summary.write_parquet(folder / "part-00000.parquet", **PARQUET_WRITE)
    mart = ctx.staging.read(MART, end)
    return MartResult(end, used, skipped, summary.to_dicts(), mart.folder)
