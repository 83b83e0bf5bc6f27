"""Cost and right-sizing: pure arithmetic over measured stage figures and configured prices.

Each stage runs (on the Kubernetes pool) in a pod of its own with the requests below — the seed's
sizes, which the deployments in ``prefect.yaml`` use too. A stage's estimated cost is its wall time
times its pod's requested CPU and memory at the configured prices, on-demand, and on spot where the
stage is placed there (transform). Right-sizing reads the peak memory of recent runs, measured for a
stage's whole process (Python, Prefect, Polars and DuckDB included).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from tasks.config import Settings


@dataclass(frozen=True)
class PodSize:
    cpu: float
    memory_gib: float
    spot: bool = False


#: The pod each stage asks for (the seed's sizes; publish runs in the load pod's size).
STAGE_REQUESTS: Final[dict[str, PodSize]] = {
    "extract": PodSize(0.5, 1.0),
    "transform": PodSize(2.0, 8.0, spot=True),
    "load": PodSize(0.5, 0.5),
    "validate": PodSize(0.2, 0.25),
    "publish": PodSize(0.5, 0.5),
}

#: The seed's always-on CronJob pods, for comparison: 12 pods of 16 GB, $6,800 a month.
SEED_MONTHLY_USD: Final = 6800.0
DAYS_PER_MONTH: Final = 30.4


def stage_cost(measure: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """One stage's pod-hours and estimated dollars, on-demand and (where it runs there) on spot."""
    size = STAGE_REQUESTS.get(str(measure["name"]), PodSize(0.5, 1.0))
    hours = float(measure["seconds"]) / 3600
    on_demand = hours * (
        size.cpu * settings.price_vcpu_hour + size.memory_gib * settings.price_gib_hour
    )
    spot = on_demand * settings.spot_price_fraction
    return {
        "name": measure["name"],
        "seconds": measure["seconds"],
        "cpu_seconds": measure.get("cpu_seconds"),
        "peak_rss_mb": measure["peak_rss_mb"],
        # VmHWM (the stage's own peak) or ru_maxrss (the process's since start); None: not recorded
        "peak_rss_method": measure.get("peak_rss_method"),
        "requested_cpu": size.cpu,
        "requested_memory_gib": size.memory_gib,
        "on_spot": size.spot,
        "on_demand_usd": round(on_demand, 8),
        "usd": round(spot if size.spot else on_demand, 8),
    }


def run_cost(
    stages: Iterable[Mapping[str, Any]],
    settings: Settings,
    *,
    bytes_staged: int,
    warehouse_bytes_processed: int | None = None,
    warehouse_bytes_billed: int | None = None,
) -> dict[str, Any]:
    """The run's cost report: per stage, bytes staged, warehouse bytes and an estimated total.

    Warehouse bytes not given are the sum of what the stages' measures report (None when none
    of them does: DuckDB, Redshift and Snowflake report no bytes)."""
    stages = list(stages)
    if warehouse_bytes_processed is None:
        warehouse_bytes_processed = _sum_of(stages, "warehouse_bytes_processed")
    if warehouse_bytes_billed is None:
        warehouse_bytes_billed = _sum_of(stages, "warehouse_bytes_billed")
    per_stage = [stage_cost(m, settings) for m in stages]
    warehouse_usd = (
        0.0
        if warehouse_bytes_billed is None
        else warehouse_bytes_billed / 1e12 * settings.price_tb_scanned
    )
    compute = sum(s["usd"] for s in per_stage)
    return {
        "stages": per_stage,
        "bytes_staged": bytes_staged,
        "warehouse_bytes_processed": warehouse_bytes_processed,
        "warehouse_bytes_billed": warehouse_bytes_billed,
        "compute_usd": round(compute, 8),
        "compute_on_demand_usd": round(sum(s["on_demand_usd"] for s in per_stage), 8),
        "warehouse_usd": round(warehouse_usd, 8),
        "total_usd": round(compute + warehouse_usd, 8),
        "seed_daily_usd": round(SEED_MONTHLY_USD / DAYS_PER_MONTH, 2),
        "prices": {
            "vcpu_hour": settings.price_vcpu_hour,
            "gib_hour": settings.price_gib_hour,
            "spot_fraction": settings.spot_price_fraction,
            "tb_scanned": settings.price_tb_scanned,
        },
    }


def _sum_of(stages: list[Mapping[str, Any]], key: str) -> int | None:
    values = [int(m[key]) for m in stages if m.get(key) is not None]
    return sum(values) if values else None


def _round_up(mib: float, step: int) -> int:
    return int(math.ceil(mib / step) * step)


def recommend(peaks_by_stage: Mapping[str, list[float]]) -> list[dict[str, Any]]:
    """Memory request and limit per stage from the peaks (MiB) of recent runs.

    Request: the largest recent peak plus 25% headroom, rounded up to 64 MiB; limit: the largest
    peak plus 50%, rounded up to 128 MiB (a limit below a real peak is an OOM kill waiting to
    happen, one far above it is the seed's 16 GB guesswork).
    """
    out = []
    for stage in STAGE_REQUESTS:
        peaks = peaks_by_stage.get(stage, [])
        if not peaks:
            continue
        top = max(peaks)
        out.append(
            {
                "stage": stage,
                "runs": len(peaks),
                "max_peak_mib": round(top, 1),
                "memory_request": f"{_round_up(top * 1.25, 64)}Mi",
                "memory_limit": f"{_round_up(top * 1.5, 128)}Mi",
                "current_request": f"{STAGE_REQUESTS[stage].memory_gib:g}Gi",
            }
        )
    return out
