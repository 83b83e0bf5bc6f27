"""DuckDB, the embedded default warehouse: one file, bulk-loaded straight from staged Parquet.

Write, audit, publish without copying the day twice: each run bulk-loads the day into tables of its
own (``analytics_parts.trips_<YYYYMMDD>_<run>`` and its quarantine and region_daily siblings); the
checks run there; publishing is one transaction that points the day at the run's tables in the
partition registry (``analytics.partitions``), re-creates the views ``analytics.trips``,
``analytics.trips_quarantine`` and ``analytics.region_daily`` over the published tables, writes the
ledger row and drops the day's previous tables. Readers see the old day or the new one, never a mix;
a failed check publishes nothing and leaves the run's tables for inspection.

DuckDB allows one writer per file, so every write holds an exclusive lock on ``<file>.lock`` for its
whole connection: concurrent runs (a backfill, or two runs of one day) load and publish one at a
time.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import duckdb

from tasks.errors import InfrastructureError
from tasks.faults import kill_point
from tasks.warehouses.base import (
    Figures,
    LedgerRow,
    LoadResult,
    StagedFiles,
    Usage,
    identifier,
    staging_suffix,
)

SCHEMA: Final = "analytics"
PARTS_SCHEMA: Final = "analytics_parts"

CREATE_SCHEMAS: Final = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE SCHEMA IF NOT EXISTS {PARTS_SCHEMA};
"""

TRIPS_COLUMNS: Final = """
    trip_id VARCHAR NOT NULL,
    trip_date DATE NOT NULL,
    pickup_ts TIMESTAMPTZ,
    dropoff_ts TIMESTAMPTZ,
    distance_km DOUBLE NOT NULL,
    fare_usd DECIMAL(18, 2) NOT NULL,
    region VARCHAR NOT NULL,
    rider_id VARCHAR,
    rider_email_hash VARCHAR,
    driver_id VARCHAR,
    payment_type VARCHAR,
    status VARCHAR,
    duration_min DOUBLE,
    fare_per_km DOUBLE,
    _run_id VARCHAR NOT NULL,
    _source_file VARCHAR NOT NULL,
    _source_row BIGINT NOT NULL
"""

QUARANTINE_COLUMNS: Final = """
    trip_id VARCHAR,
    trip_date DATE NOT NULL,
    pickup_ts TIMESTAMPTZ,
    dropoff_ts TIMESTAMPTZ,
    distance_km DOUBLE,
    fare_usd DOUBLE,
    region VARCHAR,
    rider_id VARCHAR,
    rider_email_hash VARCHAR,
    driver_id VARCHAR,
    payment_type VARCHAR,
    status VARCHAR,
    _source_file VARCHAR NOT NULL,
    _source_row BIGINT NOT NULL,
    _pickup_given BOOLEAN,
    reasons VARCHAR[] NOT NULL,
    _run_id VARCHAR NOT NULL
"""

REGION_DAILY_COLUMNS: Final = """
    trip_date DATE NOT NULL,
    region VARCHAR NOT NULL,
    trip_count BIGINT NOT NULL,
    total_distance_km DOUBLE NOT NULL,
    total_fare_usd DECIMAL(18, 2) NOT NULL,
    avg_fare_per_km DOUBLE
"""

CREATE_TABLES: Final = f"""
CREATE TABLE IF NOT EXISTS {PARTS_SCHEMA}.trips_empty ({TRIPS_COLUMNS});
CREATE TABLE IF NOT EXISTS {PARTS_SCHEMA}.trips_quarantine_empty ({QUARANTINE_COLUMNS});
CREATE TABLE IF NOT EXISTS {PARTS_SCHEMA}.region_daily_empty ({REGION_DAILY_COLUMNS});
CREATE TABLE IF NOT EXISTS {SCHEMA}.partitions (
    table_kind VARCHAR NOT NULL,
    trip_date DATE NOT NULL,
    table_name VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    PRIMARY KEY (table_kind, trip_date)
);
CREATE VIEW IF NOT EXISTS {SCHEMA}.trips AS SELECT * FROM {PARTS_SCHEMA}.trips_empty;
CREATE VIEW IF NOT EXISTS {SCHEMA}.trips_quarantine AS
    SELECT * FROM {PARTS_SCHEMA}.trips_quarantine_empty;
CREATE VIEW IF NOT EXISTS {SCHEMA}.region_daily AS SELECT * FROM {PARTS_SCHEMA}.region_daily_empty;
CREATE TABLE IF NOT EXISTS {SCHEMA}.runs (
    run_id VARCHAR NOT NULL,
    run_date DATE NOT NULL,
    status VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    source_fingerprint VARCHAR NOT NULL,
    format VARCHAR NOT NULL,
    code_version VARCHAR NOT NULL,
    pii_key_fingerprint VARCHAR NOT NULL,
    rows_extracted BIGINT NOT NULL,
    rows_quarantined BIGINT NOT NULL,
    rows_loaded BIGINT NOT NULL,
    stages JSON NOT NULL,
    checks JSON NOT NULL,
    error VARCHAR,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL
);
"""

