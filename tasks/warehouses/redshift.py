"""Redshift (a Serverless workgroup or a provisioned cluster), driven through the Redshift Data API.

Write, audit, publish:

1. **Write**: the day's staged Parquet (``s3://`` URIs) is bulk-loaded by ``COPY … FORMAT AS
   PARQUET`` with an IAM role into staging tables of this run's own
   (``<schema>_staging.<table>_<YYYYMMDD>_<run>``, created ``LIKE`` the published table, so they
   share its distribution and sort keys). COPY reads a **manifest** that this module writes to S3
   for each table (``<staging root>/_redshift/<suffix>/<table>.manifest``): the staged files are
   exact URIs listed in our staging manifest, and a COPY manifest loads exactly those
   (``mandatory: true``: a missing file fails the COPY instead of loading a partial day), never a
   stray object that happens to share a prefix (such as the staging folder's own
   ``_manifest.json``). The COPY manifests stay as the record of what each run loaded; a lifecycle
   rule on ``_redshift/`` expires them.
2. **Audit**: the checks' figures are queried from the staging tables and the ledger.
3. **Publish**: one ``batch_execute_statement`` (``ExecutionMode=TRANSACTION``: Redshift commits
   or rolls back the whole batch) deletes the day from each published table, inserts it from the
   run's staging tables, inserts the ledger row and drops the staging tables (and those of the
   day's failed runs). ``DELETE``, not ``TRUNCATE``: TRUNCATE commits implicitly in Redshift. Every
   Redshift transaction is SERIALIZABLE, so of two runs publishing one day at once one fails (and
   is retried) instead of both inserting.

   A submitted batch commits on the server whether or not its client is still there to see it
   (killed, or its connection lost while polling). The batch drops the run's own staging tables,
   so it can commit at most once; and a publish first looks for the run's ``published`` ledger
   row (and looks again when its batch fails): a retry of the publish, or of the run, that finds
   it publishes nothing again and reports the day as published.

Only the ``DataApi`` seam below talks to AWS; the warehouse hands it SQL (every statement a named
constant here) and named parameters. The tests run the same statements on a real PostgreSQL
through a second implementation of that seam.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

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

log = logging.getLogger(__name__)

# --- Tables ------------------------------------------------------------------------------------
# Column order is load-bearing: COPY from Parquet fills the target's columns by position, so each
# list follows the staged files' column order (tasks.contract CLEAN_SCHEMA, QUARANTINE_SCHEMA,
# REGION_DAILY_SCHEMA; a test holds them equal).
#
# Distribution: trips are DISTKEY(trip_id): high-cardinality and unique, so rows spread evenly over
# the slices, the unique_trip_id check's count(DISTINCT trip_id) runs slice-locally, and the
# publish's INSERT … SELECT from the LIKE-created staging table needs no redistribution. Not
# trip_date: one day per load would land on one slice. Quarantine rows may lack a trip_id or repeat
# one (that is why they are quarantined), so they are DISTSTYLE EVEN; region_daily and the ledger
# are tiny and DISTSTYLE ALL. Every table is SORTKEY(trip_date or run_date): the publish's DELETE
# of a day and the checks' D-7..D-1 history touch only that day's blocks (zone maps). Column
# encodings are left to Redshift (ENCODE AUTO, the default).

TRIPS_COLUMNS: Final = """
    trip_id VARCHAR(256) NOT NULL,
    trip_date DATE NOT NULL,
    pickup_ts TIMESTAMPTZ,
    dropoff_ts TIMESTAMPTZ,
    distance_km DOUBLE PRECISION NOT NULL,
    fare_usd DECIMAL(18, 2) NOT NULL,
    region VARCHAR(256) NOT NULL,
    rider_id VARCHAR(256),
    rider_email_hash VARCHAR(256),
    driver_id VARCHAR(256),
    payment_type VARCHAR(256),
    status VARCHAR(256),
    duration_min DOUBLE PRECISION,
    fare_per_km DOUBLE PRECISION,
    _run_id VARCHAR(64) NOT NULL,
    _source_file VARCHAR(4096) NOT NULL,
    _source_row BIGINT NOT NULL
"""

#: ``reasons`` is a Parquet list: COPY's SERIALIZETOJSON loads it into SUPER as a JSON array.
QUARANTINE_COLUMNS: Final = """
    trip_id VARCHAR(256),
    trip_date DATE NOT NULL,
    pickup_ts TIMESTAMPTZ,
    dropoff_ts TIMESTAMPTZ,
    distance_km DOUBLE PRECISION,
    fare_usd DOUBLE PRECISION,
    region VARCHAR(256),
    rider_id VARCHAR(256),
    rider_email_hash VARCHAR(256),
    driver_id VARCHAR(256),
    payment_type VARCHAR(256),
    status VARCHAR(256),
    _source_file VARCHAR(4096) NOT NULL,
    _source_row BIGINT NOT NULL,
    _pickup_given BOOLEAN,
    reasons SUPER NOT NULL,
    _run_id VARCHAR(64) NOT NULL
