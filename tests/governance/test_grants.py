"""Least-privilege grants from the one declaration (``tasks/governance.py``).

Real where it can be here: the Redshift-dialect grants are applied, in PostgreSQL's dialect
(grantees without ``ROLE``; PostgreSQL's own ``CREATE POLICY`` for row-level security), to a REAL
PostgreSQL server (the project's throwaway server, see ``conftest.py``): roles, column-level
GRANTs and row-level security are PostgreSQL's own, and every proof below logs in as a real user
of each role and is refused (or filtered) by the server itself. The ETL writer publishes a day
with the Redshift warehouse's own SQL constants (``tasks/warehouses/redshift.py``: CREATE …
LIKE, DELETE/INSERT the day, DROP the staging table); only its COPY is replaced by INSERT rows,
because ``COPY … FORMAT AS PARQUET`` does not exist in PostgreSQL.

Not run anywhere here: the Redshift-only statements (``CREATE RLS POLICY``, ``ATTACH``, ``GRANT …
TO ROLE``), BigQuery's DCL and row access policies, and Snowflake's statements (fakesnow 0.12.1
parses none of them: CREATE ROLE, GRANT, masking and row access policies all fail there). Those
are held by exact snapshots (``snapshots/*.sql``) so any change shows in review; a test proves the
Redshift text differs from the applied PostgreSQL text only by the grantee keyword and the RLS
statements. Refresh snapshots after an intended change:
``TRIPFLOW_UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/governance -q``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from datetime import date
from pathlib import Path

import psycopg
import pytest
from governance_support import SCHEMA, STAGING, USER_PASSWORD, USERS, Warehouse
from psycopg import errors as pg_errors
from typer.testing import CliRunner

from flows.governance_cli import DSN_ENV, governance_app
from tasks import governance
from tasks.errors import InfrastructureError, UsageError
from tasks.governance import DECLARATION, RowPolicy, apply_postgres, grants_sql
from tasks.warehouses import duckdb as reference
from tasks.warehouses import redshift
from tasks.warehouses.base import staging_suffix

SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE_SNAPSHOTS = os.environ.get("TRIPFLOW_UPDATE_SNAPSHOTS") == "1"
PRINCIPALS = {role: [user] for role, user in USERS.items()}
PII = DECLARATION.pii_columns


@pytest.fixture(scope="module")
def applied(warehouse: Warehouse) -> governance.Applied:
    return apply_postgres(warehouse.owner_dsn, grants_sql("postgres", principals=PRINCIPALS))


def run_as(wh: Warehouse, role: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(wh.dsn(role), autocommit=True) as conn:
        cur = conn.execute(sql.encode())
        return cur.fetchall() if cur.description else []


def refused(wh: Warehouse, role: str, sql: str) -> str:
    """Run ``sql`` as ``role``'s user and return the server's refusal (fails if it ran)."""
    with pytest.raises(pg_errors.InsufficientPrivilege) as caught:
        run_as(wh, role, sql)
    return str(caught.value)


# --- The declaration ---------------------------------------------------------------------------


def _names(columns_ddl: str) -> tuple[str, ...]:
    return tuple(line.split()[0] for line in columns_ddl.strip().splitlines())


def test_declared_columns_are_the_warehouse_columns() -> None:
    runs = re.search(r"\.runs \((.*?)\n\);", reference.CREATE_TABLES, re.S)
    assert runs
    assert DECLARATION.columns("trips") == _names(reference.TRIPS_COLUMNS)
    assert DECLARATION.columns("trips_quarantine") == _names(reference.QUARANTINE_COLUMNS)
    assert DECLARATION.columns("region_daily") == _names(reference.REGION_DAILY_COLUMNS)
    assert DECLARATION.columns("runs") == _names(runs.group(1))
    assert set(PII) == {"rider_id", "rider_email_hash", "driver_id"}


def test_redshift_rls_policy_column_has_the_published_tables_type() -> None:
    for ddl in (redshift.TRIPS_COLUMNS, redshift.QUARANTINE_COLUMNS, redshift.REGION_DAILY_COLUMNS):
        declared = re.search(r"^\s*region (\S+?)[\s,]", ddl, re.M)
        assert declared and declared.group(1) == governance.RS_REGION_TYPE


# --- On a real PostgreSQL ------------------------------------------------------------------------


def test_analyst_reads_trips_without_pii(warehouse: Warehouse, applied: governance.Applied) -> None:
    non_pii = ", ".join(c for c in DECLARATION.columns("trips") if c not in PII)
    rows = run_as(warehouse, "tripflow_analyst", f"SELECT {non_pii} FROM {SCHEMA}.trips")
    assert len(rows) == warehouse.owner(f"SELECT count(*) FROM {SCHEMA}.trips")[0][0] > 0
    regions = run_as(warehouse, "tripflow_analyst", f"SELECT DISTINCT region FROM {SCHEMA}.trips")
    assert {r[0] for r in regions} == {"us-east", "us-west", "eu-west"}
    assert run_as(warehouse, "tripflow_analyst", f"SELECT count(*) FROM {SCHEMA}.runs")[0][0] >= 1
    non_pii = ", ".join(c for c in DECLARATION.columns("trips_quarantine") if c not in PII)
    rows = run_as(warehouse, "tripflow_analyst", f"SELECT {non_pii} FROM {SCHEMA}.trips_quarantine")
    assert len(rows) == warehouse.owner(f"SELECT count(*) FROM {SCHEMA}.trips_quarantine")[0][0]


@pytest.mark.parametrize("table", ["trips", "trips_quarantine"])
@pytest.mark.parametrize("column", [*PII, "*"])
def test_analyst_cannot_read_pii(
    warehouse: Warehouse, applied: governance.Applied, table: str, column: str
) -> None:
    for role in ("tripflow_analyst", "tripflow_analyst_us_east"):
        message = refused(warehouse, role, f"SELECT {column} FROM {SCHEMA}.{table}")
        assert "permission denied" in message


def test_dashboard_reads_region_daily_and_nothing_else(
    warehouse: Warehouse, applied: governance.Applied
) -> None:
    rows = run_as(warehouse, "tripflow_dashboard", f"SELECT * FROM {SCHEMA}.region_daily")
    assert len(rows) == warehouse.owner(f"SELECT count(*) FROM {SCHEMA}.region_daily")[0][0] > 0
    for sql in (
        f"SELECT trip_date FROM {SCHEMA}.trips",
        f"SELECT trip_date FROM {SCHEMA}.trips_quarantine",
        f"SELECT run_id FROM {SCHEMA}.runs",
    ):
        refused(warehouse, "tripflow_dashboard", sql)
    refused(warehouse, "tripflow_dashboard", f"DELETE FROM {SCHEMA}.region_daily")
    refused(warehouse, "tripflow_dashboard", f"CREATE TABLE {STAGING}.x (a int)")
    refused(warehouse, "tripflow_dashboard", f"CREATE TABLE {SCHEMA}.x (a int)")


def test_region_policy_filters_rows_for_the_region_scoped_role(
    warehouse: Warehouse, applied: governance.Applied
) -> None:
    for table in ("trips", "trips_quarantine", "region_daily"):
        expected = warehouse.owner(
            f"SELECT count(*) FROM {SCHEMA}.{table} WHERE region = 'us-east'"
        )[0][0]
        total = warehouse.owner(f"SELECT count(*) FROM {SCHEMA}.{table}")[0][0]
        assert 0 < expected < total
        seen = run_as(warehouse, "tripflow_analyst_us_east", f"SELECT region FROM {SCHEMA}.{table}")
        assert len(seen) == expected
        assert {r[0] for r in seen} == {"us-east"}
        # The unrestricted analyst, under the same row-level security, sees every row.
        everything = run_as(warehouse, "tripflow_analyst", f"SELECT region FROM {SCHEMA}.{table}")
        assert len(everything) == total


def _named(sql: str) -> str:
    """The Data API's ``:name`` parameters as psycopg's ``%(name)s``."""
    return re.sub(r"(?<!:):([a-z_]+)", r"%(\1)s", sql)


def test_etl_writer_publishes_a_day_with_the_redshift_warehouse_sql(
    warehouse: Warehouse, applied: governance.Applied
) -> None:
    """Row-level security is on: without its every-row policy the writer's DELETE would delete
    nothing and the day would hold both runs' rows; without its grants any step is refused."""
    day = date(2025, 11, 15)
    suffix = staging_suffix(day, "run1-governance")
    names = {"schema": SCHEMA, "staging": STAGING, "suffix": suffix}
    before = warehouse.owner(f"SELECT count(*) FROM {SCHEMA}.trips WHERE trip_date = '{day}'")
    assert before[0][0] == 30
    with psycopg.connect(warehouse.dsn("tripflow_etl_writer")) as conn:
        for table in ("trips", "trips_quarantine", "region_daily"):
            conn.execute(redshift.CREATE_STAGING.format(**names, table=table).encode())
        # Stand-in for COPY … FORMAT AS PARQUET (not in PostgreSQL): the day's new rows.
        conn.execute(
            f"""INSERT INTO {STAGING}.trips_{suffix} (trip_id, trip_date, distance_km, fare_usd,
                region, rider_email_hash, _run_id, _source_file, _source_row)
            SELECT 'n' || i, DATE '{day}', 2.0, 12.50, 'us-west', 'hash-n' || i, 'run1',
                   'part-1.parquet', i FROM generate_series(1, 12) AS i""".encode()
        )
        conn.execute(
            f"""INSERT INTO {STAGING}.region_daily_{suffix}
            VALUES (DATE '{day}', 'us-west', 12, 24.0, 150.00, 6.25)""".encode()
        )
        conn.commit()
        # The staging tables hold the day's PII unmasked: no reader reaches them.
        for role in ("tripflow_analyst", "tripflow_dashboard"):
            refused(warehouse, role, f"SELECT trip_id FROM {STAGING}.trips_{suffix}")
        # Publish: one transaction, as the Redshift warehouse's batch.
        for table in ("trips", "trips_quarantine", "region_daily"):
            conn.execute(
                _named(redshift.DELETE_DAY.format(**names, table=table)), {"run_date": day}
            )
            conn.execute(redshift.INSERT_DAY.format(**names, table=table).encode())
        ledger = f"""INSERT INTO {SCHEMA}.runs VALUES ('run1', DATE '{day}', 'published',
            'synthetic', 'fp', 'trips', 'v1', 'key-fp', 12, 0, 12, '{{}}', '[]', NULL, now(),
            now())"""
        conn.execute(ledger.encode())
        for table in ("trips", "trips_quarantine", "region_daily"):
            conn.execute(redshift.DROP_STAGING.format(**names, table=table).encode())
        conn.commit()
        published = conn.execute(_named(redshift.PUBLISHED_ROWS.format(**names)), {"run_date": day})
        assert published.fetchone() == (12,)

    assert warehouse.owner(
        f"SELECT _run_id, count(*) FROM {SCHEMA}.trips WHERE trip_date = '{day}' GROUP BY 1"
    ) == [("run1", 12)]
    assert warehouse.owner(
        f"SELECT count(*) FROM {SCHEMA}.trips WHERE trip_date = DATE '{day}' - 1"
    ) == [(30,)]
    assert warehouse.owner(
        f"SELECT trip_count FROM {SCHEMA}.region_daily WHERE trip_date = '{day}'"
    ) == [(12,)]
    assert warehouse.owner(f"SELECT count(*) FROM {SCHEMA}.runs WHERE run_id = 'run1'") == [(1,)]
    assert warehouse.owner(f"SELECT count(*) FROM pg_tables WHERE schemaname = '{STAGING}'") == [
        (0,)
    ]


