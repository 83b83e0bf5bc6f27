"""PostgreSQL: one business day of a trips table, streamed in bounded memory into raw Parquet parts.

``--source postgres`` (or ``postgres:SCHEMA.TABLE``) reads the DSN from the Prefect ``Secret`` block
that ``postgres_dsn_block`` names, or else from ``TRIPFLOW_POSTGRES_DSN`` (``tasks.config``); the
DSN and its password never appear in a description, fingerprint, log line or error (those name
``user@host:port/database`` and the table). Point it at a read replica: a day's scan is a
sequential read of the day's rows, which belongs on a replica, not the production primary.

How a day is read:

- one ``REPEATABLE READ READ ONLY`` transaction, so the day is one consistent snapshot even while
  the application writes; ``statement_timeout`` bounds it server-side and ``application_name``
  (``tripflow``) tells the DBA who is reading;
- an index-friendly range on the pickup timestamp: ``pickup_ts >= D AND pickup_ts < D+1``, the
  day's midnights in the source timezone (as instants for ``timestamptz``, as wall clocks for a
  ``timestamp`` column, whose values are read as wall clocks in the source timezone);
- ADBC's PostgreSQL driver streams the result as Arrow record batches (it reads PostgreSQL's binary
  COPY in C++, without the GIL); batches are gathered into parts of ``chunk_rows`` rows, and a
  second thread turns each part into raw Parquet (PII hashed, lineage added) while the next one is
  read. At most two parts are in memory, whatever the day's size.

Measured against psycopg's ``COPY … (FORMAT csv)`` parsed by Arrow's CSV reader (the other
candidate): on a 4M-trip day the same extract took 24 s with psycopg (a Python call per row holds
the GIL against the part writer) and 6.5 s with ADBC (see ``bench/POSTGRES.md``).

Table and column names are configurable (default ``public.trips`` in the contract's own names), are
checked to be plain identifiers and are always quoted. Before anything is read the table and every
mapped column must exist with a usable type: otherwise a ``SchemaError`` names them. A server that
is down or refuses the login is retried with backoff, then an ``InfrastructureError`` names host and
database.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar
from zoneinfo import ZoneInfo

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc
import polars as pl
import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tasks.contract import CONTRACT_COLUMNS
from tasks.errors import InfrastructureError, SchemaError, UsageError, describe_value
from tasks.formats import MAX_ABS_NUMBER
from tasks.metrics import rows_done
from tasks.sources.base import EMPTY_STATS, ExtractStats, HashEmail, PartWriter, raw_part_writer
from tasks.transforms import to_raw, value_fingerprint

T = TypeVar("T")

DEFAULT_TABLE: Final = "public.trips"
APPLICATION_NAME: Final = "tripflow"
#: Rows a part: two parts are in memory at once (one read, one written). Since the transform runs
#: in the extract's pass (``tasks.streamed_transform``), parts of 500k rows peaked at ~870 MB for
#: the two stages on an 8M-trip day, 250k at ~640 MB, in the same time (24.8-26.8 s both).
CHUNK_ROWS: Final = 250_000
#: The size of the Arrow record batches the driver hands over (a part is a few of them).
BATCH_BYTES: Final = 8 << 20
BATCH_SIZE_HINT_BYTES: Final = "adbc.postgresql.batch_size_hint_bytes"
#: Seconds to wait before each retry of a failed connection (three retries, then give up).
RETRY_DELAYS: Final = (1.0, 3.0, 9.0)
STATEMENT_TIMEOUT_S: Final = 3600

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
REQUIRED_COLUMNS: Final = ("trip_id", "pickup_ts", "distance_km", "fare_usd", "region")
TIMESTAMP_COLUMNS: Final = ("pickup_ts", "dropoff_ts")
NUMBER_COLUMNS: Final = ("distance_km", "fare_usd")
#: Number types the day's query reads as they are; the others are cast to ``float8`` by the server
#: (an integer's cast is cheap). A ``numeric`` whose declared precision and scale fit a float8
#: (``numeric(10, 2)``, see ``FLOAT8_SAFE_DIGITS``) is cast too: PostgreSQL formats it as text and
#: parses it back (~1.2 CPU-s of the server for an 8M-trip day), where reading it in binary cost the
#: driver ~4 CPU-s writing it out as decimal text and the client more parsing it — with the
#: transform in the extract's pass, the two stages measured 0.3-1.5 s faster and ~4 CPU-s lighter
#: (bench/README.md). An unconstrained ``numeric`` (which may hold 1e400, beyond a float8: the
#: server's cast would fail the whole read) crosses in binary and is parsed by the client
#: (``_contract``). Both parses round correctly, so the floats are the same.
NUMBERS_READ_AS_THEY_ARE: Final = frozenset({"double precision", "numeric"})
#: A declared ``numeric(p, s)`` casts to float8 without overflow or underflow when it has at most
#: this many digits before the point (p - s) and after it (s).
FLOAT8_SAFE_DIGITS: Final = 300
_DECLARED_NUMERIC = re.compile(r"^numeric\((\d+),(-?\d+)\)$")


def fits_float8(declared: str | None) -> bool:
    """Whether a column's declared type (``format_type`` with its modifier) is a ``numeric(p, s)``
    whose every value converts to float8 without overflow or underflow."""
    found = _DECLARED_NUMERIC.match(declared or "")
    if found is None:
        return False
    precision, scale = int(found[1]), int(found[2])
    return precision - scale <= FLOAT8_SAFE_DIGITS and scale <= FLOAT8_SAFE_DIGITS


NUMBER_TYPES: Final = frozenset(
    {"smallint", "integer", "bigint", "real", "double precision", "numeric"}
)
TIMESTAMP_TYPES: Final = frozenset({"timestamp with time zone", "timestamp without time zone"})

#: The table ``seed-postgres`` creates (the contract's names and natural PostgreSQL types).
TABLE_DDL: Final = """
    trip_id text NOT NULL,
    pickup_ts timestamptz,
    dropoff_ts timestamptz,
    distance_km double precision,
    fare_usd numeric(10, 2),
    region text,
    rider_id text,
    rider_email text,
    driver_id text,
    payment_type text,
    status text
