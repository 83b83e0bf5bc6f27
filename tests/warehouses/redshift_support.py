"""Stand-ins for the Redshift tests (named as such; nothing here is Redshift itself).

1. ``MotoRedshift``: moto's ``ThreadedMotoServer`` on 127.0.0.1, a stand-in for **S3** and the
   **Redshift Data API** (the real boto3 client sends its real HTTP requests to it). moto's
   ``redshift-data`` only records statements: it runs no SQL, leaves every statement ``STARTED``
   forever, has no ``batch_execute_statement`` and answers ``get_statement_result`` with a fixed
   address book. This module extends it **in-process** (the server runs in a thread of the test
   process) and says so here:

   - ``batch_execute_statement``: recorded as one statement, its SQLs as sub-statements;
   - every request's full body (WorkgroupName, Parameters, ExecutionMode, StatementName…) is
     recorded, since moto keeps only some fields;
   - a statement ends after ``polls_to_finish`` ``describe_statement`` calls, as FINISHED, or as
     FAILED with an error text when a test-given rule says so (then ``Error`` is in the answer), or
     never (for the timeout path); ``cancel_statement`` is moto's own (-> ABORTED);
   - ``get_statement_result`` answers rows a test gives explicitly (canned, and labelled so where
     used), in pages of ``page_size`` records with ``NextToken``;
   - or, with an ``engine`` (a ``PostgresDataApi``, below) attached, a statement that ends is
     **run on the real PostgreSQL** (a batch as one transaction, a query's rows kept for
     ``get_statement_result``), FINISHED or FAILED with PostgreSQL's error. It then runs when the
     statement ends, not when it is submitted: ``finish_started()`` ends the statements whose
     client is gone, as Redshift finishes a submitted batch whether or not anyone polls it.

   It models none of Redshift's SQL, COPY, transactions or IAM: those are proven on PostgreSQL.

2. ``PostgresDataApi``: a second implementation of the warehouse's transport seam
   (``tasks.warehouses.redshift.Transport``) on a real PostgreSQL, a stand-in for the Data API
   *transport*: the warehouse's own SQL constants run for real. Explicit, small translations:
   Redshift-only table attributes (``DISTKEY``, ``DISTSTYLE``, ``SORTKEY``, ``ENCODE``) are
   stripped, ``SUPER`` becomes ``JSONB``, ``:name`` parameters become psycopg's ``%(name)s``, a
   batch runs as one SERIALIZABLE transaction (Redshift's only isolation level), and Redshift's
   ``COPY … FORMAT AS PARQUET … MANIFEST`` (which PostgreSQL lacks) is carried out by the stand-in
   itself: it reads the COPY manifest and the Parquet files it lists from S3 (moto), checks
   ``mandatory`` and ``content_length`` and the column count as Redshift does, and bulk-loads the
   rows in file column order (positional, like Redshift) with PostgreSQL's ``COPY FROM STDIN``
   inside the batch's transaction. Query results come back as the Data API types them (numbers as
   numbers; DECIMAL, DATE and TIMESTAMPTZ as text).
"""

from __future__ import annotations

import io
import json
import re
import socket
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pyarrow.parquet as pq
from moto.core import DEFAULT_ACCOUNT_ID
from moto.redshiftdata.models import Statement, redshiftdata_backends
from moto.redshiftdata.responses import RedshiftDataAPIServiceResponse
from moto.server import ThreadedMotoServer

from tasks.errors import InfrastructureError
from tasks.warehouses.redshift import MAX_BATCH_STATEMENTS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pg"))

from pgserver import ThrowawayPostgres  # tests/pg is not a package

__all__ = ["MotoRedshift", "PostgresDataApi", "ThrowawayPostgres", "to_postgres"]

