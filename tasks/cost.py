"""Cost and right-sizing: pure arithmetic over measured stage figures and configured prices.

On the Kubernetes pool each stage runs in a pod of its own, and its measure carries that pod's
requests and capacity as the pod learned them from its Job (the downward API, ``tasks.pod``): the
sizes in ``prefect.yaml`` are the only copy. Publish runs in the daily run's pod and is costed at
that pod's size. A stage's estimated cost is its wall time times its pod's requested CPU and
memory at the configured prices, on-demand, or on spot where the pod was placed there. A stage
that ran in no pod (``tripflow run`` on a laptop) is costed by what it used (its CPU seconds and
peak memory for its wall time) and says so (``basis``). Right-sizing reads the peak memory of
recent runs, measured for a stage's whole process (Python, Prefect, Polars and DuckDB included).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

from tasks.config import Settings

#: The stages, in the order they run (the right-sizing table's order).
STAGES: Final = ("extract", "transform", "load", "validate", "publish")

#: The seed's always-on CronJob pods, for comparison: 12 pods of 16 GB, $6,800 a month.
SEED_MONTHLY_USD: Final = 6800.0
DAYS_PER_MONTH: Final = 30.4
#: ``basis`` of a stage costed by its pod's requests, or (no pod) by what it used.
POD_REQUESTS: Final = "pod requests"
MEASURED_USE: Final = "measured use (not in a pod)"


def stage_cost(measure: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """One stage's pod-hours and estimated dollars, on-demand and (where it ran there) on spot."""
    hours = float(measure["seconds"]) / 3600
    pod = measure.get("pod")
    if pod:
        cpu, memory_gib, spot = (
            float(pod["cpu_request"]),
            float(pod["memory_request_gib"]),
            bool(pod["spot"]),
        )
        basis = POD_REQUESTS
        on_demand = hours * (cpu * settings.price_vcpu_hour + memory_gib * settings.price_gib_hour)
    else:
        cpu, memory_gib, spot = None, None, False
        basis = MEASURED_USE
        cpu_hours = float(measure.get("cpu_seconds") or 0) / 3600
        peak_gib = float(measure["peak_rss_mb"]) / 1024
        on_demand = (
            cpu_hours * settings.price_vcpu_hour + hours * peak_gib * settings.price_gib_hour
        )
    spot_usd = on_demand * settings.spot_price_fraction
    return {
        "name": measure["name"],
        "seconds": measure["seconds"],
        "cpu_seconds": measure.get("cpu_seconds"),
        "peak_rss_mb": measure["peak_rss_mb"],
        # VmHWM (the stage's own peak) or ru_maxrss (the process's since start); None: not recorded
        "peak_rss_method": measure.get("peak_rss_method"),
        "basis": basis,
        "requested_cpu": cpu,
        "requested_memory_gib": memory_gib,
        "on_spot": spot,
        "on_demand_usd": round(on_demand, 8),
        "usd": round(spot_usd if spot else on_demand, 8),
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


def current_requests(measures: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Each stage's memory request as the pod it ran in last reported it (newest first)."""
    out: dict[str, str] = {}
    for m in measures:
        pod = m.get("pod")
        name = str(m["name"])
        if name not in out:
            out[name] = (
                f"{_round_up(float(pod['memory_request_gib']) * 1024, 1)}Mi" if pod else ("no pod")
            )
    return out


def recommend(
    peaks_by_stage: Mapping[str, list[float]], requested: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Memory request and limit per stage from the peaks (MiB) of recent runs.

    Request: the largest recent peak plus 25% headroom, rounded up to 64 MiB; limit: the largest
    peak plus 50%, rounded up to 128 MiB (a limit below a real peak is an OOM kill waiting to
    happen, one far above it is the seed's 16 GB guesswork). ``requested``: what each stage's pod
    requests now (``current_requests``); "no pod" where it ran in none.
    """
    out = []
    for stage in STAGES:
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
                "current_request": (requested or {}).get(stage, "no pod"),
            }
        )
    return out
