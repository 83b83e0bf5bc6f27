"""``tripflow governance …``: least-privilege SQL for a warehouse, from the one declaration.

``tripflow governance grants --target redshift`` prints the statements (one per line, in order)
on stdout, so they can be reviewed, diffed or piped to the warehouse's own client. Notes about
what SQL cannot do on a target (BigQuery's project-level jobUser binding, authorizing views) go
to stderr. ``--apply-postgres`` runs the PostgreSQL dialect of the Redshift statements in one
transaction on the database named by ``TRIPFLOW_GOVERNANCE_DSN`` (never a flag: a DSN can hold a
password, and flags end up in shell history and process lists) and prints what it ran.
``tripflow governance roles`` shows the declaration itself.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Literal

import typer
from rich.markup import escape

from flows.terminal import command_group, console
from tasks.errors import TripflowError, UsageError

governance_app = command_group(
    "Governance as code: least-privilege roles, grants and row/column policies per warehouse."
)

DSN_ENV = "TRIPFLOW_GOVERNANCE_DSN"

TargetName = Literal["bigquery", "redshift", "snowflake", "postgres"]


@governance_app.command("grants")
def grants(
    target: Annotated[
        TargetName,
        typer.Option(
            "--target",
            help="bigquery, redshift, snowflake, or postgres (the Redshift SQL in PostgreSQL's "
            "dialect).",
        ),
    ],
    schema: Annotated[
        str, typer.Option("--schema", help="Dataset or schema of the published tables.")
    ] = "analytics",
    staging_schema: Annotated[
        str | None,
        typer.Option(
            "--staging-schema",
            help="Redshift/PostgreSQL: where the ETL writer creates staging tables (default: "
            "SCHEMA_staging, as the Redshift warehouse).",
        ),
    ] = None,
    principal: Annotated[
        list[str] | None,
        typer.Option(
            "--principal",
            help="ROLE=PRINCIPAL, repeatable: a user name (Redshift, PostgreSQL, Snowflake) or "
            "an IAM member such as serviceAccount:NAME@PROJECT.iam.gserviceaccount.com.",
        ),
    ] = None,
    project: Annotated[str | None, typer.Option("--project", help="BigQuery project.")] = None,
    location: Annotated[
        str, typer.Option("--location", help="BigQuery location of the views' dataset.")
    ] = "US",
    database: Annotated[str | None, typer.Option("--database", help="Snowflake database.")] = None,
    warehouse: Annotated[
        str | None, typer.Option("--warehouse", help="Snowflake virtual warehouse to grant.")
    ] = None,
    stage: Annotated[
        str | None, typer.Option("--stage", help="Snowflake external stage the writer loads from.")
    ] = None,
    apply_postgres: Annotated[
        bool,
        typer.Option(
            "--apply-postgres",
            help=f"Apply the PostgreSQL dialect in one transaction on ${DSN_ENV}.",
        ),
    ] = False,
) -> None:
    """Print (and optionally apply on PostgreSQL) the grants for one warehouse target."""
    from tasks.governance import apply_postgres as apply
    from tasks.governance import grants_sql, notes, parse_principals

    try:
        principals = parse_principals(principal or [])
        statements = grants_sql(
            target,
            schema=schema,
            staging_schema=staging_schema,
            principals=principals,
            project=project,
            location=location,
            database=database,
            warehouse=warehouse,
            stage=stage,
        )
        applied = None
        if apply_postgres:
            if target not in ("redshift", "postgres"):
                raise UsageError("--apply-postgres applies the redshift/postgres grants only")
            dsn = os.environ.get(DSN_ENV)
            if not dsn:
                raise UsageError(f"--apply-postgres needs {DSN_ENV} (a libpq DSN or URL)")
            # What runs is the PostgreSQL dialect, and that is what is printed.
            statements = grants_sql(
                "postgres", schema=schema, staging_schema=staging_schema, principals=principals
            )
            applied = apply(dsn, statements)
    except TripflowError as exc:
        # The message can quote configuration (a refused principal): never read as markup.
        console.print(f"[bold red]error:[/] {escape(exc.message)}")
        raise typer.Exit(exc.exit_code) from None
    sys.stdout.write("".join(statement + "\n" for statement in statements))
    for note in notes(target, schema=schema, project=project, principals=principals):
        console.print(f"[yellow]note:[/] {escape(note)}")
    if applied is not None:
        kept = f" (existing roles kept: {', '.join(applied.existing_roles)})"
        console.print(
            f"applied {applied.executed} statements (the PostgreSQL dialect) in one transaction"
            + (kept if applied.existing_roles else "")
        )


@governance_app.command("roles")
def roles(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show the declaration: each role, what it reads and writes, and the row policies."""
    import json

    from tasks.governance import DECLARATION

    described = {
        "pii_columns": list(DECLARATION.pii_columns),
        "roles": [
            {
                "name": role.name,
                "purpose": role.purpose,
                "creates_staging_tables": role.creates_staging_tables,
                "tables": {
                    grant.table: {
                        "read": list(DECLARATION.readable_columns(grant) or ()),
                        "write": grant.write,
                    }
                    for grant in role.tables
                },
            }
            for role in DECLARATION.roles
        ],
        "row_policies": [
            {"name": p.name, "role": p.role, "regions": list(p.regions), "tables": list(p.tables)}
            for p in DECLARATION.row_policies
        ],
    }
    if as_json:
        sys.stdout.write(json.dumps(described) + "\n")
        return
    console.print(f"PII columns (never granted to readers): {', '.join(DECLARATION.pii_columns)}")
    for role in DECLARATION.roles:
        console.print(f"[bold]{role.name}[/]: {role.purpose}")
        for grant in role.tables:
            columns = DECLARATION.readable_columns(grant)
            read = (
                "all columns"
                if columns == DECLARATION.columns(grant.table)
                else (", ".join(columns) if columns else "nothing")
            )
            write = {"replace": "; INSERT, DELETE", "append": "; INSERT", None: ""}[grant.write]
            console.print(f"  {grant.table}: SELECT {read}{write}")
        if role.creates_staging_tables:
            console.print("  creates its per-run staging tables")
    for policy in DECLARATION.row_policies:
        console.print(
            f"row policy {policy.name}: {policy.role} sees {', '.join(policy.regions)} rows of "
            f"{', '.join(policy.tables)}"
        )
