"""Snowflake: ``COPY INTO`` per-run tables, the checks there, the day replaced in one transaction.

Write, audit, publish on Snowflake:

1. ``load`` creates this run's TRANSIENT tables ``<schema>.<table>_<YYYYMMDD>_<run>`` and fills each
   with one bulk ``COPY INTO … FILE_FORMAT = (TYPE = PARQUET) MATCH_BY_COLUMN_NAME =
   CASE_INSENSITIVE ON_ERROR = ABORT_STATEMENT`` (never row-by-row INSERTs). A file that does not
   load fails the statement; the run's tables are then dropped, so nothing is left half-loaded.

   - Production: the staged files are in object storage (``s3://…``, ``gs://…``) under the block's
     ``stage_url``, which the external stage ``stage_name`` points at (through a storage
     integration). Each staged URI is mapped to ``@<stage_name>/<folder>/`` plus an explicit
     ``FILES = (…)`` list: exactly the manifest's files, nothing else in the folder.
   - Local staging (the embedded default, tests): the files are first ``PUT`` into a fresh,
     per-attempt folder of the run table's own table stage (``@<schema>.%<table>``), which then
     holds exactly the manifest's files, and ``COPY INTO`` loads that folder (``PURGE = TRUE``).

2. ``figures`` runs the checks' SQL on the run's tables.
3. ``publish`` is one transaction: ``BEGIN``; delete the day from each published table; insert the
   run's rows; write the ledger row; ``COMMIT`` (any failure: ``ROLLBACK``, the old day stays).
   Only after the commit are the run's tables (and those of the day's failed runs) dropped: DDL
   commits implicitly in Snowflake, so it must stay out of the transaction.

The published tables are clustered by ``trip_date``. Every session sets
``STATEMENT_TIMEOUT_IN_SECONDS`` from the block; the virtual warehouse is resized only if the block
names a size. Snowflake bills credits (warehouse seconds), not bytes: ``usage()`` reports None.

The connection is a seam (a zero-argument callable): ``from_block`` makes it from the block's
prefect-snowflake ``SnowflakeConnector`` (key-pair auth from a mounted secret file), and the tests
run the same code on fakesnow, which patches ``snowflake.connector.connect``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlparse

from tasks.errors import InfrastructureError, UsageError
from tasks.faults import SUBMITTED, kill_point
from tasks.warehouses.base import (
    Figures,
    LedgerRow,
    LoadResult,
    StagedFiles,
    Usage,
    identifier,
    staging_suffix,
)

if TYPE_CHECKING:
    from tasks.warehouses.blocks import TripWarehouse

log = logging.getLogger(__name__)
#: Warnings already given by this process (a run builds its warehouse once per stage).
_WARNED: set[str] = set()


class Cursor(Protocol):
    """The part of a DB-API cursor used here (snowflake-connector-python's, or fakesnow's)."""

    @property
    def description(self) -> Any: ...

    def execute(self, command: str, params: Any = None) -> Any: ...

    def fetchall(self) -> Sequence[Any]: ...

    def fetchone(self) -> Any: ...

    def close(self) -> Any: ...


class Connection(Protocol):
    def cursor(self) -> Any: ...

    def close(self) -> Any: ...


#: Makes one authenticated connection (the seam the tests use).
Connect = Callable[[], Connection]

# --- Session ------------------------------------------------------------------------------------

#: Every session: a statement running longer than the block allows is cancelled by Snowflake.
SET_STATEMENT_TIMEOUT: Final = "ALTER SESSION SET STATEMENT_TIMEOUT_IN_SECONDS = {seconds:d}"
#: Only when the block names a size: the virtual warehouse the loads and checks run on.
SET_WAREHOUSE_SIZE: Final = "ALTER WAREHOUSE {warehouse} SET WAREHOUSE_SIZE = '{size}'"
WAREHOUSE_SIZES: Final = frozenset(
    {
        "XSMALL",
        "SMALL",
        "MEDIUM",
        "LARGE",
        "XLARGE",
        "XXLARGE",
        "XXXLARGE",
        "X4LARGE",
        "X5LARGE",
        "X6LARGE",
    }
)

# --- Tables -------------------------------------------------------------------------------------

TRIPS_COLUMNS: Final = """
    trip_id VARCHAR NOT NULL,
    trip_date DATE NOT NULL,
    pickup_ts TIMESTAMP_TZ,
    dropoff_ts TIMESTAMP_TZ,
    distance_km FLOAT NOT NULL,
    fare_usd NUMBER(18, 2) NOT NULL,
    region VARCHAR NOT NULL,
    rider_id VARCHAR,
    rider_email_hash VARCHAR,
    driver_id VARCHAR,
    payment_type VARCHAR,
    status VARCHAR,
    duration_min FLOAT,
    fare_per_km FLOAT,
    _run_id VARCHAR NOT NULL,
    _source_file VARCHAR NOT NULL,
    _source_row NUMBER(38, 0) NOT NULL
