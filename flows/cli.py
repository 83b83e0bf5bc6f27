"""The ``tripflow`` command line: ``run`` one day, ``backfill`` a range.

Exit codes: 0 published; 1 a check failed (nothing published); 2 bad usage or a schema error;
3 infrastructure failed after its retries. With ``--json`` exactly one JSON object goes to stdout
and everything else to stderr.
"""

from __future__ import annotations

import os

# Prefect reads these when it is imported: no analytics (no DNS here), and a temporary local
# server that is allowed the time it needs to start on a fresh database.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from flows import render
from flows.governance_cli import governance_app
from flows.land_cli import land
from flows.ops_cli import ops_app
from flows.server_cli import server_app
from flows.source_cli import source_app
from flows.terminal import command_group, console
from tasks.errors import InternalError, TripflowError, library_message

app = command_group("tripflow: a day of trips from source to warehouse, published exactly once.")

DateOpt = Annotated[
    datetime | None,
    typer.Option("--date", formats=["%Y-%m-%d"], help="Business day; default yesterday."),
]
SourceOpt = Annotated[
    str | None,
    typer.Option(
        "--source",
        help="synthetic (default), sample, file:PATH, postgres[:SCHEMA.TABLE] or kafka:TOPIC.",
    ),
]
FormatOpt = Annotated[
    str | None, typer.Option("--format", help="File column mapping: trips or nyc-tlc-yellow.")
]
RowsOpt = Annotated[int | None, typer.Option("--rows", help="Synthetic trips per day.")]
StagingOpt = Annotated[
    str | None,
    typer.Option("--staging", help="Staging: a folder, s3://BUCKET/PREFIX or gs://BUCKET/PREFIX."),
]
WarehouseOpt = Annotated[
    str | None,
    typer.Option("--warehouse", help="duckdb:PATH, or block:NAME (a TripWarehouse block)."),
]
MinRowsOpt = Annotated[int | None, typer.Option("--min-rows", help="Fewest rows to publish.")]
#: Tags on every run started from the command line (the deployments set their own).
RUN_TAGS = ("tripflow", "daily-trip-etl")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