@pytest.mark.parametrize(
    "sql",
    [
        f"UPDATE {SCHEMA}.trips SET fare_usd = 0",
        f"DELETE FROM {SCHEMA}.runs",
        f"UPDATE {SCHEMA}.runs SET status = 'published'",
        f"TRUNCATE {SCHEMA}.trips",
        f"CREATE TABLE {SCHEMA}.trips_copy (a int)",
        f"DROP TABLE {SCHEMA}.trips",
        f"ALTER TABLE {SCHEMA}.trips DISABLE ROW LEVEL SECURITY",
        # The tables' DDL is the owner's, even "IF NOT EXISTS" (PostgreSQL checks the privilege
        # before the existence): the writer's run must not carry it.
        f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
        f"CREATE TABLE IF NOT EXISTS {SCHEMA}.runs (run_id VARCHAR)",
    ],
)
def test_etl_writer_cannot_change_what_it_does_not_publish(
    warehouse: Warehouse, applied: governance.Applied, sql: str
) -> None:
    refused(warehouse, "tripflow_etl_writer", sql)


def test_etl_writer_cannot_pass_its_privileges_on(
    warehouse: Warehouse, applied: governance.Applied
) -> None:
    # PostgreSQL answers a GRANT without grant option with a warning, not an error: prove the
    # effect instead (the dashboard still cannot read trips).
    run_as(warehouse, "tripflow_etl_writer", f"GRANT SELECT ON {SCHEMA}.trips TO dana")
    refused(warehouse, "tripflow_dashboard", f"SELECT trip_id FROM {SCHEMA}.trips")