"""

QUARANTINE_COLUMNS: Final = """
    trip_id VARCHAR,
    trip_date DATE NOT NULL,
    pickup_ts TIMESTAMP_TZ,
    dropoff_ts TIMESTAMP_TZ,
    distance_km FLOAT,
    fare_usd FLOAT,
    region VARCHAR,
    rider_id VARCHAR,
    rider_email_hash VARCHAR,
    driver_id VARCHAR,
    payment_type VARCHAR,
    status VARCHAR,
    _source_file VARCHAR NOT NULL,
    _source_row NUMBER(38, 0) NOT NULL,
    _pickup_given BOOLEAN,
    reasons ARRAY NOT NULL,
    _run_id VARCHAR NOT NULL
"""

REGION_DAILY_COLUMNS: Final = """
    trip_date DATE NOT NULL,
    region VARCHAR NOT NULL,
    trip_count NUMBER(38, 0) NOT NULL,
    total_distance_km FLOAT NOT NULL,
    total_fare_usd NUMBER(18, 2) NOT NULL,
    avg_fare_per_km FLOAT
"""

RUNS_COLUMNS: Final = """
    run_id VARCHAR NOT NULL,
    run_date DATE NOT NULL,
    status VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    source_fingerprint VARCHAR NOT NULL,
    format VARCHAR NOT NULL,
    code_version VARCHAR NOT NULL,
    pii_key_fingerprint VARCHAR NOT NULL,
    rows_extracted NUMBER(38, 0) NOT NULL,
    rows_quarantined NUMBER(38, 0) NOT NULL,
    rows_loaded NUMBER(38, 0) NOT NULL,
    stages VARIANT NOT NULL,
    checks VARIANT NOT NULL,
    error VARCHAR,
    started_at TIMESTAMP_TZ NOT NULL,
    finished_at TIMESTAMP_TZ NOT NULL
