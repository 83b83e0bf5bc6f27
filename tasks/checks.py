"""The validate checks: pure decisions over figures measured in the warehouse and in staging.

Names are part of the JSON contract: min_rows, quarantine_share, unique_trip_id,
reconcile_staging, region_totals, volume_7d.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from tasks.warehouses.base import Figures

#: volume_7d needs at least this many published days in D-7..D-1.
MIN_HISTORY_DAYS = 3
#: volume_7d fails below this fraction of the recent mean.
VOLUME_FLOOR = 0.5


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def quarantine_share(quarantined: int, extracted: int) -> float:
    """The share of the day's extracted rows that were quarantined (0 when none were read)."""
    return quarantined / extracted if extracted else 0.0


def run_checks(
    figures: Figures,
    *,
    min_rows: int,
    extracted: int,
    quarantined: int,
    threshold: float,
    staged_rows: int,
    staged_fare_usd_sum: Decimal,
) -> list[CheckResult]:
    """Every check, in the contract's order."""
    share = quarantine_share(quarantined, extracted)
    results = [
        CheckResult(
            "min_rows",
            figures.rows >= min_rows,
            f"{figures.rows:,} rows loaded, at least {min_rows:,} required",
        ),
        CheckResult(
            "quarantine_share",
            share <= threshold,
            f"{quarantined:,} of {extracted:,} rows quarantined ({share:.2%}), "
            f"threshold {threshold:.2%}",
        ),
        CheckResult(
            "unique_trip_id",
            figures.duplicate_trip_ids == 0,
            f"{figures.duplicate_trip_ids:,} duplicate trip_id values in the day's partition",
        ),
        CheckResult(
            "reconcile_staging",
            figures.rows == staged_rows and figures.fare_usd_sum == staged_fare_usd_sum,
            f"staged {staged_rows:,} rows / ${staged_fare_usd_sum:,.2f}; "
            f"warehouse {figures.rows:,} rows / ${figures.fare_usd_sum:,.2f}",
        ),
        CheckResult(
            "region_totals",
            not figures.region_mismatches,
            "region_daily matches trip-level totals"
            if not figures.region_mismatches
            else "region_daily differs from trips for: " + ", ".join(figures.region_mismatches),
        ),
        volume_check(figures.rows, list(figures.history.values())),
    ]
    return results


def volume_check(rows: int, history: list[int]) -> CheckResult:
    """Rows below half the mean of the published days D-7..D-1 fail ("dashboards showed zeros")."""
    if len(history) < MIN_HISTORY_DAYS:
        return CheckResult(
            "volume_7d",
            True,
            f"insufficient history: {len(history)} published day(s) in D-7..D-1, "
            f"{MIN_HISTORY_DAYS} needed",
        )
    mean = sum(history) / len(history)
    floor = VOLUME_FLOOR * mean
    return CheckResult(
        "volume_7d",
        rows >= floor,
        f"{rows:,} rows vs mean {mean:,.0f} of {len(history)} recent day(s); floor {floor:,.0f}",
    )