#: Order within a table carries no meaning here (lineage columns record it): let DuckDB load in
#: parallel without preserving it.
FAST_BULK_LOAD: Final = "SET preserve_insertion_order = false"

#: Bulk load: DuckDB reads the staged Parquet itself (never row-by-row INSERTs).
CREATE_RUN_TABLE: Final = (
    f"CREATE OR REPLACE TABLE {PARTS_SCHEMA}.{{table}}_{{suffix}} ({{columns}});\n"
    f"INSERT INTO {PARTS_SCHEMA}.{{table}}_{{suffix}} BY NAME\n"
    "SELECT * FROM read_parquet($files, hive_partitioning = false);"
)
CREATE_EMPTY_RUN_TABLE: Final = (
    f"CREATE OR REPLACE TABLE {PARTS_SCHEMA}.{{table}}_{{suffix}} ({{columns}});"
)

STAGING_FIGURES: Final = """
SELECT count(*) AS rows,
       coalesce(sum(fare_usd), 0) AS fare_usd_sum,
       count(*) - count(DISTINCT trip_id) AS duplicate_trip_ids
FROM analytics_parts.trips_{suffix}
"""

REGION_MISMATCHES: Final = """
WITH trip_level AS (
    SELECT trip_date, region, count(*) AS trip_count,
           round(sum(distance_km), 2) AS total_distance_km, sum(fare_usd) AS total_fare_usd
    FROM analytics_parts.trips_{suffix}
    GROUP BY trip_date, region
)
SELECT coalesce(t.region, r.region) AS region
FROM trip_level t
FULL OUTER JOIN analytics_parts.region_daily_{suffix} r
  ON t.trip_date = r.trip_date AND t.region = r.region
WHERE t.trip_count IS DISTINCT FROM r.trip_count
   OR t.total_fare_usd IS DISTINCT FROM r.total_fare_usd
   OR abs(t.total_distance_km - r.total_distance_km) > 0.011
   OR t.region IS NULL OR r.region IS NULL
ORDER BY 1
"""

#: Rows published for each of D-7 .. D-1, from the latest published run of each day.
PUBLISHED_HISTORY: Final = f"""
SELECT run_date, rows_loaded
FROM {SCHEMA}.runs
WHERE status = 'published' AND run_date >= $start AND run_date < $end
QUALIFY row_number() OVER (PARTITION BY run_date ORDER BY finished_at DESC) = 1
"""

#: Publishing a day: the registry points the day at this run's tables, in one transaction.
REGISTERED_TABLES: Final = f"SELECT table_name FROM {SCHEMA}.partitions WHERE trip_date = $run_date"
#: Runs of the day that failed: their tables were kept for inspection until the day is published.
FAILED_RUNS: Final = f"""
SELECT run_id FROM {SCHEMA}.runs WHERE run_date = $run_date AND status = 'failed'
"""
UNREGISTER_DAY: Final = f"DELETE FROM {SCHEMA}.partitions WHERE trip_date = $run_date"
REGISTER_TABLE: Final = f"""
INSERT INTO {SCHEMA}.partitions VALUES ($table_kind, $run_date, $table_name, $run_id)
"""
PUBLISHED_TABLE_NAMES: Final = f"""
SELECT table_name FROM {SCHEMA}.partitions WHERE table_kind = $table_kind ORDER BY trip_date
"""
CREATE_VIEW: Final = "CREATE OR REPLACE VIEW {schema}.{table} AS\n{selects}"
DROP_PART: Final = f"DROP TABLE IF EXISTS {PARTS_SCHEMA}.{{name}}"
INSERT_LEDGER: Final = f"""
INSERT INTO {SCHEMA}.runs VALUES (
    $run_id, $run_date, $status, $source, $source_fingerprint, $format, $code_version,
    $pii_key_fingerprint, $rows_extracted, $rows_quarantined, $rows_loaded, $stages, $checks,
    $error, $started_at, $finished_at
)
"""
PUBLISHED_ROWS: Final = f"SELECT count(*) FROM {SCHEMA}.trips WHERE trip_date = $run_date"
LEDGER_EXISTS: Final = f"""
SELECT count(*) FROM duckdb_tables() WHERE schema_name = '{SCHEMA}' AND table_name = 'runs'
"""
RECENT_RUNS: Final = f"""
SELECT run_id, run_date, status, source, rows_extracted, rows_quarantined, rows_loaded,
       stages, checks, error, started_at, finished_at
FROM {SCHEMA}.runs
ORDER BY finished_at DESC
LIMIT $limit
"""