"""

CREATE_SCHEMA: Final = "CREATE SCHEMA IF NOT EXISTS {schema}"
#: A published table: permanent, clustered by the day it is replaced by.
CREATE_PUBLISHED_TABLE: Final = (
    "CREATE TABLE IF NOT EXISTS {schema}.{table} ({columns}) CLUSTER BY (trip_date)"
)
CREATE_RUNS_TABLE: Final = f"CREATE TABLE IF NOT EXISTS {{schema}}.runs ({RUNS_COLUMNS})"
#: A run's own staging table: TRANSIENT (no Fail-safe storage billed for a table that lives hours).
CREATE_RUN_TABLE: Final = "CREATE OR REPLACE TRANSIENT TABLE {schema}.{table}_{suffix} ({columns})"
DROP_RUN_TABLE: Final = "DROP TABLE IF EXISTS {schema}.{table}_{suffix}"
COUNT_RUN_TABLE: Final = "SELECT count(*) FROM {schema}.{table}_{suffix}"

# --- Bulk load ----------------------------------------------------------------------------------

COPY_OPTIONS: Final = (
    "FILE_FORMAT = (TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE "
    "ON_ERROR = ABORT_STATEMENT FORCE = TRUE"
)
#: Production: the staged files, by name, from the external stage over the staging bucket.
#: ``FORCE = TRUE``: the run's table is new, so its load history must not skip a retried file.
COPY_FROM_EXTERNAL_STAGE: Final = (
    "COPY INTO {schema}.{table}_{suffix} FROM @{stage}/{folder}/ FILES = ({files}) " + COPY_OPTIONS
)
#: Local staging: upload one file into the run table's own stage (no compression: it is Parquet).
PUT_FILE: Final = (
    "PUT 'file://{path}' @{schema}.%{table}_{suffix}/{attempt}/ "
    "AUTO_COMPRESS = FALSE OVERWRITE = TRUE"
)
#: ... then load that folder, which holds exactly the files just PUT; loaded files are purged.
COPY_FROM_TABLE_STAGE: Final = (
    "COPY INTO {schema}.{table}_{suffix} FROM @{schema}.%{table}_{suffix}/{attempt}/ "
    + COPY_OPTIONS
    + " PURGE = TRUE"
)
#: Snowflake's limit on the FILES list of one COPY statement.
MAX_FILES_PER_COPY: Final = 1000

# --- Checks' figures ----------------------------------------------------------------------------

#: Money sums are exact (NUMBER). The ``::NUMBER(18, 2)`` casts are no-ops on Snowflake (the column
#: is NUMBER(18, 2)); they keep the fakesnow stand-in from summing through DOUBLE, which it does to
#: an argument that is not already a cast.
STAGING_FIGURES: Final = """
SELECT count(*) AS rows,
       coalesce(sum(fare_usd::NUMBER(18, 2)), 0) AS fare_usd_sum,
       count(*) - count(DISTINCT trip_id) AS duplicate_trip_ids
FROM {schema}.trips_{suffix}
"""

REGION_MISMATCHES: Final = """
WITH trip_level AS (
    SELECT trip_date, region, count(*) AS trip_count,
           round(sum(distance_km), 2) AS total_distance_km,
           sum(fare_usd::NUMBER(18, 2)) AS total_fare_usd
    FROM {schema}.trips_{suffix}
    GROUP BY trip_date, region
)
SELECT coalesce(t.region, r.region) AS region
FROM trip_level t
FULL OUTER JOIN {schema}.region_daily_{suffix} r
  ON t.trip_date = r.trip_date AND t.region = r.region
WHERE t.trip_count IS DISTINCT FROM r.trip_count
   OR t.total_fare_usd IS DISTINCT FROM r.total_fare_usd
   OR abs(t.total_distance_km - r.total_distance_km) > 0.011
   OR t.region IS NULL OR r.region IS NULL
ORDER BY 1
"""

#: Rows published for each of D-7 .. D-1, from the latest published run of each day.
PUBLISHED_HISTORY: Final = """
SELECT run_date, rows_loaded
FROM {schema}.runs
WHERE status = 'published' AND run_date >= %(start)s AND run_date < %(end)s
QUALIFY row_number() OVER (PARTITION BY run_date ORDER BY finished_at DESC) = 1
"""

# --- Publish ------------------------------------------------------------------------------------

#: Rows of a run's table that are not of its day: publishing them would break "replace the day".
OTHER_DAYS: Final = (
    "SELECT count(*) FROM {schema}.{table}_{suffix} WHERE trip_date IS DISTINCT FROM %(run_date)s"
)
BEGIN: Final = "BEGIN TRANSACTION"
COMMIT: Final = "COMMIT"
ROLLBACK: Final = "ROLLBACK"
DELETE_DAY: Final = "DELETE FROM {schema}.{table} WHERE trip_date = %(run_date)s"
INSERT_DAY: Final = (
    "INSERT INTO {schema}.{table} ({columns}) SELECT {columns} FROM {schema}.{table}_{suffix}"
)
#: ``INSERT … SELECT`` (not ``VALUES``): Snowflake allows PARSE_JSON only in a SELECT.
INSERT_LEDGER: Final = """
INSERT INTO {schema}.runs (
    run_id, run_date, status, source, source_fingerprint, format, code_version,
    pii_key_fingerprint, rows_extracted, rows_quarantined, rows_loaded, stages, checks, error,
    started_at, finished_at
)
SELECT %(run_id)s, %(run_date)s, %(status)s, %(source)s, %(source_fingerprint)s, %(format)s,
       %(code_version)s, %(pii_key_fingerprint)s, %(rows_extracted)s, %(rows_quarantined)s,
       %(rows_loaded)s, PARSE_JSON(%(stages)s), PARSE_JSON(%(checks)s), %(error)s,
       %(started_at)s, %(finished_at)s