REGION = "us-east-1"
#: moto accepts any key pair; the secret is distinctive so tests can prove it never leaks.
ACCESS_KEY_ID = "AKIATESTSTANDIN00001"
SECRET_ACCESS_KEY = "moto-Secret-Never-In-Logs-9f8e7d"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- 1. moto --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How a recorded statement ends: FINISHED, FAILED (with ``error``) or never (``None``)."""

    status: str | None = "FINISHED"
    error: str | None = None
    #: For a FAILED batch: which statement (1-based) failed; those after it are ABORTED.
    failed_statement: int | None = None


@dataclass
class MotoRedshift:
    endpoint: str
    server: ThreadedMotoServer
    #: Every Data API request the server received: (operation, request body).
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: describe_statement calls per statement id.
    polls: dict[str, int] = field(default_factory=dict)
    polls_to_finish: int = 2
    #: Decides each statement's outcome from its SQL (joined with newlines for a batch).
    rule: Callable[[str], Outcome] = field(default=lambda sql: Outcome())
    #: Rows ``get_statement_result`` answers, chosen from the statement's SQL (canned!).
    results: Callable[[str], list[list[dict[str, Any]]]] = field(default=lambda sql: [])
    page_size: int = 2
    #: Every get_statement_result request: (statement id, NextToken).
    pages: list[tuple[str, str | None]] = field(default_factory=list)
    #: Runs each statement when it ends (real SQL on PostgreSQL) instead of ``rule``/``results``.
    engine: PostgresDataApi | None = None
    #: The engine's result rows per statement id, as Data API records.
    engine_rows: dict[str, list[list[dict[str, Any]]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def backend(self) -> Any:
        """moto's in-process redshift-data backend (the statements it recorded)."""
        return redshiftdata_backends[DEFAULT_ACCOUNT_ID][REGION]

    def statements(self) -> list[Statement]:
        return list(self.backend.statements.values())

    def sqls(self, operation: str) -> list[Any]:
        """The ``Sql`` (execute) or ``Sqls`` (batch) of every request of ``operation``."""
        key = "Sqls" if operation == "batch_execute_statement" else "Sql"
        return [body[key] for op, body in self.requests if op == operation]

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def reset(self) -> None:
        self.requests.clear()
        self.polls.clear()
        self.pages.clear()
        self.page_size = 2
        self.backend.statements.clear()
        self.polls_to_finish = 2
        self.rule = lambda sql: Outcome()
        self.results = lambda sql: []
        self.engine = None
        self.engine_rows.clear()

    def run_on_engine(self, statement: Statement) -> None:
        """End ``statement`` by running it on the engine (PostgreSQL): FINISHED or FAILED."""
        assert self.engine is not None
        params = {p["name"]: p["value"] for p in statement.query_parameters or []}
        rows: list[tuple[Any, ...]] = []
        try:
            if statement.sub_statements:
                self.engine.batch(statement.sub_statements, params, purpose="stand-in batch")
            else:
                rows = self.engine.query(statement.query_string, params, purpose="stand-in")
        except InfrastructureError as exc:
            statement.status = "FAILED"
            statement.error = str(exc)
            statement.failed_statement = None
            return
        self.engine_rows[statement.id] = [[_record_field(v) for v in row] for row in rows]
        statement.has_result_set = not statement.sub_statements
        statement.status = "FINISHED"

    def finish_started(self) -> int:
        """End every statement still STARTED (its client gone) on the engine; how many."""
        started = [st for st in self.statements() if st.status == "STARTED"]
        for statement in started:
            self.run_on_engine(statement)
        return len(started)

    def stop(self) -> None:
        self.server.stop()


_ACTIVE: list[MotoRedshift] = []


def _stand_in() -> MotoRedshift:
    return _ACTIVE[-1]


def _record(response: RedshiftDataAPIServiceResponse, operation: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response.body or "{}")
    with _stand_in()._lock:
        _stand_in().requests.append((operation, body))
    return body


def _execute_statement(self: RedshiftDataAPIServiceResponse) -> Any:
    _record(self, "execute_statement")
    return _ORIGINAL_EXECUTE(self)


def _batch_execute_statement(self: RedshiftDataAPIServiceResponse) -> Any:
    body = _record(self, "batch_execute_statement")
    statement = self.redshiftdata_backend.execute_statement(
        cluster_identifier=body.get("ClusterIdentifier"),
        database=body.get("Database"),
        db_user=body.get("DbUser"),
        parameters=body.get("Parameters"),
        secret_arn=body.get("SecretArn"),
        sql="\n".join(body["Sqls"]),
    )
    statement.sub_statements = list(body["Sqls"])
    return 200, {}, json.dumps({"Id": statement.id, "CreatedAt": statement.created_at})


def _describe_statement(self: RedshiftDataAPIServiceResponse) -> Any:
    stand_in = _stand_in()
    statement = self.redshiftdata_backend.describe_statement(self._get_param("Id"))
    with stand_in._lock:
        stand_in.polls[statement.id] = stand_in.polls.get(statement.id, 0) + 1
        polls = stand_in.polls[statement.id]
    if statement.status == "STARTED" and polls >= stand_in.polls_to_finish and stand_in.engine:
        stand_in.run_on_engine(statement)
    elif statement.status == "STARTED" and polls >= stand_in.polls_to_finish:
        outcome = stand_in.rule(statement.query_string)
        if outcome.status is not None:
            statement.status = outcome.status
            statement.error = outcome.error
            statement.failed_statement = outcome.failed_statement
            statement.has_result_set = outcome.status == "FINISHED" and bool(
                stand_in.results(statement.query_string)
            )
    answer = dict(statement)
    failed = getattr(statement, "failed_statement", None)
    answer["SubStatements"] = []
    for n, sql in enumerate(statement.sub_statements, start=1):
        sub = {"Id": f"{statement.id}:{n}", "QueryString": sql, "Status": statement.status}
        if failed is not None:
            sub["Status"] = "FINISHED" if n < failed else "FAILED" if n == failed else "ABORTED"
            if n == failed:
                sub["Error"] = statement.error
        answer["SubStatements"].append(sub)
    if getattr(statement, "error", None):
        answer["Error"] = statement.error
    return 200, {}, json.dumps(answer)