#: (published view, the ``StagedFiles`` field it loads from, its columns)
PUBLISHED_TABLES: Final = (
    ("trips", "trips", TRIPS_COLUMNS),
    ("trips_quarantine", "quarantine", QUARANTINE_COLUMNS),
    ("region_daily", "region_daily", REGION_DAILY_COLUMNS),
)

LOCK_TIMEOUT_SECONDS: Final = 3600.0
#: DuckDB's own memory budget (it spills to ``<file>.tmp`` beyond it), so a stage's pod can be
#: sized from measured peaks instead of DuckDB's default of 80% of the machine.
MEMORY_LIMIT: Final = "512MB"


class DuckDBWarehouse:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.description = f"duckdb:{path}"
        self._usage = Usage()

    @contextmanager
    def connect(self, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection holding the file's writer lock (shared for readers)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = open(f"{self.path}.lock", "a+")  # noqa: SIM115 - held for the connection
        except OSError as exc:
            raise InfrastructureError(f"warehouse {self.path}: {exc}") from exc
        try:
            _lock(lock, fcntl.LOCK_SH if read_only else fcntl.LOCK_EX, self.path)
            try:
                con = duckdb.connect(
                    str(self.path),
                    read_only=read_only and self.path.exists(),
                    config={"memory_limit": MEMORY_LIMIT},
                )
            except duckdb.Error as exc:
                raise InfrastructureError(f"warehouse {self.path}: cannot open: {exc}") from exc
            try:
                yield con
            finally:
                con.close()
        finally:
            lock.close()

    def ensure_tables(self) -> None:
        with self.connect() as con:
            con.execute(CREATE_SCHEMAS)
            con.execute(CREATE_TABLES)

    def load(self, run_date: date, run_id: str, files: StagedFiles) -> LoadResult:
        suffix = staging_suffix(run_date, run_id)
        counts: dict[str, int] = {}
        with self.connect() as con:
            con.execute(CREATE_SCHEMAS)
            con.execute(CREATE_TABLES)
            con.execute(FAST_BULK_LOAD)
            _read_remote_files(con, files)
            for table, field, columns in PUBLISHED_TABLES:
                paths = list(getattr(files, field))
                names = {"table": table, "suffix": suffix, "columns": columns}
                try:
                    if paths:
                        con.execute(CREATE_RUN_TABLE.format(**names), {"files": paths})
                    else:
                        con.execute(CREATE_EMPTY_RUN_TABLE.format(**names))
                except (duckdb.IOException, duckdb.ConnectionException) as exc:
                    raise InfrastructureError(
                        f"warehouse {self.path}: loading {table}: {exc}"
                    ) from exc
                row = con.execute(
                    f"SELECT count(*) FROM {PARTS_SCHEMA}.{identifier(table)}_{suffix}"
                ).fetchone()
                counts[table] = int(row[0]) if row else 0
                kill_point("load")  # the run's trips table loaded, its siblings not yet
        return LoadResult(
            suffix, counts["trips"], counts["trips_quarantine"], counts["region_daily"]
        )

    def figures(self, run_date: date, load: LoadResult) -> Figures:
        names = {"suffix": identifier("t_" + load.suffix)[2:]}
        with self.connect() as con:
            row = con.execute(STAGING_FIGURES.format(**names)).fetchone()
            assert row is not None
            mismatches = [r[0] for r in con.execute(REGION_MISMATCHES.format(**names)).fetchall()]
            history = {
                d: int(n)
                for d, n in con.execute(
                    PUBLISHED_HISTORY,
                    {"start": run_date - timedelta(days=7), "end": run_date},
                ).fetchall()
            }
        return Figures(
            rows=int(row[0]),
            fare_usd_sum=Decimal(row[1]),
            duplicate_trip_ids=int(row[2]),
            region_mismatches=mismatches,
            history=history,
        )

    def publish(self, run_date: date, load: LoadResult, ledger: LedgerRow) -> None:
        suffix = identifier("t_" + load.suffix)[2:]
        new_tables = {f"{table}_{suffix}" for table, _, _ in PUBLISHED_TABLES}
        with self.connect() as con:
            try:
                con.execute("BEGIN TRANSACTION")
                day = {"run_date": run_date}
                previous = {r[0] for r in con.execute(REGISTERED_TABLES, day).fetchall()}
                for (failed_run,) in con.execute(FAILED_RUNS, day).fetchall():
                    failed = staging_suffix(run_date, str(failed_run))
                    previous |= {f"{table}_{failed}" for table, _, _ in PUBLISHED_TABLES}
                con.execute(UNREGISTER_DAY, {"run_date": run_date})
                for table, _, _ in PUBLISHED_TABLES:
                    con.execute(
                        REGISTER_TABLE,
                        {
                            "table_kind": table,
                            "run_date": run_date,
                            "table_name": f"{table}_{suffix}",
                            "run_id": ledger.run_id,
                        },
                    )
                    self._create_view(con, table)
                con.execute(INSERT_LEDGER, _ledger_params(ledger))
                for name in sorted(previous - new_tables):
                    con.execute(DROP_PART.format(name=identifier(name)))
                kill_point("publish")  # everything done but the COMMIT
                con.execute("COMMIT")
            except duckdb.Error as exc:
                con.execute("ROLLBACK")
                raise InfrastructureError(f"warehouse {self.path}: publish failed: {exc}") from exc

    @staticmethod
    def _create_view(con: duckdb.DuckDBPyConnection, table: str) -> None:
        """``analytics.<table>`` as the union of the published tables (and an empty base)."""
        names = [f"{table}_empty"] + [
            r[0] for r in con.execute(PUBLISHED_TABLE_NAMES, {"table_kind": table}).fetchall()
        ]
        selects = "\nUNION ALL\n".join(
            f"SELECT * FROM {PARTS_SCHEMA}.{identifier(name)}" for name in names
        )
        con.execute(CREATE_VIEW.format(schema=SCHEMA, table=table, selects=selects))

    def record_run(self, ledger: LedgerRow) -> None:
        with self.connect() as con:
            con.execute(CREATE_SCHEMAS)
            con.execute(CREATE_TABLES)
            con.execute(INSERT_LEDGER, _ledger_params(ledger))

    def published_rows(self, run_date: date) -> int:
        with self.connect(read_only=True) as con:
            row = con.execute(PUBLISHED_ROWS, {"run_date": run_date}).fetchone()
        return int(row[0]) if row else 0

    def usage(self) -> Usage:
        """DuckDB bills nothing and reports no bytes processed."""
        return self._usage

    def recent_runs(self, limit: int) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.connect(read_only=True) as con:
            exists = con.execute(LEDGER_EXISTS).fetchone()
            if not exists or not exists[0]:
                return []
            cursor = con.execute(RECENT_RUNS, {"limit": limit})
            names = [d[0] for d in cursor.description or []]
            rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        for row in rows:
            row["stages"] = json.loads(row["stages"])
            row["checks"] = json.loads(row["checks"])
        return rows


def _read_remote_files(con: duckdb.DuckDBPyConnection, files: StagedFiles) -> None:
    """Let ``read_parquet`` read staged ``s3://``/``gs://`` URLs through the staging's own fsspec
    filesystem and credentials (DuckDB's httpfs extension cannot be downloaded offline)."""
    from tasks.storage import filesystem_for, is_remote

    remote = [
        path
        for paths in (files.trips, files.quarantine, files.region_daily)
        for path in paths
        if is_remote(path)
    ]
    registered: set[str] = set()
    for path in remote:
        fs = filesystem_for(path)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        if protocol not in registered:
            con.register_filesystem(fs)
            registered.add(protocol)


def _ledger_params(ledger: LedgerRow) -> dict[str, Any]:
    params = dict(ledger.__dict__)
    params["stages"] = json.dumps(ledger.stages, sort_keys=True, default=str)
    params["checks"] = json.dumps(ledger.checks, sort_keys=True, default=str)
    return params


def _lock(handle: Any, mode: int, path: Path) -> None:
    deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
    while True:
        try:
            fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise InfrastructureError(
                    f"warehouse {path}: still locked by another run after "
                    f"{LOCK_TIMEOUT_SECONDS:.0f}s"
                ) from None
            time.sleep(0.05)


def from_block(block: Any) -> DuckDBWarehouse:
    """The DuckDB file a ``TripWarehouse`` block names."""
    return DuckDBWarehouse(block.path)