"""
#: Runs of the day that failed: their tables were kept for inspection until the day is published.
FAILED_RUNS: Final = (
    "SELECT run_id FROM {schema}.runs WHERE run_date = %(run_date)s AND status = 'failed'"
)
#: Whether this run already published (a retried publish after its COMMIT does nothing).
RUN_PUBLISHED: Final = (
    "SELECT count(*) FROM {schema}.runs WHERE run_id = %(run_id)s AND status = 'published'"
)
PUBLISHED_ROWS: Final = "SELECT count(*) FROM {schema}.trips WHERE trip_date = %(run_date)s"
RECENT_RUNS: Final = """
SELECT run_id, run_date, status, source, rows_extracted, rows_quarantined, rows_loaded,
       stages, checks, error, started_at, finished_at
FROM {schema}.runs
ORDER BY finished_at DESC
LIMIT {limit:d}
"""

#: (published table, the ``StagedFiles`` field it loads from, its columns)
PUBLISHED_TABLES: Final = (
    ("trips", "trips", TRIPS_COLUMNS),
    ("trips_quarantine", "quarantine", QUARANTINE_COLUMNS),
    ("region_daily", "region_daily", REGION_DAILY_COLUMNS),
)


def column_names(columns: str) -> str:
    """``a, b, c`` from a column-definition constant."""
    return ", ".join(line.split()[0] for line in columns.strip().splitlines())


class SnowflakeWarehouse:
    """The ``Warehouse`` interface on Snowflake (see the module docstring)."""

    def __init__(
        self,
        connect: Connect,
        *,
        schema: str = "analytics",
        stage_name: str | None = None,
        stage_url: str | None = None,
        statement_timeout_s: int = 3600,
        warehouse: str | None = None,
        warehouse_size: str | None = None,
        description: str = "snowflake",
    ) -> None:
        self._connect = connect
        self.schema = identifier(schema)
        self.stage_name = _stage_name(stage_name) if stage_name else None
        self.stage_url = _stage_root(stage_url) if stage_url else None
        if bool(self.stage_name) != bool(self.stage_url):
            raise UsageError("Snowflake: set both stage_name and stage_url, or neither")
        if statement_timeout_s <= 0:
            raise UsageError("Snowflake: statement_timeout_s must be positive")
        self.statement_timeout_s = int(statement_timeout_s)
        self.warehouse = identifier(warehouse) if warehouse else None
        self.warehouse_size = _warehouse_size(warehouse_size) if warehouse_size else None
        if self.warehouse_size and not self.warehouse:
            raise UsageError("Snowflake: warehouse_size needs the connector's warehouse name")
        self.description = description
        self._usage = Usage()
        self._sized = False

    # --- session ---------------------------------------------------------------------------------

    def session_statements(self) -> list[str]:
        """What every session runs first (the warehouse is resized once per object)."""
        statements = [SET_STATEMENT_TIMEOUT.format(seconds=self.statement_timeout_s)]
        if self.warehouse_size and not self._sized:
            statements.append(
                SET_WAREHOUSE_SIZE.format(warehouse=self.warehouse, size=self.warehouse_size)
            )
        return statements

    @contextmanager
    def session(self) -> Iterator[Cursor]:
        """A cursor on a new connection with the block's session settings; closed afterwards."""
        try:
            con = self._connect()
        except Exception as exc:  # the connector's own errors, network, key file
            raise InfrastructureError(
                f"{self.description}: cannot connect: {type(exc).__name__}" + _safe_detail(exc)
            ) from None
        try:
            cur: Cursor = con.cursor()
            for statement in self.session_statements():
                _execute(cur, statement, what="session settings")
            self._sized = True
            yield cur
        finally:
            con.close()

    # --- Warehouse interface ---------------------------------------------------------------------

    def ensure_tables(self) -> None:
        with self.session() as cur:
            self._ensure_tables(cur)

    def _ensure_tables(self, cur: Cursor) -> None:
        _execute(cur, CREATE_SCHEMA.format(schema=self.schema), what="create schema")
        for table, _, columns in PUBLISHED_TABLES:
            _execute(
                cur,
                CREATE_PUBLISHED_TABLE.format(schema=self.schema, table=table, columns=columns),
                what=f"create {self.schema}.{table}",
            )
        _execute(cur, CREATE_RUNS_TABLE.format(schema=self.schema), what="create ledger")

    def load(self, run_date: date, run_id: str, files: StagedFiles) -> LoadResult:
        suffix = staging_suffix(run_date, run_id)
        counts: dict[str, int] = {}
        with self.session() as cur:
            self._ensure_tables(cur)
            try:
                for table, field, columns in PUBLISHED_TABLES:
                    names = {"schema": self.schema, "table": table, "suffix": suffix}
                    _execute(
                        cur,
                        CREATE_RUN_TABLE.format(**names, columns=columns),
                        what=f"create {table}_{suffix}",
                    )
                    uris = list(getattr(files, field))
                    if uris:
                        self._copy(cur, names, uris)
                    row = _fetchone(cur, COUNT_RUN_TABLE.format(**names), what=f"count {table}")
                    counts[table] = int(row[0])
                    kill_point("load")  # this table loaded, its siblings not yet
            except BaseException:
                # Nothing half-loaded stays behind: drop every table of this run.
                with suppress(InfrastructureError):  # the load's own failure is the one to report
                    self._drop_run_tables(cur, suffix)
                raise
        return LoadResult(
            suffix, counts["trips"], counts["trips_quarantine"], counts["region_daily"]
        )

    def copy_statements(self, names: dict[str, str], uris: Sequence[str]) -> list[str]:
        """The statements that bulk-load ``uris`` into the run's table ``names`` describes.

        With an external stage: one ``COPY … FILES = (…)`` per folder (and per 1000 files).
        With local staging: one ``PUT`` per file into a fresh folder of the table's stage, then one
        ``COPY`` of that folder.
        """
        if self.stage_name and self.stage_url:
            statements = []
            for folder, relative in _by_folder(self.stage_url, uris):
                for start in range(0, len(relative), MAX_FILES_PER_COPY):
                    chunk = relative[start : start + MAX_FILES_PER_COPY]
                    statements.append(
                        COPY_FROM_EXTERNAL_STAGE.format(
                            **names,
                            stage=self.stage_name,
                            folder=folder,
                            files=", ".join(f"'{_literal(name)}'" for name in chunk),
                        )
                    )
            return statements
        local = [_local_path(uri) for uri in uris]
        if len({p.name for p in local}) != len(local):
            raise UsageError(f"{names['table']}: staged files must have distinct names to PUT")
        attempt = uuid.uuid4().hex
        puts = [
            PUT_FILE.format(**names, path=_literal(p.as_posix()), attempt=attempt) for p in local
        ]
        return [*puts, COPY_FROM_TABLE_STAGE.format(**names, attempt=attempt)]

    def _copy(self, cur: Cursor, names: dict[str, str], uris: Sequence[str]) -> None:
        table = f"{self.schema}.{names['table']}_{names['suffix']}"
        loaded = 0
        for statement in self.copy_statements(names, uris):
            if statement.startswith("PUT "):
                _execute(cur, statement, what=f"PUT a staged file for {table}")
                continue
            _execute(cur, statement, what=f"COPY INTO {table}")
            loaded += _check_copy_result(cur, table)
        if loaded != len(uris):
            raise InfrastructureError(
                f"COPY INTO {table}: {loaded} files loaded, the manifest lists {len(uris)}"
            )

    def _drop_run_tables(self, cur: Cursor, suffix: str) -> None:
        for table, _, _ in PUBLISHED_TABLES:
            names = {"schema": self.schema, "table": table, "suffix": suffix}
            _execute(cur, DROP_RUN_TABLE.format(**names), what=f"drop {table}_{suffix}")

    def figures(self, run_date: date, load: LoadResult) -> Figures:
        names = {"schema": self.schema, "suffix": _suffix(load.suffix)}
        with self.session() as cur:
            row = _fetchone(cur, STAGING_FIGURES.format(**names), what="staging figures")
            mismatches = [
                str(r[0])
                for r in _fetchall(cur, REGION_MISMATCHES.format(**names), what="region totals")
            ]
            history = {
                _as_date(d): int(n)
                for d, n in _fetchall(
                    cur,
                    PUBLISHED_HISTORY.format(schema=self.schema),
                    {"start": run_date - timedelta(days=7), "end": run_date},
                    what="published history",
                )
            }
        return Figures(
            rows=int(row[0]),
            fare_usd_sum=Decimal(str(row[1])),
            duplicate_trip_ids=int(row[2]),
            region_mismatches=mismatches,
            history=history,
        )

    def publish(self, run_date: date, load: LoadResult, ledger: LedgerRow) -> None:
        suffix = _suffix(load.suffix)
        day = {"run_date": run_date}
        with self.session() as cur:
            self._ensure_tables(cur)
            run = {"run_id": ledger.run_id}
            if int(_fetchone(cur, RUN_PUBLISHED.format(schema=self.schema), run, what="ledger")[0]):
                # A retry after the COMMIT (the task died before returning): already published.
                self._drop_quietly(cur, [suffix])
                return
            for table, _, _ in PUBLISHED_TABLES:
                names = {"schema": self.schema, "table": table, "suffix": suffix}
                other = _fetchone(cur, OTHER_DAYS.format(**names), day, what=f"days of {table}")
                if int(other[0]):
                    raise InfrastructureError(
                        f"{self.schema}.{table}_{suffix}: {int(other[0])} rows are not of "
                        f"{run_date}; nothing published"
                    )
            _execute(cur, BEGIN, what="publish: begin")
            try:
                for table, _, columns in PUBLISHED_TABLES:
                    names = {"schema": self.schema, "table": table, "suffix": suffix}
                    _execute(cur, DELETE_DAY.format(**names), day, what=f"publish: delete {table}")
                    _execute(
                        cur,
                        INSERT_DAY.format(**names, columns=column_names(columns)),
                        what=f"publish: insert {table}",
                    )
                failed = [
                    str(r[0])
                    for r in _fetchall(
                        cur, FAILED_RUNS.format(schema=self.schema), day, what="failed runs"
                    )
                ]
                _execute(
                    cur,
                    INSERT_LEDGER.format(schema=self.schema),
                    _ledger_params(ledger.finished_now()),
                    what="publish: ledger row",
                )
                kill_point("publish")  # everything done but the COMMIT
                _execute(cur, COMMIT, what="publish: commit")
                kill_point(SUBMITTED)  # committed, the run's tables not dropped yet
            except BaseException:
                _rollback(cur)
                raise
            # After the commit (DDL would commit implicitly): the run's tables are published now.
            self._drop_quietly(
                cur,
                [suffix] + [staging_suffix(run_date, r) for r in failed if r != ledger.run_id],
            )

    def _drop_quietly(self, cur: Cursor, suffixes: list[str]) -> None:
        """Drop runs' tables after a publish; a failure here must not fail a published day."""
        for suffix in suffixes:
            try:
                self._drop_run_tables(cur, suffix)
            except InfrastructureError as exc:
                log.warning("%s: run tables *_%s left behind: %s", self.description, suffix, exc)

    def record_run(self, ledger: LedgerRow) -> None:
        with self.session() as cur:
            self._ensure_tables(cur)
            _execute(
                cur,
                INSERT_LEDGER.format(schema=self.schema),
                _ledger_params(ledger),
                what="ledger row",
            )

    def published_rows(self, run_date: date) -> int:
        with self.session() as cur:
            row = _fetchone(
                cur,
                PUBLISHED_ROWS.format(schema=self.schema),
                {"run_date": run_date},
                what="published rows",
            )
        return int(row[0])

    def recent_runs(self, limit: int) -> list[dict[str, Any]]:
        with self.session() as cur:
            self._ensure_tables(cur)
            _execute(
                cur,
                RECENT_RUNS.format(schema=self.schema, limit=int(limit)),
                what="recent runs",
            )
            names = [str(d[0]).lower() for d in cur.description or []]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        for row in rows:
            row["run_date"] = _as_date(row["run_date"])
            row["stages"] = _json(row["stages"])
            row["checks"] = _json(row["checks"])
        return rows

    def usage(self) -> Usage:
        """None: Snowflake bills credits (warehouse size x seconds running), not bytes.

        Bytes scanned per query are in ``QUERY_HISTORY`` (ACCOUNT_USAGE, up to 45 minutes late);
        they are not read here.
        """
        return self._usage


