"""What ``tripflow report`` shows: recent runs from the ledger, their cost, and right-sizing.

Pure functions over ledger rows (``Warehouse.recent_runs``); the CLI and the flow do the I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.checks import quarantine_share
from tasks.config import Settings
from tasks.cost import current_requests, recommend, run_cost

CHART_FILE = "tripflow-report.svg"


def run_rows(runs: Sequence[dict[str, Any]], settings: Settings) -> list[dict[str, Any]]:
    """One row per run (newest first): rows, quarantine share, duration and estimated cost."""
    rows = []
    for run in runs:
        measures = run["stages"].get("measures", [])
        cost = run_cost(measures, settings, bytes_staged=int(run["stages"].get("bytes_staged", 0)))
        rows.append(
            {
                "run_id": run["run_id"],
                "run_date": str(run["run_date"]),
                "status": run["status"],
                "rows": int(run["rows_loaded"]),
                "extracted": int(run["rows_extracted"]),
                "quarantine_share": quarantine_share(
                    int(run["rows_quarantined"]), int(run["rows_extracted"])
                ),
                "seconds": round(sum(float(m["seconds"]) for m in measures), 3),
                "usd": cost["total_usd"],
                "failed_checks": [c["name"] for c in run["checks"] if not c["passed"]],
                "error": run["error"],
            }
        )
    return rows


def per_day(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest run of each day, oldest day first (what the chart draws)."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:  # newest first: keep the first seen per day
        latest.setdefault(row["run_date"], row)
    return [latest[d] for d in sorted(latest)]


def stage_peaks(runs: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Peak memory (MiB) per stage over the given runs' measures."""
    peaks: dict[str, list[float]] = {}
    for run in runs:
        for m in run["stages"].get("measures", []):
            peaks.setdefault(str(m["name"]), []).append(float(m["peak_rss_mb"]))
    return peaks


def recommendations(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Memory requests and limits per stage from the peaks of recent published runs."""
    published = [r for r in runs if r["status"] == "published"]
    measures = [m for r in published for m in r["stages"].get("measures", [])]
    return recommend(stage_peaks(published), current_requests(measures))


def chart_path(warehouse_spec: str) -> Path:
    """Where the chart goes: next to the warehouse file (or in the working folder)."""
    kind, _, rest = warehouse_spec.partition(":")
    if kind == "duckdb" and rest:
        return Path(rest).parent / CHART_FILE
    return Path(CHART_FILE)
