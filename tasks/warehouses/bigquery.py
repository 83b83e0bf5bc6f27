"""BigQuery: bulk load jobs into per-run staging tables, checks there, one transaction to publish.

Write, audit, publish:

1. ``load`` creates this run's staging tables (``<dataset>.trips_<YYYYMMDD>_<run>`` and its
   quarantine and region_daily siblings; same columns, ``PARTITION BY trip_date CLUSTER BY
   region`` and an expiration of ``STAGING_EXPIRATION_HOURS`` so abandoned ones vanish) and fills
   each with **one load job** (``load_table_from_uri`` of the day's ``gs://`` Parquet into the
   partition ``<table>$YYYYMMDD``, explicit schema, autodetect off, ``WRITE_TRUNCATE``). Never
   row-by-row INSERTs.
2. ``figures`` runs the checks' queries against the staging tables.
3. ``publish`` loads the ledger row into a staging ledger table (a load job, so no value is ever
   spliced into SQL), then runs **one multi-statement transaction**: for each published table,
   delete the day (a whole partition: metadata-only, nothing scanned) and insert the day from the
   run's staging table; then append the ledger row; then ``COMMIT``.

Atomicity: the three tables and the ledger row change together or not at all (BigQuery
multi-statement transactions span tables; a failure anywhere rolls every statement back). This is
stronger than replacing each table's partition with a ``trips$YYYYMMDD`` ``WRITE_TRUNCATE`` copy
job, which is atomic per table only (a crash between copies leaves ``trips`` new and
``region_daily`` old until the day is re-run). The price: the INSERTs scan the day's staging
tables (about 1 GB for 8M trips; dry-run estimated and capped like every query), where a copy job
is free. Re-running a day is idempotent: the day's partition is deleted and re-inserted from the
new run's staging, so the day holds exactly one run's rows, whatever happened before. Two
transactions that mutate one table at the same time conflict: BigQuery aborts one, which surfaces
as an ``InfrastructureError`` and is retried like any other infrastructure failure.

A submitted job runs to its end on BigQuery whether or not its client is still there (killed, or
cut off while waiting). So ``publish`` first looks for the run's ``published`` ledger row (and
looks again when its transaction fails): a retry of the publish, or of the run (one run id), that
finds it runs no second transaction — which would replace the day with the same rows but append a
second ledger row for the run — and reports the day as published.

Cost control: every query first runs as a dry run; one whose estimate exceeds the block's
``maximum_bytes_billed`` is refused before it runs (``UsageError``: raise the limit or fix the
query). Every query job also carries ``maximum_bytes_billed``, so BigQuery itself refuses to bill
more. Load and copy jobs have no such field: they bill no bytes. Every job carries a timeout of
the block's ``statement_timeout_s``. ``usage()`` sums the bytes processed and billed that BigQuery
reported for this object's query jobs.

Staged files: ``gs://`` URIs (production) are read by BigQuery itself in one load job. Local
paths (the embedded default's staging folder) are uploaded by the client, one load job per file
(``load_table_from_file``; the first truncates, the rest append): fine for a day of the sample or
a development run, slow for 8M trips, so production stages on GCS. ``s3://`` is refused. Uploads
are resumable (no ``size`` given): chunked and retryable, and the only upload form the tests'
stand-in accepts.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from google.api_core.exceptions import GoogleAPIError, NotFound
from google.auth.exceptions import GoogleAuthError
from google.cloud import bigquery
from requests import RequestException

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

#: (column, BigQuery type, mode): the columns of duckdb.py, in BigQuery's types.
Column = tuple[str, str, str]

TRIPS_SCHEMA: Final[tuple[Column, ...]] = (
    ("trip_id", "STRING", "REQUIRED"),
    ("trip_date", "DATE", "REQUIRED"),
    ("pickup_ts", "TIMESTAMP", "NULLABLE"),
    ("dropoff_ts", "TIMESTAMP", "NULLABLE"),
    ("distance_km", "FLOAT64", "REQUIRED"),
    ("fare_usd", "NUMERIC(18, 2)", "REQUIRED"),
    ("region", "STRING", "REQUIRED"),
    ("rider_id", "STRING", "NULLABLE"),
    ("rider_email_hash", "STRING", "NULLABLE"),
    ("driver_id", "STRING", "NULLABLE"),
    ("payment_type", "STRING", "NULLABLE"),
    ("status", "STRING", "NULLABLE"),
    ("duration_min", "FLOAT64", "NULLABLE"),
    ("fare_per_km", "FLOAT64", "NULLABLE"),
    ("_run_id", "STRING", "REQUIRED"),
    ("_source_file", "STRING", "REQUIRED"),
    ("_source_row", "INT64", "REQUIRED"),
)

QUARANTINE_SCHEMA: Final[tuple[Column, ...]] = (
    ("trip_id", "STRING", "NULLABLE"),
    ("trip_date", "DATE", "REQUIRED"),
    ("pickup_ts", "TIMESTAMP", "NULLABLE"),
    ("dropoff_ts", "TIMESTAMP", "NULLABLE"),
    ("distance_km", "FLOAT64", "NULLABLE"),
    ("fare_usd", "FLOAT64", "NULLABLE"),
    ("region", "STRING", "NULLABLE"),
    ("rider_id", "STRING", "NULLABLE"),
    ("rider_email_hash", "STRING", "NULLABLE"),
    ("driver_id", "STRING", "NULLABLE"),
    ("payment_type", "STRING", "NULLABLE"),
    ("status", "STRING", "NULLABLE"),
    ("_source_file", "STRING", "REQUIRED"),
    ("_source_row", "INT64", "REQUIRED"),
    ("_pickup_given", "BOOL", "NULLABLE"),
    ("reasons", "STRING", "REPEATED"),
    ("_run_id", "STRING", "REQUIRED"),
)

REGION_DAILY_SCHEMA: Final[tuple[Column, ...]] = (
    ("trip_date", "DATE", "REQUIRED"),
    ("region", "STRING", "REQUIRED"),
    ("trip_count", "INT64", "REQUIRED"),
    ("total_distance_km", "FLOAT64", "REQUIRED"),
    ("total_fare_usd", "NUMERIC(18, 2)", "REQUIRED"),
    ("avg_fare_per_km", "FLOAT64", "NULLABLE"),
)

#: The run ledger (``stages`` and ``checks`` hold JSON text).
RUNS_SCHEMA: Final[tuple[Column, ...]] = (
    ("run_id", "STRING", "REQUIRED"),
    ("run_date", "DATE", "REQUIRED"),
    ("status", "STRING", "REQUIRED"),
    ("source", "STRING", "REQUIRED"),
    ("source_fingerprint", "STRING", "REQUIRED"),
    ("format", "STRING", "REQUIRED"),
    ("code_version", "STRING", "REQUIRED"),
    ("pii_key_fingerprint", "STRING", "REQUIRED"),
    ("rows_extracted", "INT64", "REQUIRED"),
    ("rows_quarantined", "INT64", "REQUIRED"),
    ("rows_loaded", "INT64", "REQUIRED"),
    ("stages", "STRING", "REQUIRED"),
    ("checks", "STRING", "REQUIRED"),
    ("error", "STRING", "NULLABLE"),
    ("started_at", "TIMESTAMP", "REQUIRED"),
    ("finished_at", "TIMESTAMP", "REQUIRED"),
)

#: (published table, the ``StagedFiles`` field it loads from, its columns)
PUBLISHED_TABLES: Final = (
    ("trips", "trips", TRIPS_SCHEMA),
    ("trips_quarantine", "quarantine", QUARANTINE_SCHEMA),
    ("region_daily", "region_daily", REGION_DAILY_SCHEMA),
)
LEDGER_TABLE: Final = "runs"

#: Abandoned staging tables (a failed check keeps them for inspection) vanish after this.
STAGING_EXPIRATION_HOURS: Final = 72

CREATE_PUBLISHED_TABLE: Final = """
CREATE TABLE IF NOT EXISTS {table} (
{columns}
)
PARTITION BY trip_date
CLUSTER BY region
"""
CREATE_STAGING_TABLE: Final = f"""
CREATE OR REPLACE TABLE {{table}} (
{{columns}}
)
PARTITION BY trip_date
CLUSTER BY region
OPTIONS (expiration_timestamp =
    TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL {STAGING_EXPIRATION_HOURS} HOUR))
