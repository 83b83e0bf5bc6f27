"""What ``tripflow`` prints on the terminal (stderr): the regional summary, counts, checks, where
the data went and how to see the run in the Prefect UI."""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from tasks.errors import TripflowError


def _num(value: float) -> str:
    """34.2 -> '34.2', 100.0 -> '100', 51.4 -> '51.4' (at most two decimals)."""
    text = f"{value:,.2f}".rstrip("0").rstrip(".")
    return text or "0"


def rate(rows: int, seconds: float) -> str:
    """1_234_567 rows in 1 s -> '1.23M rows/s'."""
    per_s = rows / seconds if seconds > 0 else 0.0
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f}M rows/s"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.0f}k rows/s"
    return f"{per_s:.0f} rows/s"


class StageLines:
    """The stage lines of ``tripflow run`` (a ``tasks.metrics`` listener): ``▶``/``✓`` per stage.

    With ``live`` (stderr is a terminal and the output is not ``--json``) a stage shows the rows it
    has written and its rows/s while it runs, and its ``✓`` line ends with both.
    """

    def __init__(self, console: Console, live: bool) -> None:
        self.console = console
        self.live = live
        self._lock = threading.Lock()
        self._rows: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self._progress: Progress | None = None
        self._task: dict[str, TaskID] = {}

    def __call__(self, event: str, stage: str, info: dict[str, object]) -> None:
        with self._lock:
            if event == "start":
                self._start(stage)
            elif event == "rows":
                self._advance(stage, int(info["rows"]))  # type: ignore[call-overload]
            elif event == "end":
                self._end(stage, info)

    def _start(self, stage: str) -> None:
        self._rows[stage] = 0
        self._started[stage] = time.perf_counter()
        if not self.live:
            self.console.print(f"[bold cyan]▶[/] {stage} …")
            return
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TextColumn("{task.fields[rows]:>12,} rows"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
        self._task[stage] = self._progress.add_task(stage, total=None, rows=0, rate="")

    def _advance(self, stage: str, rows: int) -> None:
        self._rows[stage] = self._rows.get(stage, 0) + rows
        if self._progress is not None and stage in self._task:
            done = self._rows[stage]
            seconds = time.perf_counter() - self._started.get(stage, time.perf_counter())
            self._progress.update(
                self._task[stage], rows=done, rate=rate(done, seconds), refresh=True
            )

    def _end(self, stage: str, info: dict[str, object]) -> None:
        if self._progress is not None and stage in self._task:
            self._progress.remove_task(self._task.pop(stage))
            if not self._task:
                self._progress.stop()
                self._progress = None
        seconds = float(info["seconds"])  # type: ignore[arg-type]
        if info.get("failed"):
            self.console.print(f"[bold red]✗[/] {stage} failed after {seconds:.2f}s")
            return
        line = f"[bold green]✓[/] {stage} {seconds:.2f}s, peak {info['peak_rss_mb']:.0f} MiB"
        rows = self._rows.get(stage, 0)
        if self.live and rows:
            line += f", {rows:,} rows, {rate(rows, seconds)}"
        self.console.print(line)


def region_table(regions: list[dict[str, Any]]) -> Table:
    table = Table(title="Regional summary", title_justify="left")
    for name in ("region", "trips", "distance", "fare", "fare per km"):
        table.add_column(name, justify="left" if name == "region" else "right")
    for r in regions:
        per_km = "-" if r["avg_fare_per_km"] is None else f"${r['avg_fare_per_km']:,.2f}/km"
        table.add_row(
            r["region"],
            f"{r['trip_count']:,} trips",
            f"{_num(r['total_distance_km'])} km",
            f"${r['total_fare_usd']:,.2f}",
            per_km,
        )
    return table


def run_summary(console: Console, report: dict[str, Any], error: TripflowError | None) -> None:
    status = report.get("status", "failed")
    day = report.get("run_date")
    if report.get("regions"):
        console.print(region_table(report["regions"]))
    rows = report.get("rows", {})
    if rows:
        console.print(
            f"Rows: {rows.get('extracted', 0):,} extracted, {rows.get('quarantined', 0):,} "
            f"quarantined, {rows.get('loaded', 0):,} loaded"
        )
    reasons = {k: v for k, v in report.get("quarantine_reasons", {}).items() if v}
    if reasons:
        console.print(
            "Quarantined by reason: " + ", ".join(f"{k} {v:,}" for k, v in reasons.items())
        )
    if report.get("checks"):
        checks = Table(title="Checks", title_justify="left")
        checks.add_column("check")
        checks.add_column("result")
        checks.add_column("detail")
        for c in report["checks"]:
            mark = "[green]pass[/]" if c["passed"] else "[bold red]FAIL[/]"
            checks.add_row(c["name"], mark, c["detail"])
        console.print(checks)
    cost = report.get("cost")
    if cost:
        console.print(
            f"Estimated cost: ${cost['total_usd']:.6f} for {len(cost['stages'])} stage pod(s) "
            f"(the seed's always-on pods: ${cost['seed_daily_usd']:,.2f} a day); "
            f"{cost['bytes_staged']:,} bytes staged"
        )
    if "error" in report:
        err = report["error"]
        console.print(f"[bold red]{err['kind']} error:[/] {err['message']}")
    if report.get("warehouse"):
        console.print(
            f"Warehouse: {report['warehouse']}  (tables analytics.trips, "
            "analytics.region_daily, analytics.trips_quarantine, analytics.runs)"
        )
        console.print(
            f"Staging:   {report['staging']}/{{raw,clean,quarantine,region_daily}}/date={day}/"
        )
    _ui_hint(console, report.get("flow_run_id"))
    colour = "green" if status == "published" else "red"
    console.print(f"[bold {colour}]{day}: {status}[/]")


def _ui_hint(console: Console, flow_run_id: str | None) -> None:
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    ui = settings.ui_url
    if settings.api.url and ui and flow_run_id:
        console.print(f"Prefect UI: {ui}/runs/flow-run/{flow_run_id}")
    elif not settings.api.url:
        console.print(
            "Prefect UI: this run used Prefect's temporary server, which kept nothing "
            "(TRIPFLOW_LOCAL_SERVER is off, or the local server did not start). Otherwise tripflow "
            "starts a local server once and keeps the runs in its UI (`tripflow server status`)."
        )


def backfill_summary(console: Console, days: list[dict[str, Any]], params: dict[str, Any]) -> None:
    table = Table(title="Backfill", title_justify="left")
    for name in ("day", "status", "extracted", "quarantined", "loaded", "note"):
        table.add_column(name)
    for d in days:
        rows = d.get("rows", {})
        note = d.get("message", "")
        colour = "green" if d.get("status") == "published" else "red"
        table.add_row(
            d["run_date"],
            f"[{colour}]{d.get('status')}[/]",
            f"{rows.get('extracted', 0):,}",
            f"{rows.get('quarantined', 0):,}",
            f"{rows.get('loaded', 0):,}",
            note,
        )
    console.print(table)
    failed = [d["run_date"] for d in days if d.get("status") != "published"]
    if failed:
        console.print(f"[bold red]{len(failed)} day(s) failed[/]; re-run one alone with:")
        for day in failed:
            console.print(f"  tripflow run --date {day} --source {params['source']}")
    else:
        console.print(f"[bold green]all {len(days)} day(s) published[/]")


def history(
    console: Console,
    rows: list[dict[str, Any]],
    chart: Any,
    recommendations: list[dict[str, Any]] | None,
) -> None:
    table = Table(title=f"Last {len(rows)} run(s)", title_justify="left")
    for name in ("day", "status", "rows", "quarantined", "duration", "est. cost", "note"):
        table.add_column(name, justify="left" if name in ("day", "status", "note") else "right")
    for r in rows:
        colour = "green" if r["status"] == "published" else "red"
        note = ", ".join(r["failed_checks"]) or (r["error"] or "")
        table.add_row(
            r["run_date"],
            f"[{colour}]{r['status']}[/]",
            f"{r['rows']:,}",
            f"{r['quarantine_share']:.2%}",
            f"{r['seconds']:.1f}s",
            f"${r['usd']:.6f}",
            note[:60],
        )
    console.print(table)
    console.print(f"Chart (rows, duration, cost per day): {chart}")
    if recommendations is None:
        return
    recs = Table(title="Right-sizing (Kubernetes job variables)", title_justify="left")
    for name in ("stage", "runs", "max peak", "memory request", "memory limit", "now requested"):
        recs.add_column(name)
    for r in recommendations:
        recs.add_row(
            r["stage"],
            str(r["runs"]),
            f"{r['max_peak_mib']:.0f} MiB",
            r["memory_request"],
            r["memory_limit"],
            r["current_request"],
        )
    console.print(recs if recommendations else "No published runs to size from yet.")
