"""DuckDB, the embedded default warehouse: one file, and views over the runs' own Parquet files.

Write, audit, publish without a second copy of the day: each run adopts the day's staged Parquet
into a folder of its own beside the database file (``<file>.files/<YYYYMMDD>_<run>/<table>/``: a
hard link when staging is on the same filesystem, a copy otherwise, a download for ``s3://`` and
``gs://`` staging) and creates views over those files (``analytics_parts.trips_<YYYYMMDD>_<run>``
and its quarantine and region_daily siblings), typed as the published tables are (money stays
``DECIMAL(18,2)``). The checks run on those views; publishing is one transaction that points the
day at the run's views in the partition registry (``analytics.partitions``), re-creates the views
``analytics.trips``, ``analytics.trips_quarantine`` and ``analytics.region_daily`` over the
published ones, writes the ledger row and drops the day's previous views; once it has committed,
the files of the runs the day no longer reads (the one it replaced, failed runs) are deleted.
Readers see the old day or the new one, never a mix; a failed check publishes nothing and leaves
the run's views and files for inspection until the day is published again.

Files a published day reads are never rewritten or deleted before the day is replaced: staging
re-runs replace their own folders (the adopted link keeps the run's bytes), and a load refuses to
re-adopt a run that is published. Days published before views (tables in ``analytics_parts``)
are read as they are and dropped when replaced.

DuckDB allows one writer per file, so every write holds an exclusive lock on ``<file>.lock`` for its
whole connection: concurrent runs (a backfill, or two runs of one day) load and publish one at a
time, and no reader has the file open while a publish deletes the files a day no longer reads.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
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

#: A run's table: a view over its own Parquet files, each column cast to the published type.
CREATE_RUN_VIEW: Final = (
    f"CREATE OR REPLACE VIEW {PARTS_SCHEMA}.{{table}}_{{suffix}} AS\n"
    "SELECT {casts}\nFROM read_parquet([{files}], hive_partitioning = false)"
)
CREATE_EMPTY_RUN_VIEW: Final = (
    f"CREATE OR REPLACE VIEW {PARTS_SCHEMA}.{{table}}_{{suffix}} AS\n"
    f"SELECT * FROM {PARTS_SCHEMA}.{{table}}_empty"
)
#: Rows of a run's view and the nulls its files' statistics record in its NOT NULL columns
#: (Parquet metadata only: nothing is scanned).
RUN_ROWS: Final = f"SELECT count(*) FROM {PARTS_SCHEMA}.{{table}}_{{suffix}}"
NULLS_IN_FILES: Final = """
SELECT path_in_schema, sum(stats_null_count), count(*) - count(stats_null_count)
FROM parquet_metadata($files)
WHERE path_in_schema IN (SELECT unnest($columns::VARCHAR[]))
GROUP BY path_in_schema
"""

#: The day's rows, fares and repeated trip_ids, in one scan. Repeats are counted over a 64-bit hash
#: of trip_id (half the time of comparing the text ids at 8M rows): when no two hashes are equal,
#: no two ids are; when some are, ``DUPLICATE_TRIP_IDS`` counts the ids themselves, so a hash
#: collision never fails the check by itself.
STAGING_FIGURES: Final = """
SELECT count(*) AS rows,
       coalesce(sum(fare_usd), 0) AS fare_usd_sum,
       count(*) - count(DISTINCT hash(trip_id)) AS repeated_trip_id_hashes