def test_reapplying_through_the_cli_takes_back_a_grant_made_by_hand(
    warehouse: Warehouse, applied: governance.Applied
) -> None:
    warehouse.owner(f"GRANT SELECT ON {SCHEMA}.trips TO tripflow_analyst")
    leaked = run_as(warehouse, "tripflow_analyst", f"SELECT rider_email_hash FROM {SCHEMA}.trips")
    assert leaked  # the hand-made grant really exposed PII ...

    args = ["grants", "--target", "redshift", "--apply-postgres"]
    for role, user in USERS.items():
        args += ["--principal", f"{role}={user}"]
    result = CliRunner().invoke(governance_app, args, env={DSN_ENV: warehouse.owner_dsn})
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == grants_sql("postgres", principals=PRINCIPALS)
    assert "existing roles kept: tripflow_etl_writer" in result.stderr
    assert USER_PASSWORD not in result.output and "s3cret" not in result.output

    # ... and re-applying the declaration took it back.
    refused(warehouse, "tripflow_analyst", f"SELECT rider_email_hash FROM {SCHEMA}.trips")
    assert run_as(warehouse, "tripflow_analyst", f"SELECT count(trip_id) FROM {SCHEMA}.trips")


def test_apply_is_one_transaction(warehouse: Warehouse) -> None:
    statements = [
        "CREATE ROLE tripflow_probe;",
        f"GRANT USAGE ON SCHEMA {SCHEMA} TO tripflow_probe;",
        f"GRANT SELECT ON TABLE {SCHEMA}.no_such_table TO tripflow_probe;",
    ]
    with pytest.raises(InfrastructureError) as caught:
        apply_postgres(warehouse.owner_dsn, statements)
    assert "no_such_table" in caught.value.message and "nothing applied" in caught.value.message
    assert "s3cret" not in caught.value.message
    assert warehouse.owner("SELECT count(*) FROM pg_roles WHERE rolname = 'tripflow_probe'") == [
        (0,)
    ]