"""

REGION_DAILY_COLUMNS: Final = """
    trip_date DATE NOT NULL,
    region VARCHAR(256) NOT NULL,
    trip_count BIGINT NOT NULL,
    total_distance_km DOUBLE PRECISION NOT NULL,
    total_fare_usd DECIMAL(18, 2) NOT NULL,
    avg_fare_per_km DOUBLE PRECISION
"""

#: The ledger (``analytics.runs`` in DuckDB): stages and checks as JSON text.
RUNS_COLUMNS: Final = """
    run_id VARCHAR(64) NOT NULL,
    run_date DATE NOT NULL,
    status VARCHAR(32) NOT NULL,
    source VARCHAR(1024) NOT NULL,
    source_fingerprint VARCHAR(256) NOT NULL,
    format VARCHAR(64) NOT NULL,
    code_version VARCHAR(256) NOT NULL,
    pii_key_fingerprint VARCHAR(256) NOT NULL,
    rows_extracted BIGINT NOT NULL,
    rows_quarantined BIGINT NOT NULL,
    rows_loaded BIGINT NOT NULL,
    stages VARCHAR(65535) NOT NULL,
    checks VARCHAR(65535) NOT NULL,
    error VARCHAR(65535),
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL
"""

CREATE_SCHEMA: Final = "CREATE SCHEMA IF NOT EXISTS {schema}"
CREATE_TRIPS: Final = (
    "CREATE TABLE IF NOT EXISTS {schema}.trips (" + TRIPS_COLUMNS + ")\n"
    "DISTKEY(trip_id) SORTKEY(trip_date)"
)
CREATE_QUARANTINE: Final = (
    "CREATE TABLE IF NOT EXISTS {schema}.trips_quarantine (" + QUARANTINE_COLUMNS + ")\n"
    "DISTSTYLE EVEN SORTKEY(trip_date)"
)
CREATE_REGION_DAILY: Final = (
    "CREATE TABLE IF NOT EXISTS {schema}.region_daily (" + REGION_DAILY_COLUMNS + ")\n"
    "DISTSTYLE ALL SORTKEY(trip_date)"
)
CREATE_RUNS: Final = (
    "CREATE TABLE IF NOT EXISTS {schema}.runs (" + RUNS_COLUMNS + ")\n"
    "DISTSTYLE ALL SORTKEY(run_date)"
)

#: Whether the tables and the staging schema exist already: then a run skips the DDL, which a
#: writer without CREATE on the database or schema could not run (even IF NOT EXISTS is checked).
TABLES_PRESENT: Final = """
SELECT (SELECT count(*) FROM information_schema.tables
        WHERE table_schema = :schema
          AND table_name IN ('trips', 'trips_quarantine', 'region_daily', 'runs')),
       (SELECT count(*) FROM information_schema.schemata WHERE schema_name = :staging)
"""

#: Server-side limit for every batch (milliseconds), beside the client's own poll deadline.
SET_STATEMENT_TIMEOUT: Final = "SET statement_timeout TO {milliseconds}"

# --- Write -------------------------------------------------------------------------------------
DROP_STAGING: Final = "DROP TABLE IF EXISTS {staging}.{table}_{suffix}"
#: LIKE copies the published table's columns, DISTKEY/DISTSTYLE and SORTKEY.
CREATE_STAGING: Final = "CREATE TABLE {staging}.{table}_{suffix} (LIKE {schema}.{table})"
#: The bulk path: Redshift reads the Parquet files a COPY manifest lists (never row by row).
COPY_PARQUET: Final = (
    "COPY {staging}.{table}_{suffix}\n"
    "FROM '{manifest_url}'\n"
    "IAM_ROLE '{iam_role}'\n"
    "FORMAT AS PARQUET{options}\n"
    "MANIFEST"
)
#: The quarantine's ``reasons`` (a Parquet list) into SUPER.
SERIALIZE_TO_JSON: Final = " SERIALIZETOJSON"
LOADED_ROWS: Final = """
SELECT (SELECT count(*) FROM {staging}.trips_{suffix}),
       (SELECT count(*) FROM {staging}.trips_quarantine_{suffix}),
       (SELECT count(*) FROM {staging}.region_daily_{suffix})
"""

# --- Audit -------------------------------------------------------------------------------------
STAGING_FIGURES: Final = """
SELECT count(*) AS row_count,
       coalesce(sum(fare_usd), 0) AS fare_usd_sum,
       count(*) - count(DISTINCT trip_id) AS duplicate_trip_ids