"""
CREATE_LEDGER: Final = """
CREATE TABLE IF NOT EXISTS {table} (
{columns}
)
PARTITION BY run_date
"""
CREATE_STAGING_LEDGER: Final = f"""
CREATE OR REPLACE TABLE {{table}} (
{{columns}}
)
OPTIONS (expiration_timestamp =
    TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL {STAGING_EXPIRATION_HOURS} HOUR))
"""

STAGING_FIGURES: Final = """
SELECT count(*) AS row_count,
       coalesce(sum(fare_usd), 0) AS fare_usd_sum,
       count(*) - count(DISTINCT trip_id) AS duplicate_trip_ids
FROM {trips}
"""

REGION_MISMATCHES: Final = """
WITH trip_level AS (
    SELECT trip_date, region, count(*) AS trip_count,
           round(sum(distance_km), 2) AS total_distance_km, sum(fare_usd) AS total_fare_usd
    FROM {trips}
    GROUP BY trip_date, region
)
SELECT coalesce(t.region, r.region) AS region
FROM trip_level t
FULL OUTER JOIN {region_daily} r
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
FROM {runs}
WHERE status = 'published' AND run_date >= @start AND run_date < @end
QUALIFY row_number() OVER (PARTITION BY run_date ORDER BY finished_at DESC) = 1
"""

#: One table's part of the publish transaction: the day's partition out, the run's rows in.
#: ``{day}`` is ``DATE 'YYYY-MM-DD'`` formatted from a ``date`` (never from configuration).
REPLACE_DAY: Final = """
DELETE FROM {table} WHERE trip_date = {day};
INSERT INTO {table} ({columns})
SELECT {columns} FROM {staging} WHERE trip_date = {day};
"""
APPEND_LEDGER: Final = """
INSERT INTO {runs} ({columns})
SELECT {columns} FROM {staging};
"""
PUBLISH_TRANSACTION: Final = """
BEGIN TRANSACTION;
{statements}
COMMIT TRANSACTION;
"""

#: Whether this run's publish already committed (its job may have outlived its client).
RUN_PUBLISHED: Final = """
SELECT count(*) AS n FROM {runs}
WHERE run_id = @run_id AND run_date = @run_date AND status = 'published'
"""
PUBLISHED_ROWS: Final = "SELECT count(*) AS n FROM {trips} WHERE trip_date = @run_date"
RECENT_RUNS: Final = """
SELECT run_id, run_date, status, source, rows_extracted, rows_quarantined, rows_loaded,
       stages, checks, error, started_at, finished_at