class _QuietExpectedErrors(logging.Filter):
    """Expected failures (schema errors, failed checks) are logged without a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TripflowError):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_tracebacks() -> None:
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", ""):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(_QuietExpectedErrors())


@contextlib.contextmanager
def _prefect_api() -> Iterator[None]:
    """Runs go to the local background server (started on first use), unless Prefect's settings
    name a server (``PREFECT_API_URL`` in the environment, profile or ``prefect.toml``) or
    ``TRIPFLOW_LOCAL_SERVER=0`` (then Prefect's temporary server, as before).

    On the local server a run starts no flow-run heartbeat thread unless Prefect's settings set
    ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY``: heartbeats serve an automation that marks silent runs
    crashed, and this server has none, while the thread, which sleeps in 1 s steps, is joined when
    the run ends: up to 1 s of every run's wait. A named server keeps Prefect's default."""
    from flows import local_server

    if local_server.disabled_reason() is not None:
        yield
        return
    # Where no settings file may name a server, a server that must start starts now, while
    # Prefect is imported (~2 s of the CLI's wait); Prefect's own settings still decide below.
    home = local_server.default_home()
    begun = None
    if not local_server.settings_files_may_name_a_server(Path.cwd(), home):
        with contextlib.suppress(OSError):
            begun = local_server.begin(home)
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        get_current_settings,
        temporary_settings,
    )

    settings = get_current_settings()
    if begun is not None and (settings.api.url or settings.home != home):
        local_server.stop(home)  # not wanted after all: Prefect's settings say otherwise
        begun = None
    if settings.api.url:
        yield
        return
    try:
        decision = local_server.ensure(settings.home, begun)
    except local_server.ServerError as exc:
        console.print(f"[yellow]warning:[/] {exc}; this run uses Prefect's temporary server")
        yield
        return
    state = decision.state
    if decision.reason != "running":
        console.print(
            f"Started the local Prefect server in the background: UI {state.url} "
            "(`tripflow server status`, `tripflow server stop`)"
        )
    os.environ["PREFECT_API_URL"] = state.api_url  # for any process this one starts
    updates: dict[Any, Any] = {PREFECT_API_URL: state.api_url}
    if "heartbeat_frequency" not in settings.flows.model_fields_set:
        updates[PREFECT_FLOWS_HEARTBEAT_FREQUENCY] = None
    with temporary_settings(updates):
        yield


def _settings_overrides(**values: Any) -> dict[str, Any]:
    from tasks.config import load_settings

    settings = load_settings(values)
    return {
        "source": settings.source,
        "source_format": settings.format,
        "rows": settings.rows,
        "staging": settings.staging,
        "warehouse": settings.warehouse,
        "min_rows": settings.min_rows,
    }


@app.command()
def run(
    run_date: DateOpt = None,
    source: SourceOpt = None,
    source_format: FormatOpt = None,
    rows: RowsOpt = None,
    staging: StagingOpt = None,
    warehouse: WarehouseOpt = None,
    min_rows: MinRowsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the pipeline for one business day."""
    report: dict[str, Any] = {}
    code = 0
    error: TripflowError | None = None
    from tasks.metrics import add_listener, remove_listener

    # Rows and rows/s per stage only on a terminal, never with --json.
    progress = render.StageLines(console, live=console.is_terminal and not as_json)
    add_listener(progress)
    stdout = sys.stdout
    api = contextlib.ExitStack()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            api.enter_context(_prefect_api())
            params = _settings_overrides(
                source=source,
                format=source_format,
                rows=rows,
                staging=staging,
                warehouse=warehouse,
                min_rows=min_rows,
            )
            from prefect import tags

            from flows.daily import daily_trip_etl

            _quiet_tracebacks()
            day = run_date.date() if run_date else None
            with tags(*RUN_TAGS):
                report = daily_trip_etl(run_date=day, **params)
    except TripflowError as exc:
        error, code = exc, exc.exit_code
        report = getattr(exc, "tripflow_report", None) or _bare_report(run_date, exc)
    except Exception as exc:  # a bug or an unexpected library failure: still one JSON object
        code = 3
        report = getattr(exc, "tripflow_report", None) or _bare_report(run_date, exc)
        # The traceback's frames, with the library's message withheld (it may quote input).
        withheld = InternalError(library_message(exc))
        from rich.traceback import Traceback  # here: ~50 ms of every call's start otherwise

        console.print(Traceback.from_exception(InternalError, withheld, exc.__traceback__))
    finally:
        remove_listener(progress)
    with api:
        if as_json:
            stdout.write(json.dumps(report, default=str) + "\n")
            stdout.flush()
        else:
            render.run_summary(console, report, error)
    raise typer.Exit(code)


def _bare_report(run_date: datetime | None, exc: BaseException) -> dict[str, Any]:
    """The report of a run that failed before the flow could build one (bad settings)."""
    error: dict[str, Any] = (
        exc.as_dict()
        if isinstance(exc, TripflowError)
        else {"kind": "internal", "message": library_message(exc)}
    )
    for key in ("file", "column", "row", "value"):
        error.setdefault(key, None)
    return {
        "run_date": run_date.date().isoformat() if run_date else None,
        "status": "failed",
        "rows": {"extracted": 0, "quarantined": 0, "loaded": 0},
        "quarantine_reasons": {},
        "regions": [],
        "checks": [],
        "stages": [],
        "error": error,
    }


@app.command()
def backfill(
    start: Annotated[datetime, typer.Option("--start", formats=["%Y-%m-%d"], help="First day.")],
    end: Annotated[
        datetime, typer.Option("--end", formats=["%Y-%m-%d"], help="Last day (inclusive).")
    ],
    source: SourceOpt = None,
    source_format: FormatOpt = None,
    rows: RowsOpt = None,
    staging: StagingOpt = None,
    warehouse: WarehouseOpt = None,
    min_rows: MinRowsOpt = None,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Days at once.")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Run one flow run per day from --start to --end; exit 1 if any day failed."""
    stdout = sys.stdout
    api = contextlib.ExitStack()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            api.enter_context(_prefect_api())
            params = _settings_overrides(
                source=source,
                format=source_format,
                rows=rows,
                staging=staging,
                warehouse=warehouse,
                min_rows=min_rows,
            )
            from prefect import tags

            from flows.backfill import backfill as backfill_flow

            _quiet_tracebacks()
            with tags(*RUN_TAGS, "backfill"):
                days = backfill_flow(
                    start=start.date(), end=end.date(), concurrency=concurrency, **params
                )
    except TripflowError as exc:
        api.close()
        console.print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(exc.exit_code) from None
    api.close()
    failed = [d for d in days if d.get("status") != "published"]
    if as_json:
        stdout.write(json.dumps({"days": days, "failed": [d["run_date"] for d in failed]}) + "\n")
    else:
        render.backfill_summary(console, days, params)
    raise typer.Exit(1 if failed else 0)


@app.command()
def report(
    last: Annotated[int, typer.Option("--last", help="How many recent runs.")] = 14,
    recommend: Annotated[
        bool, typer.Option("--recommend", help="Recommend each stage's memory request and limit.")
    ] = False,
    warehouse: WarehouseOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The last N runs from the ledger: rows, quarantine share, duration, cost, and a chart."""
    from tasks.chart import history_svg
    from tasks.config import load_settings
    from tasks.history import chart_path, per_day, recommendations, run_rows
    from tasks.warehouses import make_warehouse

    try:
        settings = load_settings({"warehouse": warehouse})
        runs = make_warehouse(settings.warehouse).recent_runs(last)
    except TripflowError as exc:
        console.print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(exc.exit_code) from None
    rows = run_rows(runs, settings)
    chart = chart_path(settings.warehouse)
    chart.parent.mkdir(parents=True, exist_ok=True)
    chart.write_text(history_svg(per_day(rows)), encoding="utf-8")
    recs = recommendations(runs) if recommend else []
    if as_json:
        out = {"runs": rows, "chart": str(chart), "recommendations": recs}
        sys.stdout.write(json.dumps(out, default=str) + "\n")
    else:
        render.history(console, rows, chart, recs if recommend else None)


app.command()(land)
app.add_typer(source_app, name="source")
app.add_typer(ops_app, name="automations")
app.add_typer(governance_app, name="governance")
app.add_typer(server_app, name="server")

if __name__ == "__main__":
    app()