def test_unreachable_postgres_is_an_infrastructure_error_without_the_dsn() -> None:
    dsn = "postgresql://someone:hunter2-secret@127.0.0.1:1/x?connect_timeout=2"
    with pytest.raises(InfrastructureError) as caught:
        apply_postgres(dsn, ["CREATE ROLE x;"])
    assert "cannot connect to PostgreSQL" in caught.value.message
    assert "hunter2" not in caught.value.message


def test_cli_apply_needs_the_dsn_from_the_environment() -> None:
    result = CliRunner().invoke(
        governance_app, ["grants", "--target", "redshift", "--apply-postgres"], env={DSN_ENV: ""}
    )
    assert result.exit_code == 2
    assert DSN_ENV in result.stderr
    assert result.stdout == ""


# --- Text of the dialects nothing here runs --------------------------------------------------


def _as_postgres(statement: str) -> str:
    statement = statement.replace("GRANT ROLE ", "GRANT ", 1)
    return re.sub(r"\b(TO|FROM) ROLE ", r"\1 ", statement)


def test_redshift_differs_from_the_applied_postgres_only_in_grantee_and_rls() -> None:
    rs = grants_sql("redshift", principals=PRINCIPALS)
    pg = grants_sql("postgres", principals=PRINCIPALS)
    rs_rls = [s for s in rs if "RLS" in s or "ROW LEVEL SECURITY" in s]
    pg_rls = [s for s in pg if "POLICY" in s or "ROW LEVEL SECURITY" in s]
    assert [_as_postgres(s) for s in rs if s not in rs_rls] == [s for s in pg if s not in pg_rls]
    assert len(rs_rls) == 13 and len(pg_rls) == 15  # 3 tables: policies, attach/enable