FROM {staging}.trips_{suffix}
"""

#: Redshift has no IS DISTINCT FROM; a region missing on either side is caught by the NULL tests.
REGION_MISMATCHES: Final = """
WITH trip_level AS (
    SELECT trip_date, region, count(*) AS trip_count,
           round(CAST(sum(distance_km) AS DECIMAL(38, 6)), 2) AS total_distance_km,
           sum(fare_usd) AS total_fare_usd
    FROM {staging}.trips_{suffix}
    GROUP BY trip_date, region
)
SELECT coalesce(t.region, r.region) AS region
FROM trip_level t
FULL OUTER JOIN {staging}.region_daily_{suffix} r
  ON t.trip_date = r.trip_date AND t.region = r.region
WHERE t.region IS NULL OR r.region IS NULL
   OR t.trip_count <> r.trip_count
   OR t.total_fare_usd <> r.total_fare_usd
   OR abs(t.total_distance_km - r.total_distance_km) > 0.011
ORDER BY 1
"""

#: Rows published for each of D-7 .. D-1, from the latest published run of each day.
PUBLISHED_HISTORY: Final = """
SELECT run_date, rows_loaded
FROM (
    SELECT run_date, rows_loaded,
           row_number() OVER (PARTITION BY run_date ORDER BY finished_at DESC) AS latest
    FROM {schema}.runs
    WHERE status = 'published'
      AND run_date >= CAST(:since AS DATE) AND run_date < CAST(:until AS DATE)
) published
WHERE latest = 1
ORDER BY run_date
"""

# --- Publish -----------------------------------------------------------------------------------
#: Whether this run's publish already committed (its batch may have outlived its client).
RUN_PUBLISHED: Final = """
SELECT count(*) FROM {schema}.runs
WHERE run_id = :run_id AND run_date = CAST(:run_date AS DATE) AND status = 'published'
"""
#: Runs of the day that failed: their staging tables were kept for inspection until now.
FAILED_RUNS: Final = """
SELECT run_id FROM {schema}.runs
WHERE run_date = CAST(:run_date AS DATE) AND status = 'failed'
"""
#: Rows of other days in the run's tables: publishing them would escape the day's DELETE.
OTHER_DAYS: Final = """
SELECT (SELECT count(*) FROM {staging}.trips_{suffix}
        WHERE trip_date <> CAST(:run_date AS DATE)),
       (SELECT count(*) FROM {staging}.trips_quarantine_{suffix}
        WHERE trip_date <> CAST(:run_date AS DATE)),
       (SELECT count(*) FROM {staging}.region_daily_{suffix}
        WHERE trip_date <> CAST(:run_date AS DATE))