"""


# --------------------------------------------------------------------------------------------
# Names and connections
# --------------------------------------------------------------------------------------------


def parse_table(name: str) -> tuple[str, str]:
    """``schema.table`` or ``table`` (schema ``public``), each part a plain identifier."""
    parts = name.strip().split(".")
    if len(parts) == 1:
        parts = ["public", parts[0]]
    if len(parts) != 2 or not all(IDENTIFIER.match(p) for p in parts):
        raise UsageError(
            f"postgres table {name!r}: expected SCHEMA.TABLE of plain identifiers "
            "(letters, digits, _ and $, not starting with a digit)"
        )
    return parts[0], parts[1]


def parse_columns(items: Sequence[str]) -> dict[str, str | None]:
    """Contract column -> table column; ``name=`` maps a contract column to nothing (NULL)."""
    mapping: dict[str, str | None] = {name: name for name in CONTRACT_COLUMNS}
    for item in items:
        contract, sep, column = item.partition("=")
        contract, column = contract.strip(), column.strip()
        if not sep or contract not in CONTRACT_COLUMNS:
            raise UsageError(
                f"postgres column mapping {item!r}: expected CONTRACT=COLUMN with CONTRACT one of "
                + ", ".join(CONTRACT_COLUMNS)
            )
        if not column:
            if contract in REQUIRED_COLUMNS:
                raise UsageError(f"postgres column mapping {item!r}: {contract} is required")
            mapping[contract] = None
            continue
        if not IDENTIFIER.match(column):
            raise UsageError(f"postgres column mapping {item!r}: {column!r} is not an identifier")
        mapping[contract] = column
    return mapping


@dataclass(frozen=True)
class Target:
    """Where a DSN points, without its secrets: safe to show anywhere."""

    host: str
    port: str
    database: str
    user: str

    @classmethod
    def of(cls, dsn: str) -> Target:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            # The message may quote the DSN: say only that it is malformed.
            raise UsageError("the PostgreSQL DSN is not a valid libpq DSN or URL") from None
        return cls(
            host=str(params.get("host") or params.get("hostaddr") or "localhost"),
            port=str(params.get("port") or "5432"),
            database=str(params.get("dbname") or params.get("user") or ""),
            user=str(params.get("user") or ""),
        )

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{user}{self.host}:{self.port}/{self.database}"


def _scrub(text: str, dsn: str) -> str:
    """A server or driver message with the DSN and any password cut out."""
    secrets = [dsn]
    with contextlib.suppress(psycopg.ProgrammingError):
        password = conninfo_to_dict(dsn).get("password")
        if password:
            secrets.append(str(password))
    for secret in secrets:
        text = text.replace(secret, "***")
    return " ".join(text.split())


def conninfo(dsn: str, statement_timeout_s: float) -> str:
    """The DSN plus ``application_name=tripflow``, a statement timeout, UTC, a connect timeout."""
    params = conninfo_to_dict(dsn)
    timeout_ms = 0 if statement_timeout_s <= 0 else max(1, round(statement_timeout_s * 1000))
    return make_conninfo(
        dsn,
        application_name=APPLICATION_NAME,
        options=f"-c statement_timeout={timeout_ms} -c TimeZone=UTC",
        connect_timeout=params.get("connect_timeout") or 10,
    )


def with_retries(
    dsn: str,
    open_connection: Callable[[str], T],
    errors: tuple[type[BaseException], ...],
    retry_delays: Sequence[float],
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``open_connection(dsn)``, retried with backoff on ``errors``.

    Every failure to connect (down, refused, bad login) is retried; the last one becomes an
    ``InfrastructureError`` naming host and database, never the password.
    """
    target = Target.of(dsn)
    attempts = len(retry_delays) + 1
    for attempt in range(attempts):
        try:
            return open_connection(dsn)
        except errors as exc:
            if attempt + 1 < attempts:
                sleep(retry_delays[attempt])
                continue
            reason = _scrub(str(exc), dsn)
            raise InfrastructureError(
                f"PostgreSQL source: cannot connect to host {target.host} port {target.port} "
                f"database {target.database} as user {target.user or '(default)'} after "
                f"{attempts} attempts: {reason}"
            ) from None
    raise AssertionError("unreachable")