def _get_statement_result(self: RedshiftDataAPIServiceResponse) -> Any:
    stand_in = _stand_in()
    statement = self.redshiftdata_backend.describe_statement(self._get_param("Id"))
    if stand_in.engine is not None:
        records = stand_in.engine_rows.get(statement.id, [])
    else:
        records = stand_in.results(statement.query_string)
    token = self._get_param("NextToken")
    stand_in.pages.append((statement.id, token))
    start = int(token or 0)
    page = records[start : start + stand_in.page_size]
    answer: dict[str, Any] = {"Records": page, "TotalNumberRows": len(records)}
    if start + stand_in.page_size < len(records):
        answer["NextToken"] = str(start + stand_in.page_size)
    return 200, {}, json.dumps(answer)


_ORIGINAL_EXECUTE = RedshiftDataAPIServiceResponse.execute_statement
#: The response handlers this module replaces or adds while a stand-in runs.
_EXTENSIONS: dict[str, Any] = {
    "execute_statement": _execute_statement,
    "batch_execute_statement": _batch_execute_statement,
    "describe_statement": _describe_statement,
    "get_statement_result": _get_statement_result,
}
_ORIGINALS: dict[str, Any] = {
    name: RedshiftDataAPIServiceResponse.__dict__.get(name) for name in _EXTENSIONS
}


def start_moto() -> MotoRedshift:
    """Start moto on 127.0.0.1 (a free port) with this module's redshift-data extensions."""
    for name, handler in _EXTENSIONS.items():
        setattr(RedshiftDataAPIServiceResponse, name, handler)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    stand_in = MotoRedshift(f"http://127.0.0.1:{port}", server)
    _ACTIVE.append(stand_in)
    return stand_in


def stop_moto(stand_in: MotoRedshift) -> None:
    stand_in.stop()
    _ACTIVE.remove(stand_in)
    if not _ACTIVE:  # moto's own handlers back (batch_execute_statement: none)
        for name, original in _ORIGINALS.items():
            if original is None:
                delattr(RedshiftDataAPIServiceResponse, name)
            else:
                setattr(RedshiftDataAPIServiceResponse, name, original)


def _record_field(value: Any) -> dict[str, Any]:
    """A PostgreSQL value (already typed as the Data API types it) as a Data API field."""
    if value is None:
        return {"isNull": True}
    if isinstance(value, bool):
        return {"booleanValue": value}
    if isinstance(value, int):
        return {"longValue": value}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    return {"stringValue": json.dumps(value)}


def long_value(n: int) -> dict[str, Any]:
    return {"longValue": n}


def string_value(s: str) -> dict[str, Any]:
    return {"stringValue": s}


# --- 2. PostgreSQL ------------------------------------------------------------------------------

#: Redshift-only table attributes, removed before PostgreSQL sees a statement.
_REDSHIFT_ONLY = re.compile(
    r"\s*\b(?:DISTKEY\s*\(\s*\w+\s*\)|SORTKEY\s*\(\s*\w+\s*\)|DISTSTYLE\s+\w+|ENCODE\s+\w+)",
    re.IGNORECASE,
)
_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_COPY = re.compile(
    r"^COPY (?P<schema>\w+)\.(?P<table>\w+)\nFROM '(?P<manifest>s3://[^']+)'\n"
    r"IAM_ROLE '(?P<role>[^']+)'\nFORMAT AS PARQUET(?P<json> SERIALIZETOJSON)?\nMANIFEST$"
)


def to_postgres(sql: str) -> str:
    """The explicit Redshift -> PostgreSQL translation (see the module docstring)."""
    sql = _REDSHIFT_ONLY.sub("", sql)
    sql = re.sub(r"\bSUPER\b", "JSONB", sql)
    return _PARAMETER.sub(r"%(\1)s", sql)


