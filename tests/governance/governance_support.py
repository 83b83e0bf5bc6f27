"""The governance tests' warehouse on a real, throwaway PostgreSQL (no mocks).

The server is the project's own (``tests/pg/pgserver.py``, imported as ``tests/pg/conftest.py``
does): started once per session on 127.0.0.1, stopped at the end. The published tables are created
from the DuckDB warehouse's own column lists (``tasks/warehouses/duckdb.py``, DOUBLE spelled
DOUBLE PRECISION for PostgreSQL), by the server's superuser, who plays the tables' owner.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pg"))

from pgserver import DATABASE, ThrowawayPostgres

from tasks.warehouses import duckdb as reference

SCHEMA = "analytics"
STAGING = "analytics_staging"
#: Login users, each in one declared role (the principals a deployment would configure).
USERS = {
    "tripflow_etl_writer": "ewan",
    "tripflow_analyst": "alice",
    "tripflow_analyst_us_east": "uma",
    "tripflow_dashboard": "dana",
}
USER_PASSWORD = "governance-test-pw"


def _pg_columns(duckdb_columns: str) -> str:
    return re.sub(r"\bDOUBLE\b", "DOUBLE PRECISION", duckdb_columns)


def _runs_columns() -> str:
    found = re.search(r"\.runs \((.*?)\n\);", reference.CREATE_TABLES, re.S)
    assert found, "the ledger's DDL moved in tasks/warehouses/duckdb.py"
    return found.group(1)


PUBLISHED_DDL = f"""
CREATE SCHEMA {SCHEMA};
CREATE SCHEMA {STAGING};
CREATE TABLE {SCHEMA}.trips ({_pg_columns(reference.TRIPS_COLUMNS)});
CREATE TABLE {SCHEMA}.trips_quarantine ({_pg_columns(reference.QUARANTINE_COLUMNS)});
CREATE TABLE {SCHEMA}.region_daily ({_pg_columns(reference.REGION_DAILY_COLUMNS)});
CREATE TABLE {SCHEMA}.runs ({_runs_columns()});
"""

#: Two days of 30 trips over three regions, their quarantine, aggregate and ledger rows.
SEED = f"""
INSERT INTO {SCHEMA}.trips (trip_id, trip_date, distance_km, fare_usd, region, rider_id,
    rider_email_hash, driver_id, _run_id, _source_file, _source_row)
SELECT 't' || d || '-' || i, DATE '2025-11-14' + d, 1.5 + i, 10.25,
       (ARRAY['us-east', 'us-west', 'eu-west'])[1 + i % 3], 'rider-' || i, 'hash-' || i,
       'driver-' || i, 'run0', 'part-0.parquet', i
FROM generate_series(0, 1) AS d, generate_series(0, 29) AS i;
INSERT INTO {SCHEMA}.trips_quarantine (trip_id, trip_date, region, rider_id, rider_email_hash,
    driver_id, _source_file, _source_row, reasons, _run_id)
SELECT 'q' || i, DATE '2025-11-14', (ARRAY['us-east', 'us-west'])[1 + i % 2], 'rider-q' || i,
       'hash-q' || i, 'driver-q' || i, 'part-0.parquet', i, ARRAY['negative_fare'], 'run0'
FROM generate_series(0, 5) AS i;
INSERT INTO {SCHEMA}.region_daily
SELECT trip_date, region, count(*), sum(distance_km), sum(fare_usd),
       sum(fare_usd) / sum(distance_km)
FROM {SCHEMA}.trips GROUP BY trip_date, region;
INSERT INTO {SCHEMA}.runs VALUES ('run0', DATE '2025-11-14', 'published', 'synthetic', 'fp',
    'trips', 'v1', 'key-fp', 30, 6, 30, '{{}}', '[]', NULL, now(), now());
"""


@dataclass
class Warehouse:
    server: ThrowawayPostgres

    @property
    def owner_dsn(self) -> str:
        return self.server.dsn()

    def dsn(self, role: str) -> str:
        """A login as the user configured for ``role``."""
        return (
            f"postgresql://{USERS[role]}:{USER_PASSWORD}@127.0.0.1:{self.server.port}/{DATABASE}"
            "?connect_timeout=5"
        )

    def owner(self, sql: str) -> list[tuple[object, ...]]:
        with psycopg.connect(self.owner_dsn, autocommit=True) as conn:
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description else []
