"""``tripflow land``: stage a day's raw files now, and tell Prefect with ``tripflow.raw.landed``.

The ``daily-trip-etl`` deployment's trigger then runs the day from the landed raw folder
(``landed_run_id``), so the day is processed minutes after its files arrive, not at 06:00.
"""

from __future__ import annotations

import contextlib
import json
import sys
import uuid
from datetime import datetime
from typing import Annotated

import typer

from flows.terminal import console
from tasks.errors import TripflowError


def land(
    run_date: Annotated[
        datetime, typer.Option("--date", formats=["%Y-%m-%d"], help="The business day.")
    ],
    source: Annotated[
        str | None, typer.Option("--source", help="What to read, e.g. file:/landing/D/*.csv.")
    ] = None,
    source_format: Annotated[
        str | None, typer.Option("--format", help="trips or nyc-tlc-yellow.")
    ] = None,
    staging: Annotated[str | None, typer.Option("--staging", help="Staging folder or URL.")] = None,
    emit: Annotated[
        bool, typer.Option("--emit/--no-emit", help="Emit tripflow.raw.landed (default).")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the event as JSON.")] = False,
) -> None:
    """Extract one day into staging/raw and emit tripflow.raw.landed for the daily trigger."""
    from tasks.config import load_settings
    from tasks.landing import land as land_day
    from tasks.stages import RunContext

    stdout = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr):
            settings = load_settings(
                {"source": source, "format": source_format, "staging": staging}
            )
            ctx = RunContext.create(f"land-{uuid.uuid4()}", run_date.date(), settings)
            out, event = land_day(ctx)
            if emit:
                from prefect.events import emit_event
                from prefect.events.worker import EventsWorker

                from flows.cli import _prefect_api  # here: flows.cli imports this module

                # To the server `tripflow run` uses: the local background one unless a server
                # is configured (else a temporary server would take the event and exit with it).
                with _prefect_api():
                    if emit_event(**event) is None:
                        console.print("[yellow]warning:[/] events are disabled: nothing emitted")
                    EventsWorker.drain_all(timeout=30)  # sent before the process exits
    except TripflowError as exc:
        console.print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(exc.exit_code) from None
    if as_json:
        stdout.write(json.dumps(event) + "\n")
    else:
        console.print(
            f"landed {out.rows:,} trips of {ctx.run_date} in {ctx.settings.staging} "
            f"(landing {ctx.run_id}); {'emitted' if emit else 'not emitted'} {event['event']}"
        )