FROM analytics_parts.trips_{suffix}
"""
DUPLICATE_TRIP_IDS: Final = """
SELECT count(*) - count(DISTINCT trip_id) FROM analytics_parts.trips_{suffix}
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
#: A run's view (or, from before views, its table) that the day no longer reads.
PART_KIND: Final = f"""
SELECT 'VIEW' FROM duckdb_views() WHERE schema_name = '{PARTS_SCHEMA}' AND view_name = $name
UNION ALL
SELECT 'TABLE' FROM duckdb_tables() WHERE schema_name = '{PARTS_SCHEMA}' AND table_name = $name
"""
DROP_PART: Final = f"DROP {{kind}} IF EXISTS {PARTS_SCHEMA}.{{name}}"
#: The runs of a day the ledger knows (their files go once another run's version is published).
DAY_RUNS: Final = f"SELECT DISTINCT run_id FROM {SCHEMA}.runs WHERE run_date = $run_date"
PUBLISHED_RUN: Final = f"""
SELECT count(*) FROM {SCHEMA}.partitions WHERE table_name = $table_name
"""
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

#: The folder beside the database file that holds the runs' adopted Parquet files.
FILES_SUFFIX: Final = ".files"

LOCK_TIMEOUT_SECONDS: Final = 3600.0
#: DuckDB's own memory budget (it spills to ``<file>.tmp`` beyond it), so a stage's pod can be
#: sized from measured peaks instead of DuckDB's default of 80% of the machine. At 512MB, the
#: checks' count of distinct trip_id hashes grew with the day (validate's peak 505 MB at 8M
#: trips, 752 MB at 32M); at 256MB it spills instead (440 and 511 MB), and ran faster at both
#: sizes (1.58 -> 1.22 s, 4.84 -> 4.21 s; bench/README.md).
MEMORY_LIMIT: Final = "256MB"


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

    @property
    def files_root(self) -> Path:
        """Where the runs' adopted Parquet files live: ``<file>.files/``."""
        return self.path.with_name(self.path.name + FILES_SUFFIX)

    def run_files(self, suffix: str) -> Path:
        """The folder of one run's adopted files (``<file>.files/<YYYYMMDD>_<run>``)."""
        return self.files_root / identifier("t_" + suffix)[2:]

    def load(self, run_date: date, run_id: str, files: StagedFiles) -> LoadResult:
        suffix = staging_suffix(run_date, run_id)
        counts: dict[str, int] = {}
        with self.connect() as con:
            con.execute(CREATE_SCHEMAS)
            con.execute(CREATE_TABLES)
            if _scalar(con, PUBLISHED_RUN, {"table_name": f"trips_{suffix}"}):
                raise InfrastructureError(
                    f"warehouse {self.path}: run {suffix} is published; its files are not "
                    "replaced (start a new run to replace the day)"
                )
            folder = self.run_files(suffix)
            shutil.rmtree(
                folder, ignore_errors=True
            )  # an earlier attempt of this (unpublished) run
            for table, field, columns in PUBLISHED_TABLES:
                names = {"table": table, "suffix": suffix}
                try:
                    adopted = _adopt(list(getattr(files, field)), folder / table)
                    if adopted:
                        _check_not_null(con, adopted, columns, table)
                        con.execute(
                            CREATE_RUN_VIEW.format(
                                **names, casts=_casts(columns), files=_sql_list(adopted)
                            )
                        )
                    else:
                        con.execute(CREATE_EMPTY_RUN_VIEW.format(**names))
                    counts[table] = _scalar(con, RUN_ROWS.format(**names))
                except (duckdb.IOException, duckdb.ConnectionException, OSError) as exc:
                    raise InfrastructureError(
                        f"warehouse {self.path}: loading {table}: {exc}"
                    ) from exc
                except duckdb.BinderException as exc:
                    raise InfrastructureError(
                        f"warehouse {self.path}: the staged {table} files do not have the "
                        f"published columns: {exc}"
                    ) from exc
                kill_point("load")  # the run's trips view created, its siblings not yet
        return LoadResult(
            suffix, counts["trips"], counts["trips_quarantine"], counts["region_daily"]
        )

    def figures(self, run_date: date, load: LoadResult) -> Figures:
        names = {"suffix": identifier("t_" + load.suffix)[2:]}
        with self.connect() as con:
            row = con.execute(STAGING_FIGURES.format(**names)).fetchone()
            assert row is not None
            duplicates = int(row[2]) and _scalar(con, DUPLICATE_TRIP_IDS.format(**names))
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
            duplicate_trip_ids=duplicates,
            region_mismatches=mismatches,
            history=history,
        )

    def publish(self, run_date: date, load: LoadResult, ledger: LedgerRow) -> None:
        suffix = identifier("t_" + load.suffix)[2:]
        new_tables = {f"{table}_{suffix}" for table, _, _ in PUBLISHED_TABLES}
        with self.connect() as con:
            ledger = ledger.finished_now()  # the writer lock is held: stamps follow commits
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
                day_runs = {str(r[0]) for r in con.execute(DAY_RUNS, day).fetchall()}
                con.execute(INSERT_LEDGER, _ledger_params(ledger))
                for name in sorted(previous - new_tables):
                    for (kind,) in con.execute(PART_KIND, {"name": name}).fetchall():
                        con.execute(DROP_PART.format(kind=kind, name=identifier(name)))
                kill_point("publish")  # everything done but the COMMIT
                con.execute("COMMIT")
            except duckdb.Error as exc:
                con.execute("ROLLBACK")
                raise InfrastructureError(f"warehouse {self.path}: publish failed: {exc}") from exc
            # Committed, and no reader has the file open (this connection holds the writer lock):
            # the files of the day's other runs (the version replaced, failed runs, a replaced
            # version a crash kept here) are read by nothing now.
            for run in sorted(day_runs - {ledger.run_id}):
                shutil.rmtree(self.run_files(staging_suffix(run_date, run)), ignore_errors=True)

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