SNAPSHOT_CONFIG: dict[str, dict[str, object]] = {
    "redshift": {"principals": PRINCIPALS},
    "bigquery": {
        "project": "my-project",
        "principals": {
            "tripflow_etl_writer": [
                "serviceAccount:tripflow-etl@my-project.iam.gserviceaccount.com"
            ],
            "tripflow_analyst": ["group:analysts@example.com"],
            "tripflow_analyst_us_east": [
                "serviceAccount:analyst@my-project.iam.gserviceaccount.com"
            ],
            "tripflow_dashboard": ["serviceAccount:looker@my-project.iam.gserviceaccount.com"],
        },
    },
    "snowflake": {
        "database": "tripflow",
        "warehouse": "tripflow_wh",
        "stage": "tripflow_stage",
        "principals": PRINCIPALS,
    },
}


@pytest.mark.parametrize("target", sorted(SNAPSHOT_CONFIG))
def test_generated_sql_matches_its_snapshot(target: str) -> None:
    current = "\n".join(grants_sql(target, **SNAPSHOT_CONFIG[target])) + "\n"
    snapshot = SNAPSHOTS / f"{target}.sql"
    if UPDATE_SNAPSHOTS:
        snapshot.write_text(current)
    assert snapshot.exists(), (
        "no snapshot: TRIPFLOW_UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/governance"
    )
    assert current == snapshot.read_text(), (
        f"{target} SQL changed: review it, then TRIPFLOW_UPDATE_SNAPSHOTS=1 "
        ".venv/bin/pytest tests/governance"
    )


def test_snowflake_masks_every_pii_column_and_scopes_rows() -> None:
    sql = grants_sql("snowflake", **SNAPSHOT_CONFIG["snowflake"])
    masked = {
        (m.group(1), m.group(2))
        for s in sql
        if (
            m := re.match(r"ALTER TABLE TRIPFLOW\.ANALYTICS\.(\w+) MODIFY COLUMN (\w+) SET MASK", s)
        )
    }
    assert masked == {(t, c.upper()) for t in ("TRIPS", "TRIPS_QUARANTINE") for c in PII}
    assert not any("SELECT (" in s for s in sql)  # no column grants in Snowflake: masking instead
    rows = [s for s in sql if s.startswith("ALTER ROW ACCESS POLICY")]
    assert len(rows) == 3
    assert all("'TRIPFLOW_ANALYST_US_EAST' THEN REGION IN ('us-east')" in s for s in rows)


def test_bigquery_readers_get_views_without_pii_never_the_source_tables() -> None:
    sql = grants_sql("bigquery", **SNAPSHOT_CONFIG["bigquery"])
    views = [s for s in sql if s.startswith("CREATE OR REPLACE VIEW")]
    assert len(views) == 2
    for view in views:
        assert not any(re.search(rf"\b{c}\b", view) for c in PII)
    analyst_grants = [s for s in sql if s.startswith("GRANT") and "group:analysts" in s]
    assert {s.split(" ON ")[1].split(" TO")[0] for s in analyst_grants} == {
        "VIEW `my-project.analytics_analyst.trips`",
        "VIEW `my-project.analytics_analyst.trips_quarantine`",
        "TABLE `my-project.analytics.region_daily`",
        "TABLE `my-project.analytics.runs`",
    }
    dashboard = [s for s in sql if s.startswith("GRANT") and "looker@" in s]
    assert dashboard == [
        "GRANT `roles/bigquery.dataViewer` ON TABLE `my-project.analytics.region_daily` TO "
        '"serviceAccount:looker@my-project.iam.gserviceaccount.com";'
    ]


# --- Configuration never reaches SQL unchecked ---------------------------------------------------