def connect(
    dsn: str,
    *,
    statement_timeout_s: float = STATEMENT_TIMEOUT_S,
    retry_delays: Sequence[float] = RETRY_DELAYS,
) -> psycopg.Connection[Any]:
    """A psycopg connection (seeding, tests), retried like the source's own."""
    info = conninfo(dsn, statement_timeout_s)
    return with_retries(
        dsn, lambda _: psycopg.connect(info), (psycopg.OperationalError,), retry_delays
    )


def connect_adbc(
    dsn: str,
    *,
    statement_timeout_s: float = STATEMENT_TIMEOUT_S,
    retry_delays: Sequence[float] = RETRY_DELAYS,
) -> adbc.Connection:
    """An ADBC connection, for the source's reads (Arrow batches over PostgreSQL's binary COPY)."""
    info = conninfo(dsn, statement_timeout_s)
    return with_retries(
        dsn,
        lambda _: adbc.connect(info, autocommit=False),
        (adbc_driver_manager.OperationalError, adbc_driver_manager.InternalError),
        retry_delays,
    )


# --------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Column:
    contract: str
    column: str | None
    pg_type: str | None
    declared: str | None = None  # with its modifier, e.g. numeric(10,2)


class PostgresSource:
    def __init__(
        self,
        dsn: str | None,
        *,
        table: str = DEFAULT_TABLE,
        columns: Sequence[str] = (),
        timezone: str,
        region_set: frozenset[str] | None,
        statement_timeout_s: float = STATEMENT_TIMEOUT_S,
        chunk_rows: int = CHUNK_ROWS,
        batch_bytes: int = BATCH_BYTES,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self._dsn = dsn
        self.batch_bytes = batch_bytes
        self.schema, self.table = parse_table(table)
        self.columns = parse_columns(columns)
        self.timezone = timezone
        self.region_set = region_set
        self.statement_timeout_s = statement_timeout_s
        self.chunk_rows = max(1, chunk_rows)
        self.retry_delays = tuple(retry_delays)
        self.target = Target.of(dsn) if dsn else None
        where = str(self.target) if self.target else "(no DSN configured)"
        self.description = f"postgres {where} table {self.schema}.{self.table}"
        #: The snapshot the last extract read (``pg_current_snapshot()``), for the fingerprint.
        self.snapshot: str | None = None

    def __repr__(self) -> str:
        return f"PostgresSource({self.description!r})"

    def fingerprint(self) -> str:
        mapping = ",".join(f"{k}={v or ''}" for k, v in self.columns.items())
        text = f"postgres:{self.target}:{self.schema}.{self.table}:{mapping}:{self.timezone}"
        text += f":{self.snapshot or ''}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _dsn_or_fail(self) -> str:
        if not self._dsn:
            raise UsageError(
                "--source postgres needs a DSN: a Prefect Secret block named by "
                "postgres_dsn_block (TRIPFLOW_POSTGRES_DSN_BLOCK), or TRIPFLOW_POSTGRES_DSN"
            )
        return self._dsn

    # ---- the schema check -----------------------------------------------------------------

    def _describe(self, cur: Any) -> list[_Column]:
        cur.execute(
            "SELECT a.attname::text, format_type(a.atttypid, NULL), "
            "format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a "
            "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
            (self.schema, self.table),
        )
        rows = cur.fetchall()
        types = {str(name): str(kind) for name, kind, _ in rows}
        declared = {str(name): str(full) for name, _, full in rows}
        qualified = f"{self.schema}.{self.table}"
        where = f"PostgreSQL {self.target} table {qualified}"
        if not types:
            raise SchemaError(f"the table does not exist: {qualified}", file=where)
        described = []
        for contract, column in self.columns.items():
            if column is None:
                described.append(_Column(contract, None, None))
                continue
            kind = types.get(column)
            if kind is None:
                raise SchemaError(
                    f"a column is missing from {qualified}: {column}", file=where, column=column
                )
            wanted = (
                TIMESTAMP_TYPES
                if contract in TIMESTAMP_COLUMNS
                else NUMBER_TYPES
                if contract in NUMBER_COLUMNS
                else None
            )
            if wanted is not None and kind not in wanted:
                raise SchemaError(
                    f"column {column} has type {kind}, expected one of {', '.join(sorted(wanted))}",
                    file=where,
                    column=column,
                )
            described.append(_Column(contract, column, kind, declared[column]))
        return described

    # ---- the query --------------------------------------------------------------------------

    def day_bounds(self, run_date: date, aware: bool) -> tuple[datetime, datetime]:
        """The day's two midnights: UTC instants (``timestamptz``) or local wall clocks."""
        start = datetime(run_date.year, run_date.month, run_date.day)
        end = start + timedelta(days=1)
        if not aware:
            return start, end
        tz = ZoneInfo(self.timezone)
        utc = ZoneInfo("UTC")
        return (
            start.replace(tzinfo=tz).astimezone(utc),
            end.replace(tzinfo=tz).astimezone(utc),
        )

    def query(self, run_date: date, described: list[_Column]) -> str:
        """``SELECT … FROM table WHERE pickup_ts >= D AND pickup_ts < D+1`` (an index range)."""
        items: list[sql.Composable] = []
        for col in described:
            alias = sql.Identifier(col.contract)
            if col.column is None:
                null_type = "timestamptz" if col.contract in TIMESTAMP_COLUMNS else "text"
                items.append(sql.SQL("NULL::{} AS {}").format(sql.SQL(null_type), alias))
                continue
            ident = sql.Identifier(col.column)
            if col.contract in NUMBER_COLUMNS and (
                col.pg_type not in NUMBERS_READ_AS_THEY_ARE or fits_float8(col.declared)
            ):
                items.append(sql.SQL("{}::float8 AS {}").format(ident, alias))
            elif (
                col.contract in NUMBER_COLUMNS  # see NUMBERS_READ_AS_THEY_ARE
                or col.contract in TIMESTAMP_COLUMNS
                or col.pg_type in ("text", "character varying")
            ):
                items.append(sql.SQL("{} AS {}").format(ident, alias))
            else:
                items.append(sql.SQL("{}::text AS {}").format(ident, alias))
        pickup = next(c for c in described if c.contract == "pickup_ts")
        aware = pickup.pg_type == "timestamp with time zone"
        start, end = self.day_bounds(run_date, aware)
        bound_type = sql.SQL("timestamptz" if aware else "timestamp")
        return (
            sql.SQL(
                "SELECT {items} FROM {table} WHERE {pickup} >= {start}::{bound_type} "
                "AND {pickup} < {end}::{bound_type}"
            )
            .format(
                items=sql.SQL(", ").join(items),
                table=sql.Identifier(self.schema, self.table),
                pickup=sql.Identifier(str(pickup.column)),
                start=sql.Literal(start.isoformat(sep=" ")),
                end=sql.Literal(end.isoformat(sep=" ")),
                bound_type=bound_type,
            )
            .as_string(None)
        )

    # ---- streaming ---------------------------------------------------------------------------

    def _contract(
        self, batches: list[pa.RecordBatch], first_row: int, described: list[_Column]
    ) -> pl.LazyFrame:
        table = pa.Table.from_batches(batches)
        for i, field in enumerate(table.schema):
            if isinstance(field.type, pa.BaseExtensionType):  # numeric: the driver's decimal text
                storage = [chunk.storage for chunk in table.column(i).chunks]
                table = table.set_column(
                    i, field.name, pa.chunked_array(storage, type=field.type.storage_type)
                )
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        tz = self.timezone
        stamps = []
        for col in described:
            if col.contract not in TIMESTAMP_COLUMNS:
                continue
            expr = pl.col(col.contract)
            if col.pg_type == "timestamp without time zone":
                # A wall clock in the source timezone (like a file's naive timestamps).
                expr = expr.cast(pl.Datetime("us")).dt.replace_time_zone(
                    tz, ambiguous="earliest", non_existent="null"
                )
            elif frame.schema[col.contract] == pl.Datetime("us"):
                expr = expr.dt.replace_time_zone("UTC")
            stamps.append(expr.dt.convert_time_zone("UTC").cast(pl.Datetime("us", "UTC")))
        return (
            frame.lazy()
            .with_columns(stamps)
            .with_columns(
                *[pl.col(n).cast(t) for n, t in CONTRACT_COLUMNS.items()],
                trip_date=pl.col("pickup_ts").dt.convert_time_zone(tz).dt.date(),
                _source_row=pl.int_range(first_row, first_row + pl.len(), dtype=pl.Int64),
                _pickup_given=pl.lit(True),
            )
        )

    def _check_numbers(
        self, frame: pl.LazyFrame, described: list[_Column], fingerprint: Callable[[str], str]
    ) -> None:
        """A number that is not finite or is 10^12 or more in magnitude (``NaN``, ``Infinity``,
        which ``numeric`` and ``double precision`` hold) cannot be read as the contract's number,
        as in a file: a ``SchemaError`` naming the table, the column and the row (its position in
        the day's read), describing the value without quoting it."""
        mapped = [c for c in described if c.contract in NUMBER_COLUMNS and c.column is not None]
        if not mapped:
            return
        bad = {
            c.contract: pl.col(c.contract).is_not_null()
            & ~(pl.col(c.contract).is_finite() & (pl.col(c.contract).abs() < MAX_ABS_NUMBER))
            for c in mapped
        }
        probe = frame.select(
            *[pl.col("_source_row").filter(b).first().alias(f"{n}__row") for n, b in bad.items()],
            *[
                pl.col(n).filter(b).first().cast(pl.String).alias(f"{n}__value")
                for n, b in bad.items()
            ],
        ).collect()
        for col in mapped:
            row = probe[f"{col.contract}__row"][0]
            if row is not None:
                raise SchemaError(
                    "a value cannot be read as float",
                    file=f"PostgreSQL {self.target} table {self.schema}.{self.table}",
                    column=col.column,
                    row=int(row),
                    value=describe_value(probe[f"{col.contract}__value"][0], fingerprint),
                )

    def extract(self, run_date: date, out_dir: Path, hash_email: HashEmail) -> ExtractStats:
        return self.extract_parts(run_date, hash_email, raw_part_writer(out_dir))

    def extract_parts(
        self, run_date: date, hash_email: HashEmail, write_part: PartWriter
    ) -> ExtractStats:
        dsn = self._dsn_or_fail()
        source_name = f"postgres:{self.target}/{self.schema}.{self.table}"
        conn = connect_adbc(
            dsn, statement_timeout_s=self.statement_timeout_s, retry_delays=self.retry_delays
        )
        try:
            with conn.cursor() as cur:
                # The driver has opened the transaction; nothing has run in it yet.
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                described = self._describe(cur)
                cur.execute("SELECT pg_current_snapshot()::text")
                row = cur.fetchone()
                self.snapshot = None if row is None else str(row[0])
                cur.adbc_statement.set_options(
                    **{BATCH_SIZE_HINT_BYTES: str(max(1, self.batch_bytes))}
                )
                cur.execute(self.query(run_date, described))
                reader = cur.fetch_record_batch()
                return self._stream(
                    reader, run_date, write_part, hash_email, source_name, described
                )
        except adbc_driver_manager.Error as exc:
            reason = _scrub(str(exc), dsn)
            if getattr(exc, "sqlstate", None) == "57014":
                raise InfrastructureError(
                    f"PostgreSQL source {self.target}: the day's query was cancelled "
                    f"(statement_timeout {self.statement_timeout_s} s): {reason}"
                ) from None
            raise InfrastructureError(
                f"PostgreSQL source {self.target}: reading {self.schema}.{self.table} "
                f"failed: {reason}"
            ) from None
        finally:
            with contextlib.suppress(adbc_driver_manager.Error):
                conn.rollback()
            with contextlib.suppress(adbc_driver_manager.Error):
                conn.close()

    def _read(self, reader: pa.RecordBatchReader) -> Iterator[pa.RecordBatch]:
        """The reader's batches; a failure on the wire is an ``InfrastructureError``."""
        batches = iter(reader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (OSError, pa.ArrowException) as exc:
                reason = _scrub(str(exc), self._dsn or "")
                timeout = self.statement_timeout_s
                what = (
                    f"the day's query was cancelled (statement_timeout {timeout} s)"
                    if "statement timeout" in reason
                    else f"reading {self.schema}.{self.table} failed"
                )
                raise InfrastructureError(
                    f"PostgreSQL source {self.target}: {what}: {reason}"
                ) from None
            yield batch

    def _stream(
        self,
        reader: pa.RecordBatchReader,
        run_date: date,
        sink: PartWriter,
        hash_email: HashEmail,
        source_name: str,
        described: list[_Column],
    ) -> ExtractStats:
        # A second thread writes each part (Polars and Parquet release the GIL) while the next one
        # is read. A part is handed over only once the one before is written (``room``), so at
        # most two parts are ever in memory (one written, one read), whatever the day's size.
        todo: queue.Queue[tuple[int, list[pa.RecordBatch], int] | None] = queue.Queue()
        room = threading.Semaphore(1)
        failure: list[BaseException] = []

        fingerprint = value_fingerprint(hash_email)

        def write_part(part: int, batches: list[pa.RecordBatch], first: int) -> None:
            frame = self._contract(batches, first, described)
            self._check_numbers(frame, described, fingerprint)
            sink(to_raw(frame, run_date, source_name, hash_email), part)
            rows_done("extract", sum(batch.num_rows for batch in batches))

        def writer() -> None:
            while True:
                item = todo.get()
                if item is None:
                    return
                try:
                    if not failure:
                        write_part(*item)
                except BaseException as exc:
                    failure.append(exc)
                finally:
                    item = None  # drop the part before waiting for the next one
                    room.release()

        thread = threading.Thread(target=writer, name="tripflow-pg-parts", daemon=True)
        thread.start()
        total = parts = 0
        pending: list[pa.RecordBatch] = []
        pending_rows = 0

        def hand_over() -> None:
            nonlocal total, parts, pending, pending_rows
            room.acquire()  # wait until the writer has finished the part before
            todo.put((parts, pending, total + 1))
            parts, total = parts + 1, total + pending_rows
            pending, pending_rows = [], 0

        try:
            for batch in self._read(reader):
                if failure:
                    break
                pending.append(batch)
                pending_rows += batch.num_rows
                if pending_rows >= self.chunk_rows:
                    hand_over()
            if pending_rows and not failure:
                hand_over()
        finally:
            todo.put(None)
            thread.join()
        if failure:
            raise failure[0]
        return ExtractStats(total, total, 0, 0, 1) if total else EMPTY_STATS


# --------------------------------------------------------------------------------------------
# Seeding (demos and benchmarks)
# --------------------------------------------------------------------------------------------


def seed(
    dsn: str,
    run_date: date,
    rows: int,
    *,
    table: str = DEFAULT_TABLE,
    timezone: str = "UTC",
    seed_value: int = 42,
    chunk_rows: int = 500_000,
    progress: Callable[[int], None] | None = None,
    riders: int | None = None,
) -> int:
    """Fill ``table`` with ``rows`` synthetic trips for ``run_date`` (replacing that day's rows).

    Creates the table and its index on ``pickup_ts`` if needed; the rows come from the synthetic
    generator (the same trips ``--source synthetic`` makes) and go in by ``COPY FROM STDIN``.
    ``riders``: the generator's rider pool (default: one per 4 trips; ``>= rows``: one per trip).
    """
    from tasks.sources.synthetic import generate_chunk

    schema, name = parse_table(table)
    ident = sql.Identifier(schema, name)
    columns = list(CONTRACT_COLUMNS)
    start, end = PostgresSource(dsn, table=table, timezone=timezone, region_set=None).day_bounds(
        run_date, aware=True
    )
    with connect(dsn, statement_timeout_s=0, retry_delays=(1.0, 3.0)) as conn:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (" + TABLE_DDL + ")").format(ident))
            cur.execute(
                sql.SQL("DELETE FROM {} WHERE pickup_ts >= %s AND pickup_ts < %s").format(ident),
                (start, end),
            )
            copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
                ident, sql.SQL(", ").join(sql.Identifier(c) for c in columns)
            )
            done = 0
            with cur.copy(copy_sql) as copy:
                for offset in range(0, rows, chunk_rows):
                    count = min(chunk_rows, rows - offset)
                    chunk = generate_chunk(
                        run_date,
                        start=offset,
                        count=count,
                        total=rows,
                        seed=seed_value,
                        timezone=timezone,
                        riders=riders,
                    ).select(columns)
                    copy.write(
                        chunk.write_csv(
                            include_header=False, datetime_format="%Y-%m-%d %H:%M:%S%.6f%z"
                        ).encode()
                    )
                    done += count
                    if progress:
                        progress(done)
            index = sql.Identifier(f"{name}_pickup_ts_idx")
            cur.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (pickup_ts)").format(index, ident)
            )
        conn.commit()
        conn.autocommit = True
        conn.execute(sql.SQL("VACUUM ANALYZE {}").format(ident))
    return rows