# --- helpers ------------------------------------------------------------------------------------


def _execute(cur: Cursor, sql: str, params: Any = None, *, what: str) -> None:
    """Run one statement; a failure is an infrastructure error naming what was being done.

    The statement's text is not in the message (it may hold staged file paths, never a secret, but
    it is long); the database's own message is, shortened.
    """
    try:
        cur.execute(sql, params)
    except Exception as exc:  # the connector's errors; a stand-in may raise its engine's own
        raise InfrastructureError(
            f"Snowflake: {what} failed: {type(exc).__name__}" + _safe_detail(exc)
        ) from exc


def _fetchone(cur: Cursor, sql: str, params: Any = None, *, what: str) -> Sequence[Any]:
    _execute(cur, sql, params, what=what)
    row = cur.fetchone()
    if row is None:
        raise InfrastructureError(f"Snowflake: {what} returned no row")
    return tuple(row)


def _fetchall(cur: Cursor, sql: str, params: Any = None, *, what: str) -> list[Sequence[Any]]:
    _execute(cur, sql, params, what=what)
    return [tuple(r) for r in cur.fetchall()]


def _rollback(cur: Cursor) -> None:
    with suppress(Exception):  # the original failure is the one to report
        cur.execute(ROLLBACK)


def _check_copy_result(cur: Cursor, table: str) -> int:
    """The number of files one COPY loaded; raises unless every file it saw is LOADED."""
    names = [str(d[0]).lower() for d in cur.description or []]
    rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    if not rows or "file" not in names:
        raise InfrastructureError(f"COPY INTO {table}: no file was loaded")
    bad = [f"{r['file']} ({r.get('status')})" for r in rows if r.get("status") != "LOADED"]
    if bad:
        raise InfrastructureError(f"COPY INTO {table}: not loaded: {', '.join(bad[:5])}")
    return len(rows)