@pytest.mark.parametrize(
    ("target", "kwargs"),
    [
        ("postgres", {"principals": {"tripflow_analyst": ["alice; DROP TABLE analytics.trips"]}}),
        ("redshift", {"principals": {"tripflow_analyst": ['alice" WITH SUPERUSER']}}),
        ("redshift", {"schema": "analytics; DROP SCHEMA analytics CASCADE"}),
        ("redshift", {"staging_schema": "s; GRANT ALL ON SCHEMA analytics TO PUBLIC"}),
        ("redshift", {"principals": {"tripflow_superuser": ["alice"]}}),
        (
            "snowflake",
            {"database": "tripflow", "principals": {"tripflow_analyst": ["bob' OR 1=1"]}},
        ),
        ("snowflake", {"database": "tripflow; DROP DATABASE prod"}),
        ("snowflake", {"database": "tripflow", "warehouse": "wh; DROP WAREHOUSE wh"}),
        ("snowflake", {"database": "tripflow", "stage": "st--"}),
        (
            "bigquery",
            {
                "project": "my-project",
                "principals": {
                    "tripflow_analyst": [
                        'serviceAccount:a@my-project.iam.gserviceaccount.com") FILTER USING (TRUE'
                    ]
                },
            },
        ),
        ("bigquery", {"project": "my-project", "principals": {"tripflow_analyst": ["allUsers"]}}),
        ("bigquery", {"project": "my-project`.x; DROP SCHEMA `y"}),
        ("bigquery", {"project": "my-project", "location": "US'); DROP SCHEMA x; --"}),
        ("bigquery", {}),
        ("snowflake", {}),
        ("oracle", {}),
    ],
)
def test_injection_and_bad_configuration_are_usage_errors(
    target: str, kwargs: dict[str, object]
) -> None:
    with pytest.raises(UsageError):
        grants_sql(target, **kwargs)


@pytest.mark.parametrize(
    "regions", [("us-east') OR ('1' = '1",), ("US EAST",), ()], ids=["quote", "space", "none"]
)
def test_row_policy_regions_are_checked(regions: tuple[str, ...]) -> None:
    declaration = dataclasses.replace(
        DECLARATION,
        row_policies=(RowPolicy("p", role="tripflow_analyst", regions=regions, tables=("trips",)),),
    )
    for target in ("redshift", "postgres", "snowflake"):
        with pytest.raises(UsageError):
            grants_sql(target, declaration, database="tripflow")


@pytest.mark.parametrize("principal", ["x;DROP TABLE t", "[bold]x[/]"])
def test_cli_refuses_an_injected_principal_with_exit_2(principal: str) -> None:
    result = CliRunner().invoke(
        governance_app,
        ["grants", "--target", "redshift", "--principal", f"tripflow_analyst={principal}"],
    )
    assert result.exit_code == 2
    assert "not a safe user name" in result.stderr
    assert principal in result.stderr
    assert result.stdout == ""


def test_cli_prints_bigquery_sql_on_stdout_and_what_sql_cannot_do_on_stderr() -> None:
    config = SNAPSHOT_CONFIG["bigquery"]
    args = ["grants", "--target", "bigquery", "--project", "my-project"]
    for role, members in config["principals"].items():
        args += [arg for member in members for arg in ("--principal", f"{role}={member}")]
    result = CliRunner().invoke(governance_app, args)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == grants_sql("bigquery", **config)
    assert "roles/bigquery.jobUser" in result.stderr
    assert "authorize the views of analytics_analyst" in result.stderr


def test_cli_roles_shows_the_declaration() -> None:
    import json

    result = CliRunner().invoke(governance_app, ["roles", "--json"])
    assert result.exit_code == 0, result.stderr
    described = json.loads(result.stdout)
    roles = {r["name"]: r for r in described["roles"]}
    assert list(roles["tripflow_dashboard"]["tables"]) == ["region_daily"]
    analyst_trips = roles["tripflow_analyst"]["tables"]["trips"]["read"]
    assert analyst_trips and not set(analyst_trips) & set(described["pii_columns"])
    assert roles["tripflow_etl_writer"]["tables"]["runs"]["write"] == "append"
    assert described["row_policies"] == [
        {
            "name": "trip_region_policy",
            "role": "tripflow_analyst_us_east",
            "regions": ["us-east"],
            "tables": ["trips", "trips_quarantine", "region_daily"],
        }
    ]