"""
DELETE_DAY: Final = "DELETE FROM {schema}.{table} WHERE trip_date = CAST(:run_date AS DATE)"
INSERT_DAY: Final = "INSERT INTO {schema}.{table} SELECT * FROM {staging}.{table}_{suffix}"

#: Data API parameters cannot be empty or null: ``NULL_TEXT`` stands for both, and NULLIF turns it
#: back (COALESCE to '' where the column is NOT NULL).
NULL_TEXT: Final = "\u2400"
INSERT_LEDGER: Final = f"""
INSERT INTO {{schema}}.runs (
    run_id, run_date, status, source, source_fingerprint, format, code_version,
    pii_key_fingerprint, rows_extracted, rows_quarantined, rows_loaded, stages, checks, error,
    started_at, finished_at
) VALUES (
    :run_id, CAST(:run_date AS DATE), :status,
    coalesce(nullif(:source, '{NULL_TEXT}'), ''),
    coalesce(nullif(:source_fingerprint, '{NULL_TEXT}'), ''),
    coalesce(nullif(:format, '{NULL_TEXT}'), ''),
    coalesce(nullif(:code_version, '{NULL_TEXT}'), ''),
    coalesce(nullif(:pii_key_fingerprint, '{NULL_TEXT}'), ''),
    CAST(:rows_extracted AS BIGINT), CAST(:rows_quarantined AS BIGINT),
    CAST(:rows_loaded AS BIGINT), :stages, :checks, nullif(:error, '{NULL_TEXT}'),
    CAST(:started_at AS TIMESTAMPTZ), CAST(:finished_at AS TIMESTAMPTZ)
)
"""

# --- Read back ---------------------------------------------------------------------------------
PUBLISHED_ROWS: Final = (
    "SELECT count(*) FROM {schema}.trips WHERE trip_date = CAST(:run_date AS DATE)"
)
LEDGER_EXISTS: Final = """
SELECT count(*) FROM information_schema.tables
WHERE table_schema = :schema AND table_name = 'runs'
"""
RECENT_RUN_COLUMNS: Final = (
    "run_id",
    "run_date",
    "status",
    "source",
    "rows_extracted",
    "rows_quarantined",
    "rows_loaded",
    "stages",
    "checks",
    "error",
    "started_at",
    "finished_at",
)
RECENT_RUNS: Final = f"""
SELECT {", ".join(RECENT_RUN_COLUMNS)}
FROM {{schema}}.runs
ORDER BY finished_at DESC
LIMIT {{limit}}
"""

#: (published table, the ``StagedFiles`` field it loads from, its CREATE statement, COPY options)
PUBLISHED_TABLES: Final = (
    ("trips", "trips", CREATE_TRIPS, ""),
    ("trips_quarantine", "quarantine", CREATE_QUARANTINE, SERIALIZE_TO_JSON),
    ("region_daily", "region_daily", CREATE_REGION_DAILY, ""),
)

#: ``arn:aws:iam::<account>:role/<path/name>``, or ``default`` (the namespace's default IAM role).
_IAM_ROLE: Final = re.compile(
    r"^(default|arn:aws[a-z-]*:iam::\d{12}:role/[A-Za-z0-9+=,.@_/-]{1,512})$"
)
_BUCKET: Final = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_S3_KEY_UNSAFE: Final = re.compile(r"['\\\x00-\x1f]")

# --- The Data API seam --------------------------------------------------------------------------

#: ``batch_execute_statement`` takes at most 40 statements.
MAX_BATCH_STATEMENTS: Final = 40

#: Poll ``describe_statement`` after 0.1 s, doubling up to 5 s between polls.
POLL_FIRST_S: Final = 0.1
POLL_MAX_S: Final = 5.0


class Transport(Protocol):
    """What the warehouse needs from Redshift: run SQL with ``:name`` parameters (text values)."""

    description: str

    def execute(
        self, sql: str, params: Mapping[str, str] | None = None, *, purpose: str
    ) -> None: ...

    def query(
        self, sql: str, params: Mapping[str, str] | None = None, *, purpose: str
    ) -> list[tuple[Any, ...]]: ...

    def batch(
        self,
        sqls: Sequence[str],
        params: Mapping[str, str] | None = None,
        *,
        purpose: str,
        on_submitted: Callable[[], None] | None = None,
    ) -> None:
        """Run ``sqls`` as one transaction: all of them commit, or none.

        ``on_submitted`` is called once the server has the batch (the fault tests' kill point)."""
        ...


class DataApi:
    """The Redshift Data API (a boto3 ``redshift-data`` client) as a :class:`Transport`.

    Every call submits a statement, then polls ``describe_statement`` with exponential backoff until
    it finishes or ``timeout_s`` passes (then it is cancelled). FAILED or ABORTED raise an
    ``InfrastructureError`` carrying the statement's purpose and the server's error text; the SQL
    and parameters themselves are never put in messages or logs.
    """

    def __init__(
        self,
        client: Any,
        *,
        database: str,
        workgroup_name: str | None = None,
        cluster_identifier: str | None = None,
        db_user: str | None = None,
        timeout_s: float = 3600.0,
        poll_first_s: float = POLL_FIRST_S,
        poll_max_s: float = POLL_MAX_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if bool(workgroup_name) == bool(cluster_identifier):
            raise UsageError(
                "Redshift: set exactly one of workgroup_name (Serverless) or cluster_identifier"
            )
        if not database:
            raise UsageError("Redshift: the database is required")
        self.client = client
        self.timeout_s = timeout_s
        self.poll_first_s = poll_first_s
        self.poll_max_s = poll_max_s
        self._sleep = sleep
        self._clock = clock
        self.target: dict[str, str] = {"Database": database}
        if workgroup_name:
            self.target["WorkgroupName"] = workgroup_name
            where = f"workgroup {workgroup_name}"
        else:
            assert cluster_identifier is not None
            self.target["ClusterIdentifier"] = cluster_identifier
            if db_user:  # without it the database user is derived from the IAM identity
                self.target["DbUser"] = db_user
            where = f"cluster {cluster_identifier}"
        self.description = f"redshift {where}, database {database}"

    def execute(self, sql: str, params: Mapping[str, str] | None = None, *, purpose: str) -> None:
        self._run("execute_statement", {"Sql": sql}, params, purpose)

    def query(
        self, sql: str, params: Mapping[str, str] | None = None, *, purpose: str
    ) -> list[tuple[Any, ...]]:
        statement = self._run("execute_statement", {"Sql": sql}, params, purpose)
        if not statement.get("HasResultSet"):
            return []
        rows: list[tuple[Any, ...]] = []
        request: dict[str, Any] = {"Id": statement["Id"]}
        while True:
            page = self._call("get_statement_result", request, purpose)
            rows.extend(tuple(_field_value(f) for f in record) for record in page["Records"])
            if not page.get("NextToken"):
                return rows
            request["NextToken"] = page["NextToken"]

    def batch(
        self,
        sqls: Sequence[str],
        params: Mapping[str, str] | None = None,
        *,
        purpose: str,
        on_submitted: Callable[[], None] | None = None,
    ) -> None:
        request = {"Sqls": list(sqls), "ExecutionMode": "TRANSACTION"}
        self._run("batch_execute_statement", request, params, purpose, on_submitted)

    def _run(
        self,
        operation: str,
        request: dict[str, Any],
        params: Mapping[str, str] | None,
        purpose: str,
        on_submitted: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        request = {**self.target, **request, "StatementName": _statement_name(purpose)}
        if params:
            request["Parameters"] = [{"name": k, "value": v} for k, v in params.items()]
        submitted = self._call(operation, request, purpose)
        if on_submitted is not None:
            on_submitted()
        return self.wait(submitted["Id"], purpose)

    def wait(self, statement_id: str, purpose: str) -> dict[str, Any]:
        """Poll the statement with exponential backoff until it ends or the timeout passes."""
        deadline = self._clock() + self.timeout_s
        delay = self.poll_first_s
        while True:
            statement = self._call("describe_statement", {"Id": statement_id}, purpose)
            status = statement.get("Status")
            if status == "FINISHED":
                return statement
            if status in ("FAILED", "ABORTED"):
                raise InfrastructureError(
                    f"{self.description}: {purpose}: statement {statement_id} {status}: "
                    f"{_statement_error(statement)}"
                )
            remaining = deadline - self._clock()
            if remaining <= 0:
                self._cancel(statement_id, purpose)
                raise InfrastructureError(
                    f"{self.description}: {purpose}: statement {statement_id} did not finish "
                    f"within {self.timeout_s:g}s (statement_timeout_s); cancelled"
                )
            self._sleep(min(delay, remaining))
            delay = min(delay * 2, self.poll_max_s)

    def _cancel(self, statement_id: str, purpose: str) -> None:
        try:
            self._call("cancel_statement", {"Id": statement_id}, purpose)
        except InfrastructureError as exc:  # it may have ended meanwhile
            log.warning("%s", exc)

    def _call(self, operation: str, request: dict[str, Any], purpose: str) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        try:
            response: dict[str, Any] = getattr(self.client, operation)(**request)
        except ParamValidationError as exc:  # e.g. a workgroup name the API cannot accept
            raise UsageError(f"{self.description}: {purpose}: {exc}") from exc
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise InfrastructureError(
                f"{self.description}: {purpose}: {operation} refused: "
                f"{error.get('Code', '?')}: {error.get('Message', '')}"
            ) from exc
        except BotoCoreError as exc:
            raise InfrastructureError(
                f"{self.description}: {purpose}: {operation} failed: {type(exc).__name__}: {exc}"
            ) from exc
        return response


def _statement_name(purpose: str) -> str:
    """A StatementName for Redshift's system views (SYS_QUERY_HISTORY): ``tripflow <purpose>``."""
    return re.sub(r"[^A-Za-z0-9 _.:/=+-]", "_", f"tripflow {purpose}")[:500]


def _statement_error(statement: Mapping[str, Any]) -> str:
    """The server's error text, naming the failed statement of a batch by its position."""
    parts = []
    for position, sub in enumerate(statement.get("SubStatements") or [], start=1):
        if sub.get("Status") in ("FAILED", "ABORTED") and sub.get("Error"):
            parts.append(f"statement {position} of the batch: {sub['Error']}")
    if not parts:
        parts.append(str(statement.get("Error") or "no error text"))
    return "; ".join(parts)


def _field_value(field: Mapping[str, Any]) -> Any:
    """A Data API field as a Python value (decimals, dates and timestamps arrive as text)."""
    if field.get("isNull"):
        return None
    for key in ("stringValue", "longValue", "doubleValue", "booleanValue", "blobValue"):
        if key in field:
            return field[key]
    return None


# --- COPY manifests -----------------------------------------------------------------------------


class CopyManifests:
    """Writes Redshift COPY manifests (S3 JSON objects) listing exactly the staged files."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3

    def write(self, suffix: str, table: str, uris: Sequence[str]) -> str:
        """Write the manifest for ``table`` and return its ``s3://`` URL."""
        entries = []
        for uri in uris:
            bucket, key = split_s3(uri)
            # Columnar COPY needs each file's size; HEAD also fails early, naming a missing file.
            head = self._call("head_object", uri, Bucket=bucket, Key=key)
            entries.append(
                {
                    "url": uri,
                    "mandatory": True,
                    "meta": {"content_length": int(head["ContentLength"])},
                }
            )
        bucket, key = split_s3(uris[0])
        url = f"s3://{bucket}/{manifest_key(key, suffix, table)}"
        body = json.dumps({"entries": entries}, indent=1).encode()
        self._call(
            "put_object",
            url,
            Bucket=bucket,
            Key=manifest_key(key, suffix, table),
            Body=body,
            ContentType="application/json",
        )
        return url

    def _call(self, operation: str, uri: str, **request: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response: dict[str, Any] = getattr(self.s3, operation)(**request)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise InfrastructureError(f"S3 {operation} {uri}: {code}") from exc
        except BotoCoreError as exc:
            raise InfrastructureError(f"S3 {operation} {uri}: {type(exc).__name__}") from exc
        return response


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` as (bucket, key); anything else is a usage error."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not _BUCKET.match(parts.netloc) or not parts.path.strip("/"):
        shown = "a URI with user info" if "@" in parts.netloc else repr(uri)  # never echo a key
        raise UsageError(
            f"Redshift loads with COPY from S3 only: {shown} is not an s3://bucket/key URI "
            "(stage to S3: --staging s3://BUCKET/PREFIX)"
        )
    key = parts.path.lstrip("/")
    if _S3_KEY_UNSAFE.search(key):
        raise UsageError(f"S3 key {uri!r}: quotes, backslashes and control characters refused")
    return parts.netloc, key


def manifest_key(staged_key: str, suffix: str, table: str) -> str:
    """``<staging root>/_redshift/<suffix>/<table>.manifest`` for a file staged at
    ``<staging root>/<stage>/date=YYYY-MM-DD/<part>`` (the layout of ``tasks.staging``)."""
    parts = staged_key.split("/")
    root = parts[:-3] if len(parts) >= 3 else []
    return "/".join([*root, "_redshift", suffix, f"{table}.manifest"])


# --- The warehouse ------------------------------------------------------------------------------


class RedshiftWarehouse:
    def __init__(
        self,
        api: Transport,
        *,
        manifests: CopyManifests | None,
        iam_role: str | None,
        schema: str = "analytics",
        statement_timeout_s: int = 3600,
    ) -> None:
        self.api = api
        self.manifests = manifests
        if iam_role is not None and not _IAM_ROLE.match(iam_role):
            raise UsageError(
                "Redshift iam_role_arn: expected arn:aws:iam::<account>:role/<name> or 'default'"
            )
        self.iam_role = iam_role
        self.schema = identifier(schema)
        self.staging = identifier(f"{schema}_staging")
        self.statement_timeout_s = int(statement_timeout_s)
        self.description = f"{api.description}, schema {self.schema}"
        self._usage = Usage()

    # -- helpers --
    def _names(self, **extra: str) -> dict[str, str]:
        return {"schema": self.schema, "staging": self.staging, **extra}

    def _timeout(self) -> str:
        return SET_STATEMENT_TIMEOUT.format(milliseconds=self.statement_timeout_s * 1000)

    def _ddl(self) -> list[str]:
        names = self._names()
        return [
            CREATE_SCHEMA.format(schema=self.schema),
            CREATE_SCHEMA.format(schema=self.staging),
            *(create.format(**names) for _, _, create, _ in PUBLISHED_TABLES),
            CREATE_RUNS.format(**names),
        ]

    def _ddl_if_missing(self) -> list[str]:
        """The DDL, unless the tables exist already (``ensure_tables`` ran, as their owner)."""
        present = self.api.query(
            TABLES_PRESENT,
            {"schema": self.schema, "staging": self.staging},
            purpose="find the tables",
        )
        tables, staging = (int(v) for v in present[0]) if present else (0, 0)
        return [] if tables == 4 and staging == 1 else self._ddl()

    # -- the Warehouse interface --
    def ensure_tables(self) -> None:
        self.api.batch([self._timeout(), *self._ddl()], purpose="create tables")

    def load(self, run_date: date, run_id: str, files: StagedFiles) -> LoadResult:
        suffix = staging_suffix(run_date, run_id)
        for uri in (*files.trips, *files.quarantine, *files.region_daily):
            split_s3(uri)  # refuse local paths before anything is written or submitted
        per_table: list[str] = []
        for table, field, _, options in PUBLISHED_TABLES:
            names = self._names(table=table, suffix=suffix)
            per_table += [DROP_STAGING.format(**names), CREATE_STAGING.format(**names)]
            uris = list(getattr(files, field))
            if not uris:
                continue  # a day without quarantined rows: an empty staging table
            if self.manifests is None or self.iam_role is None:
                raise UsageError("Redshift load: COPY needs an S3 client and iam_role_arn")
            manifest_url = self.manifests.write(suffix, table, uris)
            per_table.append(
                COPY_PARQUET.format(
                    **names, manifest_url=manifest_url, iam_role=self.iam_role, options=options
                )
            )
        statements = [self._timeout(), *self._ddl_if_missing(), *per_table]
        self.api.batch(statements, purpose=f"load {run_date} into {self.staging}.*_{suffix}")
        rows = self.api.query(
            LOADED_ROWS.format(**self._names(suffix=suffix)), purpose=f"count loaded {suffix}"
        )
        trips, quarantine, regions = (int(v) for v in rows[0])
        return LoadResult(suffix, trips, quarantine, regions)

    def figures(self, run_date: date, load: LoadResult) -> Figures:
        names = self._names(suffix=identifier("t_" + load.suffix)[2:])
        figures = self.api.query(STAGING_FIGURES.format(**names), purpose="staging figures")
        rows, fare_sum, duplicates = figures[0]
        mismatches = self.api.query(REGION_MISMATCHES.format(**names), purpose="region totals")
        history = self.api.query(
            PUBLISHED_HISTORY.format(**names),
            {
                "since": (run_date - timedelta(days=7)).isoformat(),
                "until": run_date.isoformat(),
            },
            purpose="published history",
        )
        return Figures(
            rows=int(rows),
            fare_usd_sum=Decimal(str(fare_sum)),
            duplicate_trip_ids=int(duplicates),
            region_mismatches=[str(r[0]) for r in mismatches],
            history={_as_date(d): int(n) for d, n in history},
        )

    def publish_statements(
        self, run_date: date, load: LoadResult, failed_run_ids: Sequence[str] = ()
    ) -> list[str]:
        """The publish transaction, statement by statement (parameters: ``ledger_params``)."""
        suffix = identifier("t_" + load.suffix)[2:]
        statements = [self._timeout()]
        for table, _, _, _ in PUBLISHED_TABLES:
            names = self._names(table=table, suffix=suffix)
            statements += [DELETE_DAY.format(**names), INSERT_DAY.format(**names)]
        statements.append(INSERT_LEDGER.format(**self._names()))
        failed = {staging_suffix(run_date, r) for r in failed_run_ids} - {suffix}
        doomed = [suffix, *sorted(failed)]
        for each in doomed:
            for table, _, _, _ in PUBLISHED_TABLES:
                statements.append(DROP_STAGING.format(**self._names(table=table, suffix=each)))
        return statements

    def _published(self, run_date: date, run_id: str) -> bool:
        """Whether the ledger holds this run's ``published`` row for the day."""
        rows = self.api.query(
            RUN_PUBLISHED.format(**self._names()),
            {"run_id": run_id, "run_date": run_date.isoformat()},
            purpose=f"find run {run_id} in the ledger",
        )
        return bool(rows) and int(rows[0][0]) > 0

    def publish(self, run_date: date, load: LoadResult, ledger: LedgerRow) -> None:
        suffix = identifier("t_" + load.suffix)[2:]
        day = {"run_date": run_date.isoformat()}
        if self._published(run_date, ledger.run_id):
            # An earlier attempt's batch committed after its client was gone (killed, or cut off
            # while polling): the day is this run's already. Publishing again would fail on the
            # dropped run tables, or (re-loaded) insert a second ledger row.
            log.warning(
                "%s: run %s already published %s (an earlier attempt's batch committed); "
                "nothing to do",
                self.description,
                ledger.run_id,
                run_date,
            )
            return
        other = self.api.query(
            OTHER_DAYS.format(**self._names(suffix=suffix)), day, purpose="rows of other days"
        )
        if other and any(int(n) for n in other[0]):
            raise InfrastructureError(
                f"{self.description}: publish {run_date}: {self.staging}.*_{suffix} hold rows of "
                "other days; nothing published"
            )
        failed = self.api.query(
            FAILED_RUNS.format(**self._names()),
            day,
            purpose=f"failed runs of {run_date}",
        )
        statements = self.publish_statements(run_date, load, [str(r[0]) for r in failed])
        transaction = statements[:MAX_BATCH_STATEMENTS]  # the DML and ledger row come first
        try:
            self.api.batch(
                transaction,
                ledger_params(ledger.finished_now()),
                purpose=f"publish {run_date}",
                on_submitted=lambda: kill_point(SUBMITTED),
            )
        except InfrastructureError:
            # Another submission of this run's publish (an attempt whose client died) may have
            # committed first: then this one failed on the tables it dropped. The day is published.
            try:
                published = self._published(run_date, ledger.run_id)
            except InfrastructureError:
                published = False
            if not published:
                raise
            log.warning(
                "%s: run %s: this publish batch failed but an earlier one committed %s",
                self.description,
                ledger.run_id,
                run_date,
            )
            return
        # Failed runs' tables past the batch limit: dropped after the commit (IF EXISTS: a retry
        # or a later publish finishes the job if this is interrupted).
        rest = statements[MAX_BATCH_STATEMENTS:]
        for start in range(0, len(rest), MAX_BATCH_STATEMENTS):
            self.api.batch(
                rest[start : start + MAX_BATCH_STATEMENTS],
                purpose=f"drop failed runs' tables of {run_date}",
            )

    def record_run(self, ledger: LedgerRow) -> None:
        self.api.batch(
            [self._timeout(), *self._ddl_if_missing(), INSERT_LEDGER.format(**self._names())],
            ledger_params(ledger),
            purpose=f"record run {ledger.run_id}",
        )

    def published_rows(self, run_date: date) -> int:
        rows = self.api.query(
            PUBLISHED_ROWS.format(**self._names()),
            {"run_date": run_date.isoformat()},
            purpose=f"published rows of {run_date}",
        )
        return int(rows[0][0])

    def recent_runs(self, limit: int) -> list[dict[str, Any]]:
        exists = self.api.query(LEDGER_EXISTS, {"schema": self.schema}, purpose="find the ledger")
        if not exists or not int(exists[0][0]):
            return []
        rows = self.api.query(
            RECENT_RUNS.format(**self._names(), limit=int(limit)), purpose="recent runs"
        )
        names = RECENT_RUN_COLUMNS
        runs = []
        for row in rows:
            run = dict(zip(names, row, strict=True))
            run["run_date"] = _as_date(run["run_date"])
            run["stages"] = json.loads(run["stages"])
            run["checks"] = json.loads(run["checks"])
            for key in ("started_at", "finished_at"):
                run[key] = _as_datetime(run[key])
            runs.append(run)
        return runs

    def usage(self) -> Usage:
        """Redshift bills compute time (RPU-seconds, or the cluster's hours), not bytes scanned."""
        return self._usage


def ledger_params(ledger: LedgerRow) -> dict[str, str]:
    """The ledger row as Data API parameters: text values, ``NULL_TEXT`` for empty or null."""
    values: dict[str, Any] = dict(ledger.__dict__)
    values["stages"] = json.dumps(ledger.stages, sort_keys=True, default=str)
    values["checks"] = json.dumps(ledger.checks, sort_keys=True, default=str)
    values["run_date"] = ledger.run_date.isoformat()
    return {k: NULL_TEXT if v is None or v == "" else str(v) for k, v in values.items()}


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _as_datetime(value: Any) -> datetime:
    """A TIMESTAMPTZ as the Data API returns it (``2025-11-15 10:00:00.5+00``)."""
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


# --- From the block ------------------------------------------------------------------------------


def from_block(block: Any) -> RedshiftWarehouse:
    """The Redshift a ``TripWarehouse`` block names, through its ``AwsCredentials`` (or, without
    one, the ambient identity: IRSA on EKS, an instance profile, the environment)."""
    from botocore.exceptions import BotoCoreError

    try:
        return _from_block(block)
    except BotoCoreError as exc:  # e.g. a profile that does not exist, no region
        raise UsageError(f"TripWarehouse (redshift): cannot build the AWS clients: {exc}") from exc


def _from_block(block: Any) -> RedshiftWarehouse:
    import boto3
    from botocore.config import Config

    if not block.database:
        raise UsageError("TripWarehouse (redshift): set database")
    if not block.iam_role_arn:
        raise UsageError("TripWarehouse (redshift): set iam_role_arn (the role COPY reads S3 with)")
    credentials = block.aws_credentials
    overrides: dict[str, Any] = {}
    if credentials is not None:
        session = credentials.get_boto3_session()
        overrides = credentials.aws_client_parameters.get_params_override()
    else:
        session = boto3.Session(region_name=block.region_name)
    region = block.region_name or session.region_name
    if not region:
        raise UsageError("TripWarehouse (redshift): set region_name (or the credentials' region)")
    config = Config(retries={"max_attempts": 5, "mode": "standard"})
    overrides.setdefault("config", config)
    data_overrides = dict(overrides)
    if block.endpoint_url:
        data_overrides["endpoint_url"] = block.endpoint_url
    data = session.client("redshift-data", region_name=region, **data_overrides)
    s3 = session.client("s3", region_name=region, **overrides)
    api = DataApi(
        data,
        database=block.database,
        workgroup_name=block.workgroup_name,
        cluster_identifier=block.cluster_identifier,
        db_user=block.db_user,
        timeout_s=float(block.statement_timeout_s),
    )
    return RedshiftWarehouse(
        api,
        manifests=CopyManifests(s3),
        iam_role=block.iam_role_arn,
        schema=block.dataset,
        statement_timeout_s=block.statement_timeout_s,
    )
