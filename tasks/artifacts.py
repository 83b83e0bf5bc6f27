"""What every run shows in the Prefect UI: its artifacts, and the ledger row of a failed run.

The regional summary, the quality report, the run ledger, the cost report (with right-sizing) and
a link to the chart of recent runs, under stable keys so the UI shows each one's history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE

from tasks import stages
from tasks.chart import history_svg
from tasks.config import Settings
from tasks.errors import TripflowError
from tasks.history import chart_path, per_day, recommendations, run_rows
from tasks.report import RunReport
from tasks.stages import RunContext
from tasks.warehouses import LedgerRow, make_warehouse


@task(name="record-failed-run", retries=1, cache_policy=NO_CACHE)
def record_failed_run(ctx: RunContext, ledger: LedgerRow) -> None:
    stages.record_run(ctx, ledger)


@task(name="publish-artifacts", retries=0, cache_policy=NO_CACHE)
def publish_artifacts(report: RunReport) -> None:
    """Every run explains itself in the UI, under stable keys (so each shows its history):
    the regional summary, the quality report, the run ledger, the cost report, and a link to the
    chart of recent runs."""
    day = report.ctx.run_date.isoformat()
    data = report.as_dict()
    if report.regions:
        create_table_artifact(
            key="regional-summary",
            table=report.regions,
            description=f"Regional summary for {day} ({report.status})",
        )
    create_markdown_artifact(
        key="quality-report", markdown=quality_markdown(report), description=f"Quality of {day}"
    )
    create_markdown_artifact(
        key="run-ledger", markdown=ledger_markdown(report), description=f"Run ledger of {day}"
    )
    runs = recent_runs(report.ctx.settings)
    create_markdown_artifact(
        key="cost-report",
        markdown=cost_markdown(data) + rightsizing_markdown(recommendations(runs or [])),
        description=f"Cost of {day}",
    )
    chart = write_history_chart(report.ctx.settings, runs)
    if chart is not None:
        create_link_artifact(
            key="run-history-chart",
            link=chart.resolve().as_uri(),
            link_text=f"Rows, duration and cost of recent days ({chart.name})",
        )


def recent_runs(settings: Settings, last: int = 30) -> list[dict[str, Any]] | None:
    """The ledger's latest runs; None (and a warning) when the warehouse cannot be read."""
    try:
        return make_warehouse(settings.warehouse).recent_runs(last)
    except TripflowError as exc:
        get_run_logger().warning("run history not read: %s", exc)
        return None


def write_history_chart(settings: Settings, runs: list[dict[str, Any]] | None) -> Path | None:
    """Draw the chart of recent runs next to the warehouse; None when it cannot be written."""
    if runs is None:
        return None
    try:
        path = chart_path(settings.warehouse)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(history_svg(per_day(run_rows(runs, settings))), encoding="utf-8")
    except (TripflowError, OSError) as exc:
        get_run_logger().warning("run history chart not written: %s", exc)
        return None
    return path


def ledger_markdown(report: RunReport) -> str:
    """Rows and checksums per stage: the proof of what was published, not just an exit code."""
    ledger = report.ledger(report.status)
    lines = [
        f"# Run ledger: {ledger.run_date} ({ledger.status})",
        "",
        f"- run: `{ledger.run_id}`",
        f"- source: `{ledger.source}` (fingerprint `{ledger.source_fingerprint}`)",
        f"- code: {ledger.code_version}; PII key fingerprint `{ledger.pii_key_fingerprint}`",
        f"- rows: {ledger.rows_extracted:,} extracted, {ledger.rows_quarantined:,} quarantined, "
        f"{ledger.rows_loaded:,} loaded",
        "",
        "| stage | rows | checksums |",
        "|---|---|---|",
    ]
    for stage, sums in ledger.stages.items():
        if isinstance(sums, dict):
            rows = sums.get("rows", "")
            rest = ", ".join(f"{k}={v}" for k, v in sums.items() if k != "rows")
            lines.append(f"| {stage} | {rows} | {rest} |")
    return "\n".join(lines) + "\n"