def _columns(columns: str) -> list[tuple[str, str, bool]]:
    """(name, SQL type, NOT NULL) of each column of a ``*_COLUMNS`` constant."""
    out = []
    for line in columns.strip().split(",\n"):
        name, kind = line.strip().split(None, 1)
        out.append((name, kind.replace("NOT NULL", "").strip(), "NOT NULL" in kind))
    return out


def _casts(columns: str) -> str:
    return ", ".join(
        f"CAST({identifier(name)} AS {kind}) AS {name}" for name, kind, _ in _columns(columns)
    )


def _sql_list(paths: list[str]) -> str:
    return ", ".join("'" + path.replace("'", "''") + "'" for path in paths)


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> int:
    row = con.execute(sql, params).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _check_not_null(
    con: duckdb.DuckDBPyConnection, files: list[str], columns: str, table: str
) -> None:
    """The published NOT NULL columns hold no null, by the files' own statistics (the views
    cannot enforce it as the tables did; a column without statistics is counted)."""
    required = [name for name, _, not_null in _columns(columns) if not_null]
    found = con.execute(NULLS_IN_FILES, {"files": files, "columns": required}).fetchall()
    for name, nulls, unknown in found:
        if unknown:
            row = con.execute(
                f"SELECT count(*) FROM read_parquet($files) WHERE {identifier(name)} IS NULL",
                {"files": files},
            ).fetchone()
            nulls = row[0] if row else 0
        if nulls:
            raise InfrastructureError(
                f"staged {table} files: column {name} has {int(nulls):,} null value(s); "
                "the published table does not allow nulls there"
            )


def _adopt(paths: list[str], folder: Path) -> list[str]:
    """The run's own immutable copies of staged files: hard links where staging shares the
    filesystem, copies otherwise, downloads for ``s3://``/``gs://``. Each is written under a
    temporary name and renamed, so a file in ``folder`` is always whole."""
    from tasks.storage import filesystem_for, is_remote

    if not paths:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    adopted = []
    for i, source in enumerate(paths):
        target = folder / f"part-{i:05d}.parquet"
        partial = folder / f".{target.name}.{secrets.token_hex(4)}"
        try:
            if is_remote(source):
                filesystem_for(source).get_file(source, str(partial))
            else:
                try:
                    os.link(source, partial)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                        raise
                    shutil.copyfile(source, partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        adopted.append(str(target.resolve()))
    return adopted


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