FROM {runs}
ORDER BY finished_at DESC
LIMIT @limit
"""

#: A GCP project id (``identifier()`` does not allow its hyphens), optionally domain-scoped.
_PROJECT: Final = re.compile(r"^([a-z][a-z0-9.-]{0,60}:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")

JOB_ID_PREFIX: Final = "tripflow_"
#: How long one API call keeps retrying an unreachable or throttling service (the client's
#: default is 10 minutes). A failed job is not re-run here (``job_retry=None``: the client's
#: job retry ignores any deadline given to it): the stage's own retries re-run it.
API_RETRY_S: Final = 120.0
#: What an API call raises when BigQuery, the network or the token exchange fails.
API_ERRORS: Final = (GoogleAPIError, GoogleAuthError, RequestException)


def schema_fields(columns: Sequence[Column]) -> list[bigquery.SchemaField]:
    """The explicit load schema (autodetect stays off)."""
    fields = []
    for name, kind, mode in columns:
        base, _, rest = kind.partition("(")
        if rest:
            precision, scale = (int(n) for n in rest.rstrip(")").split(","))
            field = bigquery.SchemaField(name, base, mode=mode, precision=precision, scale=scale)
        else:
            field = bigquery.SchemaField(name, base, mode=mode)
        fields.append(field)
    return fields


def ddl_columns(columns: Sequence[Column]) -> str:
    """The columns of a ``CREATE TABLE`` statement."""
    lines = []
    for name, kind, mode in columns:
        if mode == "REPEATED":
            lines.append(f"    {name} ARRAY<{kind}>")
        else:
            lines.append(f"    {name} {kind}{' NOT NULL' if mode == 'REQUIRED' else ''}")
    return ",\n".join(lines)


def column_list(columns: Sequence[Column]) -> str:
    return ", ".join(name for name, _, _ in columns)


class BigQueryWarehouse:
    def __init__(
        self,
        client: bigquery.Client,
        *,
        project: str,
        dataset: str,
        location: str = "US",
        maximum_bytes_billed: int | None = None,
        statement_timeout_s: int = 3600,
        api_retry_s: float = API_RETRY_S,
    ) -> None:
        if not _PROJECT.match(project):
            raise UsageError(f"not a GCP project id: {project!r}")
        self.client = client
        self.project = project
        self.dataset = identifier(dataset)
        self.location = location
        self.maximum_bytes_billed = maximum_bytes_billed
        self.statement_timeout_s = statement_timeout_s
        self.retry = bigquery.DEFAULT_RETRY.with_timeout(api_retry_s)
        self.description = f"bigquery:{project}.{dataset}"
        self._usage = Usage()

    # -- names ---------------------------------------------------------------------------------

    def table_id(self, name: str) -> str:
        """``project.dataset.name`` (for the client's API calls)."""
        return f"{self.project}.{self.dataset}.{identifier(name)}"

    def sql_table(self, name: str) -> str:
        """The table as SQL text: backquoted ``project.dataset.name``."""
        return f"`{self.table_id(name)}`"

    # -- jobs ----------------------------------------------------------------------------------

    def _job_timeout_ms(self) -> int:
        return self.statement_timeout_s * 1000

    def query(
        self,
        purpose: str,
        sql: str,
        params: Iterable[bigquery.ScalarQueryParameter] = (),
        on_submitted: Callable[[], None] | None = None,
    ) -> list[bigquery.Row]:
        """Dry-run ``sql``, refuse it if its estimate passes the limit, then run it.

        ``on_submitted`` is called once BigQuery has the job (the fault tests' kill point)."""
        parameters = list(params)
        try:
            dry = self.client.query(
                sql,
                job_config=bigquery.QueryJobConfig(
                    dry_run=True, use_query_cache=False, query_parameters=parameters
                ),
                location=self.location,
                retry=self.retry,
                job_retry=None,
            )
        except API_ERRORS as exc:
            raise InfrastructureError(f"BigQuery {purpose}: dry run failed: {exc}") from exc
        estimate = int(dry.total_bytes_processed or 0)
        limit = self.maximum_bytes_billed
        if limit is not None and estimate > limit:
            raise UsageError(
                f"BigQuery {purpose}: refused before it ran: the dry run estimates "
                f"{estimate:,} bytes processed, over the block's maximum_bytes_billed of "
                f"{limit:,} (raise the limit if this is expected)"
            )
        config = bigquery.QueryJobConfig(
            query_parameters=parameters,
            maximum_bytes_billed=limit,
            labels={"app": "tripflow"},
        )
        config.job_timeout_ms = self._job_timeout_ms()
        job = None
        try:
            job = self.client.query(
                sql,
                job_config=config,
                location=self.location,
                job_id_prefix=JOB_ID_PREFIX,
                retry=self.retry,
                job_retry=None,
            )
            if on_submitted is not None:
                on_submitted()
            rows = list(
                job.result(timeout=self.statement_timeout_s, retry=self.retry, job_retry=None)
            )
        except FutureTimeout as exc:
            if job is not None:
                self._cancel(job)
            raise InfrastructureError(
                f"BigQuery {purpose}: no result after {self.statement_timeout_s}s (job cancelled)"
            ) from exc
        except API_ERRORS as exc:
            raise InfrastructureError(f"BigQuery {purpose}: {exc}") from exc
        finally:
            if job is not None:
                self._usage.add(job.total_bytes_processed, job.total_bytes_billed)
        return rows

    def _cancel(self, job: bigquery.QueryJob | bigquery.LoadJob) -> None:
        with contextlib.suppress(*API_ERRORS):  # the timeout is the error worth reporting
            job.cancel()

    def _load_config(self, columns: Sequence[Column], disposition: str) -> bigquery.LoadJobConfig:
        parquet = bigquery.ParquetOptions()  # type: ignore[no-untyped-call]
        # A Parquet LIST (quarantine reasons) loads as a REPEATED column, not a nested record.
        parquet.enable_list_inference = True
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET,
            schema=schema_fields(columns),
            autodetect=False,
            write_disposition=disposition,
            create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
            parquet_options=parquet,
            labels={"app": "tripflow"},
        )
        config.job_timeout_ms = self._job_timeout_ms()
        return config

    def _wait(self, purpose: str, job: bigquery.LoadJob) -> int:
        try:
            job.result(timeout=self.statement_timeout_s, retry=self.retry)
        except FutureTimeout as exc:
            self._cancel(job)
            raise InfrastructureError(
                f"BigQuery {purpose}: no result after {self.statement_timeout_s}s (job cancelled)"
            ) from exc
        except API_ERRORS as exc:
            raise InfrastructureError(f"BigQuery {purpose}: {exc}") from exc
        return int(job.output_rows or 0)

    def load_parquet(
        self, table: str, columns: Sequence[Column], files: Sequence[str], day: date
    ) -> int:
        """Bulk-load Parquet files into the day's partition of ``table`` (replacing it).

        The destination is the partition decorator ``table$YYYYMMDD``: BigQuery fails the load if
        a row's ``trip_date`` is another day, so a run table only ever holds its own day.
        Returns the rows loaded.
        """
        purpose = f"load of {table}"
        destination = f"{self.table_id(table)}${day:%Y%m%d}"
        if not files:
            return 0
        if all(f.startswith("gs://") for f in files):
            try:
                job = self.client.load_table_from_uri(
                    list(files),
                    destination,
                    job_config=self._load_config(columns, "WRITE_TRUNCATE"),
                    location=self.location,
                    job_id_prefix=JOB_ID_PREFIX,
                    retry=self.retry,
                )
            except API_ERRORS as exc:
                raise InfrastructureError(f"BigQuery {purpose}: {exc}") from exc
            return self._wait(purpose, job)
        if any("://" in f and not f.startswith("file://") for f in files):
            raise UsageError(
                f"BigQuery {purpose}: staged files must be gs:// URIs or local paths, "
                f"not {files[0].split('://')[0]}://"
            )
        rows = 0
        for index, name in enumerate(files):
            path = Path(name.removeprefix("file://"))
            disposition = "WRITE_TRUNCATE" if index == 0 else "WRITE_APPEND"
            try:
                with path.open("rb") as handle:
                    job = self.client.load_table_from_file(
                        handle,
                        destination,
                        job_config=self._load_config(columns, disposition),
                        location=self.location,
                        job_id_prefix=JOB_ID_PREFIX,
                    )
            except OSError as exc:
                raise InfrastructureError(f"BigQuery {purpose}: cannot read {path}: {exc}") from exc
            except API_ERRORS as exc:
                raise InfrastructureError(f"BigQuery {purpose} from {path}: {exc}") from exc
            rows += self._wait(f"{purpose} from {path}", job)
        return rows

    # -- the Warehouse interface ---------------------------------------------------------------

    def ensure_dataset(self) -> None:
        """Create the dataset if missing (a dataset-level grant can read but not create it)."""
        try:
            self.client.get_dataset(f"{self.project}.{self.dataset}", retry=self.retry)
        except NotFound:
            dataset = bigquery.Dataset(f"{self.project}.{self.dataset}")
            dataset.location = self.location
            try:
                self.client.create_dataset(dataset, exists_ok=True, retry=self.retry)
            except API_ERRORS as exc:
                raise InfrastructureError(
                    f"BigQuery dataset {self.project}.{self.dataset}: cannot create: {exc}"
                ) from exc
        except API_ERRORS as exc:
            raise InfrastructureError(
                f"BigQuery dataset {self.project}.{self.dataset}: {exc}"
            ) from exc

    def create_missing(self, wanted: Sequence[tuple[str, str, Sequence[Column]]]) -> None:
        """Run the ``CREATE TABLE IF NOT EXISTS`` of each (table, DDL, columns) not there yet
        (one listing instead of two jobs per table on every run)."""
        self.ensure_dataset()
        try:
            existing = {
                t.table_id
                for t in self.client.list_tables(f"{self.project}.{self.dataset}", retry=self.retry)
            }
        except API_ERRORS as exc:
            raise InfrastructureError(
                f"BigQuery dataset {self.project}.{self.dataset}: cannot list tables: {exc}"
            ) from exc
        for table, ddl, columns in wanted:
            if table not in existing:
                self.query(
                    f"creating {table}",
                    ddl.format(table=self.sql_table(table), columns=ddl_columns(columns)),
                )

    def ensure_ledger(self) -> None:
        self.create_missing([(LEDGER_TABLE, CREATE_LEDGER, RUNS_SCHEMA)])

    def ensure_tables(self) -> None:
        self.create_missing(
            [(LEDGER_TABLE, CREATE_LEDGER, RUNS_SCHEMA)]
            + [(table, CREATE_PUBLISHED_TABLE, columns) for table, _, columns in PUBLISHED_TABLES]
        )

    def load(self, run_date: date, run_id: str, files: StagedFiles) -> LoadResult:
        suffix = staging_suffix(run_date, run_id)
        self.ensure_tables()
        counts: dict[str, int] = {}
        for table, field, columns in PUBLISHED_TABLES:
            staging = f"{table}_{suffix}"
            self.query(
                f"creating staging table {staging}",
                CREATE_STAGING_TABLE.format(
                    table=self.sql_table(staging), columns=ddl_columns(columns)
                ),
            )
            counts[table] = self.load_parquet(
                staging, columns, list(getattr(files, field)), run_date
            )
        return LoadResult(
            suffix, counts["trips"], counts["trips_quarantine"], counts["region_daily"]
        )

    def figures(self, run_date: date, load: LoadResult) -> Figures:
        suffix = identifier("t_" + load.suffix)[2:]
        names = {
            "trips": self.sql_table(f"trips_{suffix}"),
            "region_daily": self.sql_table(f"region_daily_{suffix}"),
            "runs": self.sql_table(LEDGER_TABLE),
        }
        (row,) = self.query("staging figures", STAGING_FIGURES.format(**names))
        mismatches = [
            str(r["region"])
            for r in self.query("region totals check", REGION_MISMATCHES.format(**names))
        ]
        history = {
            r["run_date"]: int(r["rows_loaded"])
            for r in self.query(
                "published history",
                PUBLISHED_HISTORY.format(**names),
                [
                    bigquery.ScalarQueryParameter("start", "DATE", run_date - timedelta(days=7)),
                    bigquery.ScalarQueryParameter("end", "DATE", run_date),
                ],
            )
        }
        return Figures(
            rows=int(row["row_count"]),
            fare_usd_sum=Decimal(row["fare_usd_sum"]),
            duplicate_trip_ids=int(row["duplicate_trip_ids"]),
            region_mismatches=mismatches,
            history=history,
        )

    def _published(self, run_date: date, run_id: str) -> bool:
        """Whether the ledger holds this run's ``published`` row for the day."""
        (row,) = self.query(
            f"find run {run_id} in the ledger",
            RUN_PUBLISHED.format(runs=self.sql_table(LEDGER_TABLE)),
            [
                bigquery.ScalarQueryParameter("run_id", "STRING", run_id),
                bigquery.ScalarQueryParameter("run_date", "DATE", run_date),
            ],
        )
        return int(row["n"]) > 0

    def publish(self, run_date: date, load: LoadResult, ledger: LedgerRow) -> None:
        """Replace the day in the three tables and append the ledger row, in one transaction."""
        suffix = identifier("t_" + load.suffix)[2:]
        if self._published(run_date, ledger.run_id):
            # An earlier attempt's job committed after its client was gone: the day is this
            # run's already, and a second transaction would append a second ledger row.
            log.warning(
                "%s: run %s already published %s (an earlier attempt's job committed); "
                "nothing to do",
                self.description,
                ledger.run_id,
                run_date,
            )
            self._drop_run_tables(suffix)
            return
        ledger_staging = f"{LEDGER_TABLE}_{suffix}"
        self.query(
            f"creating staging table {ledger_staging}",
            CREATE_STAGING_LEDGER.format(
                table=self.sql_table(ledger_staging), columns=ddl_columns(RUNS_SCHEMA)
            ),
        )
        self._load_ledger_row(ledger_staging, ledger.finished_now(), "WRITE_TRUNCATE")
        day = f"DATE '{run_date.isoformat()}'"
        statements = [
            REPLACE_DAY.format(
                table=self.sql_table(table),
                staging=self.sql_table(f"{table}_{suffix}"),
                columns=column_list(columns),
                day=day,
            ).strip()
            for table, _, columns in PUBLISHED_TABLES
        ]
        statements.append(
            APPEND_LEDGER.format(
                runs=self.sql_table(LEDGER_TABLE),
                staging=self.sql_table(ledger_staging),
                columns=column_list(RUNS_SCHEMA),
            ).strip()
        )
        try:
            self.query(
                f"publish of {run_date}",
                PUBLISH_TRANSACTION.format(statements="\n".join(statements)),
                on_submitted=lambda: kill_point(SUBMITTED),
            )
        except InfrastructureError:
            # An earlier attempt's job may have committed meanwhile (then BigQuery aborted this
            # one as a concurrent update): the day is published.
            try:
                published = self._published(run_date, ledger.run_id)
            except (InfrastructureError, UsageError):
                published = False
            if not published:
                raise
            log.warning(
                "%s: run %s: this publish failed but an earlier attempt's committed %s",
                self.description,
                ledger.run_id,
                run_date,
            )
        self._drop_run_tables(suffix)

    def _drop_run_tables(self, suffix: str) -> None:
        """Published: the run's staging tables have served (failed runs' expire on their own)."""
        for table in [t for t, _, _ in PUBLISHED_TABLES] + [LEDGER_TABLE]:
            with contextlib.suppress(*API_ERRORS):  # it expires anyway; the day is published
                self.client.delete_table(
                    self.table_id(f"{table}_{suffix}"), not_found_ok=True, retry=self.retry
                )

    def _load_ledger_row(self, table: str, ledger: LedgerRow, disposition: str) -> None:
        """One ledger row, loaded (not spliced into SQL): a load job of one JSON line."""
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
            schema=schema_fields(RUNS_SCHEMA),
            autodetect=False,
            write_disposition=disposition,
            create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
            labels={"app": "tripflow"},
        )
        config.job_timeout_ms = self._job_timeout_ms()
        body = (json.dumps(ledger_record(ledger), sort_keys=True) + "\n").encode()
        try:
            job = self.client.load_table_from_file(
                io.BytesIO(body),
                self.table_id(table),
                job_config=config,
                location=self.location,
                job_id_prefix=JOB_ID_PREFIX,
            )
        except API_ERRORS as exc:
            raise InfrastructureError(f"BigQuery ledger row into {table}: {exc}") from exc
        self._wait(f"ledger row into {table}", job)

    def record_run(self, ledger: LedgerRow) -> None:
        self.ensure_ledger()
        self._load_ledger_row(LEDGER_TABLE, ledger, "WRITE_APPEND")

    def published_rows(self, run_date: date) -> int:
        (row,) = self.query(
            "published rows",
            PUBLISHED_ROWS.format(trips=self.sql_table("trips")),
            [bigquery.ScalarQueryParameter("run_date", "DATE", run_date)],
        )
        return int(row["n"])

    def usage(self) -> Usage:
        """Bytes processed and billed, as BigQuery reported them for this object's query jobs."""
        return self._usage

    def recent_runs(self, limit: int) -> list[dict[str, Any]]:
        try:
            self.client.get_table(self.table_id(LEDGER_TABLE), retry=self.retry)
        except NotFound:
            return []
        except API_ERRORS as exc:
            raise InfrastructureError(f"BigQuery {self.table_id(LEDGER_TABLE)}: {exc}") from exc
        rows = [
            dict(r.items())
            for r in self.query(
                "recent runs",
                RECENT_RUNS.format(runs=self.sql_table(LEDGER_TABLE)),
                [bigquery.ScalarQueryParameter("limit", "INT64", limit)],
            )
        ]
        for row in rows:
            row["stages"] = json.loads(row["stages"])
            row["checks"] = json.loads(row["checks"])
        return rows