def rightsizing_markdown(recs: list[dict[str, Any]]) -> str:
    """Memory request and limit per stage from the peaks of recent published runs."""
    if not recs:
        return "\n## Right-sizing\n\nNo published runs to size from yet.\n"
    lines = [
        "",
        f"## Right-sizing (from the last {max(r['runs'] for r in recs)} published runs)",
        "",
        "| stage | max peak MiB | memory request | memory limit | requested now |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['stage']} | {r['max_peak_mib']:.0f} | {r['memory_request']} | "
        f"{r['memory_limit']} | {r['current_request']} |"
        for r in recs
    ]
    return "\n".join(lines) + "\n"


def cost_markdown(data: dict[str, Any]) -> str:
    cost = data["cost"]
    lines = [
        f"# Cost and resources: {data['run_date']}",
        "",
        "| stage | seconds | CPU s | peak MiB | peak measured by | pod (CPU / GiB) "
        "| estimated USD |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in cost["stages"]:
        if s["requested_cpu"] is None:
            pod = "no pod (costed by use)"
        else:
            where = " spot" if s["on_spot"] else ""
            pod = f"{s['requested_cpu']:g} / {s['requested_memory_gib']:g}{where}"
        lines.append(
            f"| {s['name']} | {s['seconds']:.2f} | {s['cpu_seconds'] or 0:.2f} | "
            f"{s['peak_rss_mb']:.0f} | {s.get('peak_rss_method') or 'not recorded'} | "
            f"{pod} | ${s['usd']:.6f} |"
        )
    lines += [
        "",
        "- peak measured by: VmHWM = the stage's own peak (the kernel's high-water mark, reset "
        "when the stage starts); ru_maxrss = the process's peak since it started (the reset was "
        "not allowed here), an upper bound for the stage",
        f"- bytes staged: {cost['bytes_staged']:,}",
        f"- warehouse bytes processed / billed: {cost['warehouse_bytes_processed']} / "
        f"{cost['warehouse_bytes_billed']} (None: this warehouse reports no bytes)",
        f"- estimated total: ${cost['total_usd']:.6f} (compute on-demand would be "
        f"${cost['compute_on_demand_usd']:.6f}); the seed's always-on pods: "
        f"${cost['seed_daily_usd']:,.2f} a day",
    ]
    return "\n".join(lines) + "\n"


def quality_markdown(report: RunReport) -> str:
    data = report.as_dict()
    rows = data["rows"]
    lines = [
        f"# Quality report: {data['run_date']} ({data['status']})",
        "",
        f"Source: `{data['source']}`",
        "",
        f"Rows: {rows['extracted']:,} extracted, {rows['quarantined']:,} quarantined, "
        f"{rows['loaded']:,} loaded (quarantine share {data['quarantine_share']:.2%}).",
        "",
        "## Checks",
        "",
        "| check | passed | detail |",
        "|---|---|---|",
        *[
            f"| {c['name']} | {'yes' if c['passed'] else '**NO**'} | {c['detail']} |"
            for c in data["checks"]
        ],
        "",
        "## Quarantine by reason",
        "",
        "| reason | rows |",
        "|---|---|",
        *[f"| {k} | {v:,} |" for k, v in data["quarantine_reasons"].items()],
        "",
        "## Other figures",
        "",
        *[f"- {k}: {v}" for k, v in data["quality"].items() if k != "quarantine_examples"],
    ]
    examples = data["quality"]["quarantine_examples"]
    if examples:
        cols = [
            "trip_id",
            "reasons",
            "distance_km",
            "fare_usd",
            "region",
            "_source_file",
            "_source_row",
        ]
        lines += [
            "",
            "## Example quarantined rows (PII hashed)",
            "",
            "| " + " | ".join(cols) + " |",
        ]
        lines.append("|" + "---|" * len(cols))
        lines += ["| " + " | ".join(str(e.get(c)) for c in cols) + " |" for e in examples]
    if "error" in data:
        lines += ["", "## Error", "", f"`{data['error']['kind']}`: {data['error']['message']}"]
    return "\n".join(lines) + "\n"
