"""The run report: what ``tripflow run --json`` prints, the artifacts show and the ledger keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from tasks.checks import CheckResult, quarantine_share
from tasks.contract import REASONS, REGION_DAILY_SCHEMA
from tasks.cost import run_cost
from tasks.errors import TripflowError, library_message
from tasks.stages import ExtractOutput, RunContext, TransformOutput, code_version
from tasks.warehouses import LedgerRow, LoadResult

STAGE_NAMES = ("extract", "transform", "load", "validate", "publish")


@dataclass
class RunReport:
    ctx: RunContext
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    status: str = "running"
    extracted: ExtractOutput | None = None
    transformed: TransformOutput | None = None
    loaded: LoadResult | None = None
    checks: list[CheckResult] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    regions: list[dict[str, Any]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    published_rows: int | None = None
    flow_run_id: str | None = None
    bytes_staged: int = 0

    def add_stage(self, measure: dict[str, Any]) -> None:
        self.stages.append(measure)

    def read_regions(self) -> None:
        """The day's regional summary from the staged region_daily (rounded for display), and
        the bytes staged for the day."""
        if self.transformed is None:
            return
        self.bytes_staged = self.ctx.staging.sizes(self.ctx.run_date)
        staged = self.ctx.staging.read("region_daily", self.ctx.run_date)
        frame = staged.scan(REGION_DAILY_SCHEMA).collect()
        frame = frame.filter(pl.col("trip_date") == self.ctx.run_date).sort(
            "trip_count", "region", descending=[True, False]
        )
        self.regions = [
            {
                "region": row["region"],
                "trip_count": int(row["trip_count"]),
                "total_distance_km": round(float(row["total_distance_km"]), 2),
                "total_fare_usd": round(float(row["total_fare_usd"]), 2),
                "avg_fare_per_km": None
                if row["avg_fare_per_km"] is None
                else round(float(row["avg_fare_per_km"]), 2),
            }
            for row in frame.iter_rows(named=True)
        ]

    def fail(self, exc: BaseException) -> None:
        self.status = "failed"
        if isinstance(exc, TripflowError) and exc.kind != "checks":
            self.error = exc.as_dict()
        elif not isinstance(exc, TripflowError):
            self.error = {
                "kind": "internal",
                "message": library_message(exc),
                "file": None,
                "column": None,
                "row": None,
                "value": None,
            }

    @property
    def rows(self) -> dict[str, int]:
        return {
            "extracted": self.extracted.rows if self.extracted else 0,
            "quarantined": self.transformed.rows_quarantined if self.transformed else 0,
            "loaded": self.loaded.rows if self.loaded else 0,
        }

    def ledger(self, status: str) -> LedgerRow:
        ext, tr = self.extracted, self.transformed
        stage_sums: dict[str, Any] = {}
        if ext:
            stage_sums["raw"] = ext.checksums
        if tr:
            stage_sums.update(tr.checksums)
        if self.loaded:
            stage_sums["warehouse_staging"] = {
                "suffix": self.loaded.suffix,
                "rows": self.loaded.rows,
                "quarantine_rows": self.loaded.quarantine_rows,
                "region_rows": self.loaded.region_rows,
            }
        stage_sums["measures"] = self.stages
        stage_sums["bytes_staged"] = self.bytes_staged
        return LedgerRow(
            run_id=self.ctx.run_id,
            run_date=self.ctx.run_date,
            status=status,
            source=ext.source if ext else self.ctx.settings.source,
            source_fingerprint=ext.source_fingerprint if ext else "",
            format=self.ctx.settings.format,
            code_version=code_version(),
            pii_key_fingerprint=ext.pii_key_fingerprint if ext else "",
            rows_extracted=self.rows["extracted"],
            rows_quarantined=self.rows["quarantined"],
            rows_loaded=self.rows["loaded"],
            stages=stage_sums,
            checks=[c.as_dict() for c in self.checks],
            error=None if self.error is None else self.error["message"],
            started_at=self.started_at,
            finished_at=datetime.now(UTC).isoformat(),
        )

    def as_dict(self) -> dict[str, Any]:
        rows = self.rows
        reasons = dict(self.transformed.reasons) if self.transformed else dict.fromkeys(REASONS, 0)
        out: dict[str, Any] = {
            "run_id": self.ctx.run_id,
            "run_date": self.ctx.run_date.isoformat(),
            "status": self.status,
            "rows": rows,
            "quarantine_reasons": reasons,
            "quarantine_share": round(quarantine_share(rows["quarantined"], rows["extracted"]), 6),
            "regions": self.regions,
            "checks": [c.as_dict() for c in self.checks],
            "stages": self.stages,
            "source": self.extracted.source if self.extracted else self.ctx.settings.source,
            "staging": self.ctx.settings.staging,
            "warehouse": self.ctx.settings.warehouse,
            "quality": self.quality(),
            "flow_run_id": self.flow_run_id,
            "cost": run_cost(self.stages, self.ctx.settings, bytes_staged=self.bytes_staged),
        }
        if self.error is not None:
            out["error"] = self.error
        return out

    def quality(self) -> dict[str, Any]:
        ext, tr = self.extracted, self.transformed
        return {
            "rows_read": ext.total_read if ext else 0,
            "other_days": ext.other_days if ext else 0,
            "unattributed": ext.unattributed if ext else 0,
            "warnings": tr.warnings if tr else {},
            "quarantine_examples": tr.examples if tr else [],
            "source_read": ext.source_read if ext else {},
            "email_shaped_values": ext.email_shaped_values if ext else {},
        }
