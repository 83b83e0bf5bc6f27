"""``tripflow source …``: helpers around sources, for demos and benchmarks.

``tripflow source seed-postgres --date D --rows N`` fills a PostgreSQL table (default
``public.trips``) with N synthetic trips for day D, by ``COPY FROM STDIN``, and creates the table
and its index on ``pickup_ts`` if needed. The DSN comes from configuration: the Prefect ``Secret``
block ``postgres_dsn_block`` names, else ``TRIPFLOW_POSTGRES_DSN`` (never a flag, so it stays out of
shell history and process lists).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Annotated

import typer

from flows.terminal import command_group, console
from tasks.errors import TripflowError, UsageError

source_app = command_group("Source helpers: fill a PostgreSQL with trips for demos and benchmarks.")


@source_app.command("seed-postgres")
def seed_postgres(
    run_date: Annotated[
        datetime, typer.Option("--date", formats=["%Y-%m-%d"], help="The business day to fill.")
    ],
    rows: Annotated[int, typer.Option("--rows", help="How many trips.")] = 1_000_000,
    table: Annotated[
        str | None, typer.Option("--table", help="SCHEMA.TABLE (default: postgres_table).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Generator seed.")] = 42,
    riders: Annotated[
        int | None,
        typer.Option(
            "--riders",
            help="Distinct riders to draw from (default: one per 4 trips; >= --rows gives "
            "every trip its own rider).",
        ),
    ] = None,
    dsn_from_env: Annotated[
        bool,
        typer.Option(
            "--dsn-from-env",
            help="Read the DSN from configuration (postgres_dsn_block, else "
            "TRIPFLOW_POSTGRES_DSN), never from the command line (default).",
        ),
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Fill a PostgreSQL table with N realistic trips for one day (replacing that day's rows)."""
    from tasks.config import load_settings, postgres_dsn
    from tasks.sources.postgres import Target
    from tasks.sources.postgres import seed as seed_table

    try:
        settings = load_settings()
        dsn = postgres_dsn(settings)
        if not dsn:
            raise UsageError(
                "seed-postgres needs a DSN: a Prefect Secret block named by postgres_dsn_block "
                "(TRIPFLOW_POSTGRES_DSN_BLOCK), or TRIPFLOW_POSTGRES_DSN"
            )
        if rows < 0:
            raise UsageError(f"--rows must be >= 0, got {rows}")
        if riders is not None and riders < 1:
            raise UsageError(f"--riders must be >= 1, got {riders}")
        name = table or settings.postgres_table
        started = time.perf_counter()
        seed_table(
            dsn,
            run_date.date(),
            rows,
            table=name,
            timezone=settings.source_timezone,
            seed_value=seed,
            riders=riders,
        )
        seconds = time.perf_counter() - started
    except TripflowError as exc:
        console.print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(exc.exit_code) from None
    result = {
        "target": str(Target.of(dsn)),
        "table": name,
        "date": run_date.date().isoformat(),
        "rows": rows,
        "seconds": round(seconds, 2),
    }
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        console.print(
            f"seeded {rows:,} trips for {result['date']} into {name} at {result['target']} "
            f"in {seconds:.1f}s"
        )