def _data_api_value(value: Any) -> Any:
    """A PostgreSQL value as the Data API would type it (DECIMAL/DATE/TIMESTAMPTZ as text)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, date):
        return value.isoformat()
    return value


class PostgresDataApi:
    """The warehouse's transport seam on a real PostgreSQL (a stand-in for the Data API)."""

    def __init__(self, dsn: str, s3: Any) -> None:
        self.dsn = dsn
        self.s3 = s3
        self.description = "redshift stand-in (PostgreSQL)"
        #: Every statement submitted, in the warehouse's own (Redshift) text.
        self.submitted: list[str] = []
        #: How many statements each batch had.
        self.batch_sizes: list[int] = []
        #: The backend pid of the batch running now (for tests that kill it mid-transaction).
        self.batch_pid: int | None = None

    def execute(self, sql: str, params: Mapping[str, str] | None = None, *, purpose: str) -> None:
        self.query(sql, params, purpose=purpose)

    def query(
        self, sql: str, params: Mapping[str, str] | None = None, *, purpose: str
    ) -> list[tuple[Any, ...]]:
        self.submitted.append(sql)
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                cursor = conn.execute(to_postgres(sql), dict(params) if params else None)
                rows = cursor.fetchall() if cursor.description else []
        except psycopg.Error as exc:
            raise InfrastructureError(f"{self.description}: {purpose}: FAILED: {exc}") from exc
        return [tuple(_data_api_value(v) for v in row) for row in rows]

    def batch(
        self,
        sqls: Sequence[str],
        params: Mapping[str, str] | None = None,
        *,
        purpose: str,
        on_submitted: Callable[[], None] | None = None,
    ) -> None:
        self.submitted.extend(sqls)
        self.batch_sizes.append(len(sqls))
        if len(sqls) > MAX_BATCH_STATEMENTS:  # the Data API's own limit
            raise InfrastructureError(f"{purpose}: ValidationException: more than 40 statements")
        values = dict(params) if params else {}
        used = {name for sql in sqls for name in _PARAMETER.findall(sql)}
        if set(values) - used:  # the Data API refuses a parameter no statement uses
            raise InfrastructureError(f"{purpose}: unused parameters {sorted(set(values) - used)}")
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
                self.batch_pid = conn.info.backend_pid
                with conn.transaction():
                    for position, sql in enumerate(sqls, start=1):
                        try:
                            copy = _COPY.match(sql)
                            if copy:
                                self._copy(conn, copy)
                            else:
                                names = set(_PARAMETER.findall(sql))
                                mine = {k: v for k, v in values.items() if k in names}
                                conn.execute(to_postgres(sql), mine or None)
                        except psycopg.Error as exc:
                            raise _Failed(position, str(exc)) from exc
        except _Failed as exc:
            raise InfrastructureError(
                f"{self.description}: {purpose}: FAILED: statement {exc.position} of the batch: "
                f"{exc.text}"
            ) from exc
        except psycopg.Error as exc:  # the connection lost, the COMMIT refused
            raise InfrastructureError(f"{self.description}: {purpose}: FAILED: {exc}") from exc
        finally:
            self.batch_pid = None
        if on_submitted is not None:  # the batch is the server's now: committed here
            on_submitted()

    def _copy(self, conn: psycopg.Connection[Any], copy: re.Match[str]) -> None:
        """Redshift's COPY FROM a manifest of Parquet files, carried out by the stand-in."""
        bucket, _, key = copy["manifest"].removeprefix("s3://").partition("/")
        manifest = json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        target = f"{copy['schema']}.{copy['table']}"
        width = conn.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            (copy["schema"], copy["table"]),
        ).fetchone()
        for entry in manifest["entries"]:
            bucket, _, key = entry["url"].removeprefix("s3://").partition("/")
            try:
                data = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except self.s3.exceptions.NoSuchKey:
                if entry.get("mandatory"):
                    raise psycopg.DataError(f"mandatory file not found: {entry['url']}") from None
                continue
            if entry["meta"]["content_length"] != len(data):
                raise psycopg.DataError(f"content_length mismatch: {entry['url']}")
            table = pq.read_table(io.BytesIO(data))
            if width is None or table.num_columns != width[0]:
                raise psycopg.DataError(
                    f"{target}: the file has {table.num_columns} columns, the table "
                    f"{width[0] if width else 0}"
                )
            with conn.cursor().copy(f"COPY {target} FROM STDIN") as sink:
                for row in zip(*(c.to_pylist() for c in table.columns), strict=True):
                    sink.write_row([_serialize(v, copy["json"] is not None) for v in row])


def _serialize(value: Any, to_json: bool) -> Any:
    if isinstance(value, list):
        if not to_json:
            raise psycopg.DataError("a nested Parquet column needs SERIALIZETOJSON")
        return json.dumps(value)
    return value


class _Failed(Exception):
    def __init__(self, position: int, text: str) -> None:
        super().__init__(text)
        self.position = position
        self.text = text