def _safe_detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f": {text[:300]}" if text else ""


def _suffix(suffix: str) -> str:
    return identifier("t_" + suffix)[2:]


def _stage_name(name: str) -> str:
    """``STAGE`` or ``DB.SCHEMA.STAGE``, each part a safe identifier."""
    return ".".join(identifier(part) for part in name.split("."))


def _warehouse_size(size: str) -> str:
    normalized = size.upper().replace("-", "")
    if normalized not in WAREHOUSE_SIZES:
        raise UsageError(
            f"Snowflake warehouse_size {size!r}: use one of {', '.join(sorted(WAREHOUSE_SIZES))}"
        )
    return normalized


def _normalized_url(uri: str) -> str:
    """A staged URI as a URL: local paths as ``file://``, ``gs://`` spelled ``gcs://``."""
    if "://" not in uri:
        return "file://" + Path(uri).resolve().as_posix()  # not as_uri(): it escapes "date="
    if uri.startswith("gs://"):
        return "gcs://" + uri[len("gs://") :]
    return uri


def _stage_root(url: str) -> str:
    normalized = _normalized_url(url)
    return normalized if normalized.endswith("/") else normalized + "/"


def _by_folder(stage_url: str, uris: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Staged URIs as (folder relative to the stage, [file names]) in the manifest's order."""
    folders: dict[str, list[str]] = {}
    for uri in uris:
        url = _normalized_url(uri)
        if not url.startswith(stage_url):
            raise UsageError(
                f"staged file {uri} is not under the Snowflake stage URL {stage_url}: point the "
                "block's stage_url (and its external stage) at the staging location"
            )
        relative = PurePosixPath(url[len(stage_url) :])
        folder = relative.parent.as_posix()
        if folder in ("", "."):
            raise UsageError(f"staged file {uri} must be in a folder under {stage_url}")
        folders.setdefault(_literal(folder), []).append(_literal(relative.name))
    return list(folders.items())


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise UsageError(
            f"staged file {uri} is in object storage: set the TripWarehouse block's stage_name "
            "and stage_url (an external stage over the staging bucket) to COPY it"
        )
    path = Path(parsed.path if parsed.scheme else uri).resolve()
    if not path.is_file():
        raise InfrastructureError(f"staged file {path} does not exist")
    return path


def _literal(text: str) -> str:
    """Text placed inside a quoted SQL string or stage path: no quote, backslash or control."""
    if any(c in text for c in "'\\") or any(ord(c) < 32 for c in text) or " " in text:
        raise UsageError(f"unsupported character in a staged path: {text!r}")
    return text


def _as_date(value: Any) -> date:
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _ledger_params(ledger: LedgerRow) -> dict[str, Any]:
    params = dict(ledger.__dict__)
    params["stages"] = json.dumps(ledger.stages, sort_keys=True, default=str)
    params["checks"] = json.dumps(ledger.checks, sort_keys=True, default=str)
    return params


def from_block(block: TripWarehouse) -> SnowflakeWarehouse:
    """The Snowflake warehouse a ``TripWarehouse`` block names, through its SnowflakeConnector.

    The connector's ``SnowflakeCredentials`` should use key-pair auth from a mounted secret
    (``private_key_path``, e.g. ``/mnt/secrets/snowflake-private-key.pem``): prefect-snowflake reads
    the file at connect time and hands the key to the connector; it is never logged here.
    """
    connector = block.snowflake_connector
    if connector is None:
        raise UsageError("TripWarehouse target 'snowflake' needs its snowflake_connector block")
    database = identifier(block.database or connector.database)
    schema = identifier(block.dataset)
    warehouse = identifier(connector.warehouse)
    credentials = connector.credentials
    account = credentials.account

    def connect() -> Connection:
        # A fresh connection per step (closed after it), with the block's database and schema.
        # autocommit=True explicitly: a saved credentials block carries ``autocommit: null`` (or a
        # user's False), and every statement outside publish's BEGIN … COMMIT must commit itself.
        client: Connection = credentials.get_client(
            database=database, schema=schema, warehouse=warehouse, autocommit=True
        )
        return client

    if block.inherited_warehouse_size():
        _warn_once(
            f"TripWarehouse block {block._block_document_name!r}: warehouse_size "
            f"{block.warehouse_size} was saved while it was the default, so every run resizes "
            f"Snowflake warehouse {warehouse} to it (a shared warehouse sized by someone else is "
            "shrunk). Save the block again: with warehouse_size=None to leave the size alone, or "
            "with the size you want (README, 'Snowflake')."
        )
    return SnowflakeWarehouse(
        connect,
        schema=schema,
        stage_name=block.stage_name,
        stage_url=block.stage_url,
        statement_timeout_s=block.statement_timeout_s,
        warehouse=warehouse,
        warehouse_size=block.warehouse_size,
        description=f"snowflake:{account}/{database}.{schema}",
    )


def _warn_once(message: str) -> None:
    """Warn in the run's log (Prefect's run logger inside a run, this module's logger outside)."""
    if message in _WARNED:
        return
    _WARNED.add(message)
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        get_run_logger().warning(message)
    except MissingContextError:
        log.warning(message)