def ledger_record(ledger: LedgerRow) -> dict[str, Any]:
    """The ledger row as a JSON object for a load job."""
    record = dict(ledger.__dict__)
    record["run_date"] = ledger.run_date.isoformat()
    record["stages"] = json.dumps(ledger.stages, sort_keys=True, default=str)
    record["checks"] = json.dumps(ledger.checks, sort_keys=True, default=str)
    return record


def from_block(block: TripWarehouse) -> BigQueryWarehouse:
    """The BigQuery dataset a ``TripWarehouse`` block names.

    Credentials: the block's ``gcp_credentials`` (prefect-gcp ``GcpCredentials``: its service
    account, or the ambient identity when it holds none), else the ambient identity (Workload
    Identity on GKE). With ``endpoint_url`` (a private endpoint, or the tests' stand-in) the
    client talks to it; a stand-in without any identity around gets anonymous credentials.
    """
    import google.auth
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials, Credentials
    from google.auth.exceptions import DefaultCredentialsError

    credentials: Credentials | None = None
    project = block.project
    try:
        if block.gcp_credentials is not None:
            credentials = block.gcp_credentials.get_credentials_from_service_account()
            project = project or block.gcp_credentials.project
        else:
            credentials, ambient_project = google.auth.default(
                scopes=["https://www.googleapis.com/auth/cloud-platform"]
            )
            project = project or ambient_project
    except DefaultCredentialsError as exc:
        if not block.endpoint_url:
            raise UsageError(
                "BigQuery: no GCP identity: attach a GcpCredentials block to the TripWarehouse "
                "block or run with Workload Identity"
            ) from exc
        credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
    if not project:
        raise UsageError("BigQuery: the TripWarehouse block names no project")
    options = ClientOptions(api_endpoint=block.endpoint_url) if block.endpoint_url else None
    client = bigquery.Client(
        project=project,
        credentials=credentials,
        location=block.location,
        client_options=options,
    )
    return BigQueryWarehouse(
        client,
        project=project,
        dataset=block.dataset,
        location=block.location,
        maximum_bytes_billed=block.maximum_bytes_billed,
        statement_timeout_s=block.statement_timeout_s,
    )
