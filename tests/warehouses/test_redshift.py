"""The Redshift warehouse (``tasks/warehouses/redshift.py``), without an AWS account.

Stand-ins, named (``redshift_support.py`` says what each models and what it does not):

- **moto's server** (``ThreadedMotoServer`` on 127.0.0.1) stands in for **S3 and the Redshift Data
  API**: the real boto3 clients, built by the real ``from_block``, send their real requests to it.
  moto's redshift-data only records statements; ``redshift_support`` extends it in-process (batch
  requests, statements that finish after some polls or fail with an error text, canned result
  rows). These tests assert the exact SQL submitted (COPY with FORMAT AS PARQUET and IAM_ROLE, the
  publish transaction), the COPY manifest written to S3, the poll loop's backoff, the error and
  timeout paths. Result rows from moto are canned and labelled so: no figure is proven there.
- **A real PostgreSQL** (a throwaway server) runs the warehouse's own SQL constants through a second
  implementation of its transport seam (``PostgresDataApi``, a stand-in for the Data API
  transport), which also carries out Redshift's COPY from the manifest and Parquet files in moto's
  S3. There: tables, load counts, the checks' figures, the publish transaction's atomicity (a
  statement failing mid-batch, the connection killed mid-batch), re-publishing exactly once, the
  ledger, concurrent publishes of one day.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest
from prefect_aws import AwsCredentials
from warehouses.redshift_support import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    MotoRedshift,
    Outcome,
    PostgresDataApi,
    ThrowawayPostgres,
    free_port,
    long_value,
    start_moto,
    stop_moto,
    string_value,
    to_postgres,
)

from tasks.checks import run_checks
from tasks.config import load_settings
from tasks.contract import CLEAN_SCHEMA, QUARANTINE_SCHEMA, REGION_DAILY_SCHEMA
from tasks.errors import InfrastructureError, UsageError
from tasks.faults import KILL_ENV, SUBMITTED
from tasks.history import run_rows
from tasks.report import RunReport
from tasks.stages import RunContext, extract, transform
from tasks.staging import PARQUET_WRITE
from tasks.transforms import region_daily
from tasks.warehouses import warehouse_from_block
from tasks.warehouses.base import LedgerRow, LoadResult, StagedFiles
from tasks.warehouses.blocks import TripWarehouse
from tasks.warehouses.redshift import (
    NULL_TEXT,
    CopyManifests,
    DataApi,
    RedshiftWarehouse,
)

BUCKET = "tripflow-staging"
ROLE = "arn:aws:iam::123456789012:role/RedshiftCopyRole"
DAY = date(2025, 11, 15)
RUN = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
SUFFIX = "20251115_0f1e2d3c4b5a"
REGIONS = ("eu-west", "us-east", "us-west")


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoRedshift]:
    stand_in = start_moto()
    stand_in.client("s3").create_bucket(Bucket=BUCKET)
    try:
        yield stand_in
    finally:
        stop_moto(stand_in)


@pytest.fixture
def aws(moto: MotoRedshift) -> MotoRedshift:
    moto.reset()
    return moto


@pytest.fixture(scope="module")
def pg() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_wh(pg: ThrowawayPostgres, aws: MotoRedshift) -> RedshiftWarehouse:
    """The warehouse on PostgreSQL, in a schema of its own (``<schema>_staging`` beside it)."""
    s3 = aws.client("s3")
    api = PostgresDataApi(pg.dsn(), s3)
    return RedshiftWarehouse(
        api,
        manifests=CopyManifests(s3),
        iam_role=ROLE,
        schema=f"a_{uuid.uuid4().hex[:10]}",
        statement_timeout_s=60,
    )


def block(aws: MotoRedshift, **fields: Any) -> TripWarehouse:
    """A TripWarehouse block (not saved) pointing at the moto stand-in."""
    values: dict[str, Any] = {
        "target": "redshift",
        "workgroup_name": "tripflow-wg",
        "database": "dev",
        "dataset": "analytics",
        "iam_role_arn": ROLE,
        "region_name": REGION,
        "endpoint_url": aws.endpoint,
        "statement_timeout_s": 120,
        "aws_credentials": AwsCredentials(
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION,
            aws_client_parameters={"endpoint_url": aws.endpoint},
        ),
    }
    values.update(fields)
    return TripWarehouse(**values)


# --- staged days ----------------------------------------------------------------------------------


def stage_day(
    s3: Any,
    run_date: date,
    run_id: str,
    trips: int,
    *,
    duplicate: bool = False,
    off_region: str | None = None,
    parts: int = 2,
) -> tuple[StagedFiles, pl.DataFrame]:
    """Write a day's clean/quarantine/region_daily Parquet to S3 as the transform stages it."""
    start = datetime(run_date.year, run_date.month, run_date.day, 8, tzinfo=UTC)
    ids = [f"{run_id[:8]}-{i}" for i in range(trips)]
    if duplicate:
        ids[-1] = ids[0]
    clean = pl.DataFrame(
        {
            "trip_id": ids,
            "trip_date": [run_date] * trips,
            "pickup_ts": [start + timedelta(minutes=i) for i in range(trips)],
            "dropoff_ts": [start + timedelta(minutes=i + 17) for i in range(trips)],
            "distance_km": [1.25 + (i % 7) * 0.5 for i in range(trips)],
            "fare_usd": [Decimal(f"{4 + i % 11}.{(i * 37) % 100:02d}") for i in range(trips)],
            "region": [REGIONS[i % 3] for i in range(trips)],
            "rider_id": [f"r{i % 5}" for i in range(trips)],
            "rider_email_hash": [f"{i:064x}" for i in range(trips)],
            "driver_id": [f"d{i % 4}" for i in range(trips)],
            "payment_type": ["card"] * trips,
            "status": ["completed"] * trips,
            "duration_min": [17.0] * trips,
            "fare_per_km": [2.5] * trips,
            "_run_id": [run_id] * trips,
            "_source_file": ["s3://source/trips.csv"] * trips,
            "_source_row": list(range(trips)),
        },
        schema=CLEAN_SCHEMA,
    )
    regions = region_daily(clean.lazy()).collect()
    if off_region:
        regions = regions.with_columns(
            trip_count=pl.when(pl.col("region") == off_region)
            .then(pl.col("trip_count") + 1)
            .otherwise(pl.col("trip_count"))
        )
    quarantine = pl.DataFrame(
        {
            "trip_id": ["q-1", None],
            "trip_date": [run_date] * 2,
            "pickup_ts": [start, None],
            "dropoff_ts": [start - timedelta(minutes=3), None],
            "distance_km": [-1.0, 2.0],
            "fare_usd": [3.5, -2.0],
            "region": ["us-east", "mars"],
            "rider_id": ["r1", None],
            "rider_email_hash": [None, None],
            "driver_id": ["d1", None],
            "payment_type": ["card", None],
            "status": ["completed", None],
            "_source_file": ["s3://source/trips.csv"] * 2,
            "_source_row": [1000, 1001],
            "_pickup_given": [True, False],
            "reasons": [
                ["non_positive_distance", "dropoff_before_pickup"],
                ["missing_key", "negative_fare", "unknown_region"],
            ],
            "_run_id": [run_id] * 2,
        },
        schema=QUARANTINE_SCHEMA,
    )
    prefix = f"staging-{run_id[:8]}"
    uris: dict[str, list[str]] = {}
    for stage, frame, n in (
        ("clean", clean, parts),
        ("quarantine", quarantine, 1),
        ("region_daily", regions, 1),
    ):
        size = -(-frame.height // n)
        uris[stage] = []
        for part in range(n):
            buffer = io.BytesIO()
            frame.slice(part * size, size).write_parquet(buffer, **PARQUET_WRITE)
            key = f"{prefix}/{stage}/date={run_date}/part-{part:05d}.parquet"
            s3.put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())
            uris[stage].append(f"s3://{BUCKET}/{key}")
    files = StagedFiles(
        trips=uris["clean"], quarantine=uris["quarantine"], region_daily=uris["region_daily"]
    )
    return files, clean


def ledger(
    run_id: str,
    run_date: date = DAY,
    *,
    status: str = "published",
    rows: int = 0,
    error: str | None = None,
) -> LedgerRow:
    return LedgerRow(
        run_id=run_id,
        run_date=run_date,
        status=status,
        source="synthetic",
        source_fingerprint="",  # as tasks.report writes it when extract did not run
        format="trips",
        code_version="abc123",
        pii_key_fingerprint="fp-1",
        rows_extracted=rows + 2,
        rows_quarantined=2,
        rows_loaded=rows,
        stages={"measures": [{"name": "load", "seconds": 1.5, "peak_rss_mb": 99.0}]},
        checks=[{"name": "min_rows", "passed": True, "detail": "ok"}],
        error=error,
        started_at="2025-11-16T02:00:00+00:00",
        finished_at=datetime.now(UTC).isoformat(),
    )


def new_run() -> str:
    return str(uuid.uuid4())


# --- 1. moto: the requests the real boto3 client sends -------------------------------------------


def test_load_submits_copy_from_a_manifest_in_one_transaction(aws: MotoRedshift) -> None:
    s3 = aws.client("s3")
    files, _ = stage_day(s3, DAY, RUN, 9)
    # Canned by the stand-in (moto runs no SQL): no tables yet; the staging tables' counts.
    aws.results = lambda sql: (
        [[long_value(0), long_value(0)]]
        if "information_schema" in sql
        else [[long_value(9), long_value(2), long_value(3)]]
    )
    wh = warehouse_from_block(block(aws))

    loaded = wh.load(DAY, RUN, files)

    assert loaded == LoadResult(SUFFIX, 9, 2, 3)
    (batch,) = [body for op, body in aws.requests if op == "batch_execute_statement"]
    assert batch["WorkgroupName"] == "tripflow-wg"
    assert batch["Database"] == "dev"
    assert batch["ExecutionMode"] == "TRANSACTION"
    assert "ClusterIdentifier" not in batch and "Parameters" not in batch
    sqls = batch["Sqls"]
    assert sqls[0] == "SET statement_timeout TO 120000"
    assert sqls[1:3] == [
        "CREATE SCHEMA IF NOT EXISTS analytics",
        "CREATE SCHEMA IF NOT EXISTS analytics_staging",
    ]
    assert sqls[3].startswith("CREATE TABLE IF NOT EXISTS analytics.trips (")
    assert sqls[3].endswith("DISTKEY(trip_id) SORTKEY(trip_date)")
    manifest_root = f"s3://{BUCKET}/staging-0f1e2d3c/_redshift/{SUFFIX}"
    assert sqls[7:] == [
        f"DROP TABLE IF EXISTS analytics_staging.trips_{SUFFIX}",
        f"CREATE TABLE analytics_staging.trips_{SUFFIX} (LIKE analytics.trips)",
        f"COPY analytics_staging.trips_{SUFFIX}\n"
        f"FROM '{manifest_root}/trips.manifest'\n"
        f"IAM_ROLE '{ROLE}'\n"
        "FORMAT AS PARQUET\n"
        "MANIFEST",
        f"DROP TABLE IF EXISTS analytics_staging.trips_quarantine_{SUFFIX}",
        f"CREATE TABLE analytics_staging.trips_quarantine_{SUFFIX} "
        "(LIKE analytics.trips_quarantine)",
        f"COPY analytics_staging.trips_quarantine_{SUFFIX}\n"
        f"FROM '{manifest_root}/trips_quarantine.manifest'\n"
        f"IAM_ROLE '{ROLE}'\n"
        "FORMAT AS PARQUET SERIALIZETOJSON\n"
        "MANIFEST",
        f"DROP TABLE IF EXISTS analytics_staging.region_daily_{SUFFIX}",
        f"CREATE TABLE analytics_staging.region_daily_{SUFFIX} (LIKE analytics.region_daily)",
        f"COPY analytics_staging.region_daily_{SUFFIX}\n"
        f"FROM '{manifest_root}/region_daily.manifest'\n"
        f"IAM_ROLE '{ROLE}'\n"
        "FORMAT AS PARQUET\n"
        "MANIFEST",
    ]
    # moto's own backend recorded the batch and the count query, nothing row by row.
    recorded = [s.query_string for s in aws.statements()]
    assert recorded[1] == "\n".join(sqls)
    assert len(recorded) == 3 and "INSERT" not in "\n".join(recorded)

    # The COPY manifest lists exactly the staged files, mandatory, with their sizes.
    manifest = json.loads(
        s3.get_object(Bucket=BUCKET, Key=f"staging-0f1e2d3c/_redshift/{SUFFIX}/trips.manifest")[
            "Body"
        ].read()
    )
    assert [e["url"] for e in manifest["entries"]] == list(files.trips)
    for entry in manifest["entries"]:
        key = entry["url"].removeprefix(f"s3://{BUCKET}/")
        assert entry["mandatory"] is True
        assert (
            entry["meta"]["content_length"]
            == s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
        )

    # Every statement was polled until it finished (the stand-in finishes on the 2nd poll).
    assert sorted(aws.polls.values()) == [2, 2, 2]


def test_publish_submits_delete_insert_ledger_and_drops_as_one_batch(aws: MotoRedshift) -> None:
    failed_run = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
    # Canned by the stand-in: the run not yet published, no rows of other days; the ledger has
    # one failed run of the day.
    aws.results = lambda sql: (
        [[string_value(failed_run)]]
        if "'failed'" in sql
        else [[long_value(0)]]
        if "'published'" in sql
        else [[long_value(0), long_value(0), long_value(0)]]
    )
    wh = warehouse_from_block(block(aws))

    wh.publish(DAY, LoadResult(SUFFIX, 9, 2, 3), ledger(RUN, rows=9))

    run_published, other_days, failed_query = [
        body for op, body in aws.requests if op == "execute_statement"
    ]
    assert "status = 'published'" in run_published["Sql"]
    assert {p["name"]: p["value"] for p in run_published["Parameters"]} == {
        "run_id": RUN,
        "run_date": "2025-11-15",
    }
    assert "trip_date <> CAST(:run_date AS DATE)" in other_days["Sql"]
    assert failed_query["Parameters"] == [{"name": "run_date", "value": "2025-11-15"}]
    assert "status = 'failed'" in failed_query["Sql"]
    (batch,) = [body for op, body in aws.requests if op == "batch_execute_statement"]
    assert batch["ExecutionMode"] == "TRANSACTION"
    sqls = batch["Sqls"]
    day = "WHERE trip_date = CAST(:run_date AS DATE)"
    assert sqls[:7] == [
        "SET statement_timeout TO 120000",
        f"DELETE FROM analytics.trips {day}",
        f"INSERT INTO analytics.trips SELECT * FROM analytics_staging.trips_{SUFFIX}",
        f"DELETE FROM analytics.trips_quarantine {day}",
        "INSERT INTO analytics.trips_quarantine "
        f"SELECT * FROM analytics_staging.trips_quarantine_{SUFFIX}",
        f"DELETE FROM analytics.region_daily {day}",
        f"INSERT INTO analytics.region_daily SELECT * FROM analytics_staging.region_daily_{SUFFIX}",
    ]
    assert sqls[7].lstrip().startswith("INSERT INTO analytics.runs (")
    assert sqls[8:] == [
        f"DROP TABLE IF EXISTS analytics_staging.{table}_{suffix}"
        for suffix in (SUFFIX, "20251115_aaaaaaaabbbb")
        for table in ("trips", "trips_quarantine", "region_daily")
    ]
    params = {p["name"]: p["value"] for p in batch["Parameters"]}
    assert params["run_id"] == RUN and params["run_date"] == "2025-11-15"
    assert params["rows_loaded"] == "9" and params["status"] == "published"
    assert params["error"] == NULL_TEXT and params["source_fingerprint"] == NULL_TEXT
    assert json.loads(params["stages"])["measures"][0]["name"] == "load"
    # The Data API refuses empty values and unused parameters: none are sent.
    assert all(p["value"] for p in batch["Parameters"])
    assert all(f":{name}" in "\n".join(sqls) for name in params)


def test_cluster_identity_and_no_secret_in_requests(aws: MotoRedshift) -> None:
    aws.results = lambda sql: [[long_value(0)]]
    wh = warehouse_from_block(
        block(aws, workgroup_name=None, cluster_identifier="tripflow-cluster", db_user="etl")
    )

    assert wh.published_rows(DAY) == 0

    (statement,) = aws.statements()  # moto records these two fields itself
    assert statement.cluster_identifier == "tripflow-cluster"
    assert statement.db_user == "etl"
    (request,) = [body for _, body in aws.requests]
    assert "WorkgroupName" not in request
    assert request["StatementName"] == "tripflow published rows of 2025-11-15"
    assert SECRET_ACCESS_KEY not in json.dumps(aws.requests)
    assert SECRET_ACCESS_KEY not in wh.description


def test_results_are_read_page_by_page_and_typed(aws: MotoRedshift) -> None:
    aws.page_size = 2
    # Canned by the stand-in: five ledger rows of recent_runs, as the Data API types them.
    record = [
        string_value("r-1"),
        string_value("2025-11-15"),
        string_value("published"),
        string_value("synthetic"),
        long_value(12),
        long_value(2),
        long_value(10),
        string_value('{"measures": []}'),
        string_value("[]"),
        {"isNull": True},
        string_value("2025-11-16 02:00:00+00"),
        string_value("2025-11-16 02:05:30.25+00"),
    ]
    aws.results = lambda sql: [[long_value(1)]] if "information_schema" in sql else [record] * 5
    wh = warehouse_from_block(block(aws))

    runs = wh.recent_runs(5)

    assert len(runs) == 5
    assert runs[0]["run_date"] == DAY
    assert runs[0]["error"] is None and runs[0]["rows_loaded"] == 10
    assert runs[0]["finished_at"] == datetime(2025, 11, 16, 2, 5, 30, 250000, tzinfo=UTC)
    assert runs[0]["stages"] == {"measures": []}
    statement_id = aws.statements()[1].id
    pages = [token for sid, token in aws.pages if sid == statement_id]
    assert pages == [None, "2", "4"]
    assert "LIMIT 5" in aws.sqls("execute_statement")[1]


def test_poll_backs_off_exponentially_up_to_the_cap(aws: MotoRedshift) -> None:
    aws.polls_to_finish = 6
    slept: list[float] = []
    api = DataApi(
        aws.client("redshift-data"),
        database="dev",
        workgroup_name="tripflow-wg",
        poll_first_s=0.1,
        poll_max_s=0.5,
        sleep=slept.append,
    )

    api.execute("SELECT 1", purpose="probe")

    assert slept == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert list(aws.polls.values()) == [6]


def test_a_failed_statement_raises_with_the_server_error_and_purpose(aws: MotoRedshift) -> None:
    s3 = aws.client("s3")
    files, _ = stage_day(s3, DAY, RUN, 4)
    error = "S3ServiceException:Access Denied,Status 403,Error AccessDenied (COPY trips)"
    aws.rule = lambda sql: Outcome("FAILED", error) if "COPY" in sql else Outcome()
    # Canned by the stand-in: the tables exist.
    aws.results = lambda sql: [[long_value(4), long_value(1)]]
    wh = warehouse_from_block(block(aws))

    with pytest.raises(InfrastructureError) as raised:
        wh.load(DAY, RUN, files)

    message = str(raised.value)
    assert f"load 2025-11-15 into analytics_staging.*_{SUFFIX}" in message
    assert "FAILED" in message and "Access Denied" in message
    assert "workgroup tripflow-wg" in message
    assert SECRET_ACCESS_KEY not in message and ROLE not in message
    (batch,) = aws.sqls("batch_execute_statement")
    assert not any("CREATE SCHEMA" in sql for sql in batch)  # the tables exist: no DDL
    # Nothing counted after the failed load: the only query is the tables' lookup before it.
    assert len(aws.sqls("execute_statement")) == 1


def test_a_failed_batch_names_its_failed_statement(aws: MotoRedshift) -> None:
    error = "Serializable isolation violation on table - 104905, transactions forming the cycle"
    aws.rule = lambda sql: Outcome("FAILED", error, failed_statement=2)
    api = DataApi(aws.client("redshift-data"), database="dev", workgroup_name="tripflow-wg")

    with pytest.raises(InfrastructureError) as raised:
        api.batch(["SET statement_timeout TO 1000", "DELETE FROM t", "DROP TABLE u"], purpose="p")

    assert str(raised.value).endswith(f"FAILED: statement 2 of the batch: {error}")


def test_a_statement_past_the_timeout_is_cancelled(aws: MotoRedshift) -> None:
    aws.rule = lambda sql: Outcome(status=None)  # never finishes
    api = DataApi(
        aws.client("redshift-data"), database="dev", workgroup_name="tripflow-wg", timeout_s=0.4
    )

    started = time.monotonic()
    with pytest.raises(InfrastructureError, match=r"probe: .* did not finish within 0.4s"):
        api.execute("SELECT pg_sleep(100)", purpose="probe")

    assert time.monotonic() - started < 3
    (statement,) = aws.statements()
    assert statement.status == "ABORTED"  # moto's own cancel_statement


def test_a_staged_file_missing_from_s3_fails_before_any_copy(aws: MotoRedshift) -> None:
    s3 = aws.client("s3")
    files, _ = stage_day(s3, DAY, RUN, 6)
    missing = files.trips[1]
    s3.delete_object(Bucket=BUCKET, Key=missing.removeprefix(f"s3://{BUCKET}/"))
    wh = warehouse_from_block(block(aws))

    with pytest.raises(InfrastructureError, match=f"S3 head_object {missing}: 404"):
        wh.load(DAY, RUN, files)

    assert aws.requests == []  # no statement submitted


def test_refused_and_unreachable_api_calls_are_infrastructure_errors(aws: MotoRedshift) -> None:
    from botocore.config import Config

    api = DataApi(aws.client("redshift-data"), database="dev", workgroup_name="tripflow-wg")
    with pytest.raises(InfrastructureError, match="probe: describe_statement refused: Validation"):
        api.wait("not-a-statement-id", "probe")

    closed = boto3_client_at(f"http://127.0.0.1:{free_port()}", Config(retries={"max_attempts": 1}))
    api = DataApi(closed, database="dev", workgroup_name="tripflow-wg")
    with pytest.raises(InfrastructureError, match="probe: execute_statement failed: Endpoint"):
        api.execute("SELECT 1", purpose="probe")


def boto3_client_at(endpoint: str, config: Any) -> Any:
    import boto3

    return boto3.client(
        "redshift-data",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=config,
    )


def test_configuration_errors_are_usage_errors(aws: MotoRedshift) -> None:
    with pytest.raises(UsageError, match="exactly one of workgroup_name"):
        warehouse_from_block(block(aws, cluster_identifier="c"))
    with pytest.raises(UsageError, match="iam_role_arn"):
        warehouse_from_block(block(aws, iam_role_arn="arn:aws:iam::1:role/x' --"))
    with pytest.raises(UsageError, match="database"):
        warehouse_from_block(block(aws, database=None))
    with pytest.raises(UsageError, match="safe SQL identifier"):
        warehouse_from_block(block(aws, dataset="analytics; DROP"))
    with pytest.raises(UsageError, match="WorkgroupName"):  # botocore's own validation
        warehouse_from_block(block(aws, workgroup_name="wg")).published_rows(DAY)
    with pytest.raises(UsageError, match="cannot build the AWS clients"):
        warehouse_from_block(
            block(aws, aws_credentials=AwsCredentials(profile_name="no-such-profile"))
        )
    wh = warehouse_from_block(block(aws))
    keyed = StagedFiles(
        trips=[f"s3://AKIA:{SECRET_ACCESS_KEY}@b/k"], quarantine=[], region_daily=[]
    )
    with pytest.raises(UsageError) as raised:
        wh.load(DAY, RUN, keyed)
    assert SECRET_ACCESS_KEY not in str(raised.value)
    local = StagedFiles(trips=["/tmp/part-0.parquet"], quarantine=[], region_daily=[])
    with pytest.raises(UsageError, match="COPY from S3 only"):
        wh.load(DAY, RUN, local)
    assert aws.requests == []  # refused before anything was submitted


# --- 2. PostgreSQL: the same SQL, run for real ----------------------------------------------------


def columns(pg: ThrowawayPostgres, schema: str, table: str) -> list[str]:
    with psycopg.connect(pg.dsn()) as conn:
        rows = conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (schema, table),
        ).fetchall()
    return [r[0] for r in rows]


def fetch(pg: ThrowawayPostgres, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(pg.dsn()) as conn:
        return conn.execute(sql, args or None).fetchall()


def staging_tables(pg: ThrowawayPostgres, wh: RedshiftWarehouse) -> list[str]:
    rows = fetch(
        pg,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1",
        wh.staging,
    )
    return [r[0] for r in rows]


def test_tables_follow_the_staged_parquet_column_order(
    pg: ThrowawayPostgres, pg_wh: RedshiftWarehouse, aws: MotoRedshift
) -> None:
    """COPY from Parquet is positional: the tables' columns are the staged files' columns."""
    pg_wh.ensure_tables()
    pg_wh.ensure_tables()  # idempotent
    files, _ = stage_day(aws.client("s3"), DAY, RUN, 3)
    api: PostgresDataApi = pg_wh.api
    api.submitted.clear()
    pg_wh.load(DAY, RUN, files)
    pg_wh.record_run(ledger(RUN, status="failed"))
    # Once the tables exist a run carries no DDL but its staging tables' (a writer need not own
    # the schema: see docs/governance.md).
    assert [sql for sql in api.submitted if "IF NOT EXISTS" in sql] == []

    assert columns(pg, pg_wh.schema, "trips") == list(CLEAN_SCHEMA)
    assert columns(pg, pg_wh.schema, "trips_quarantine") == list(QUARANTINE_SCHEMA)
    assert columns(pg, pg_wh.schema, "region_daily") == list(REGION_DAILY_SCHEMA)
    assert "runs" in {
        r[0]
        for r in fetch(
            pg,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            pg_wh.schema,
        )
    }


def test_write_audit_publish_on_postgres(
    pg: ThrowawayPostgres, pg_wh: RedshiftWarehouse, aws: MotoRedshift
) -> None:
    files, clean = stage_day(aws.client("s3"), DAY, RUN, 30)
    pg_wh.ensure_tables()

    loaded = pg_wh.load(DAY, RUN, files)
    assert loaded == LoadResult(SUFFIX, 30, 2, 3)

    figures = pg_wh.figures(DAY, loaded)
    assert figures.rows == 30
    assert figures.fare_usd_sum == sum(clean["fare_usd"].to_list(), Decimal(0))
    assert figures.duplicate_trip_ids == 0
    assert figures.region_mismatches == []
    assert figures.history == {}
    assert pg_wh.published_rows(DAY) == 0  # nothing published before the publish

    pg_wh.publish(DAY, loaded, ledger(RUN, rows=30))

    assert pg_wh.published_rows(DAY) == 30
    assert staging_tables(pg, pg_wh) == []
    s = pg_wh.schema
    assert fetch(pg, f"SELECT count(*), sum(fare_usd) FROM {s}.trips") == [
        (30, figures.fare_usd_sum)
    ]
    assert fetch(pg, f"SELECT sum(trip_count) FROM {s}.region_daily") == [(30,)]
    reasons = fetch(pg, f"SELECT reasons FROM {s}.trips_quarantine ORDER BY _source_row")
    assert reasons == [
        (["non_positive_distance", "dropoff_before_pickup"],),
        (["missing_key", "negative_fare", "unknown_region"],),
    ]
    assert fetch(pg, f"SELECT source_fingerprint, error FROM {s}.runs") == [("", None)]
    (run,) = pg_wh.recent_runs(10)
    assert run["run_id"] == RUN and run["status"] == "published" and run["run_date"] == DAY
    assert run["stages"]["measures"][0]["seconds"] == 1.5
    assert run["checks"] == [{"name": "min_rows", "passed": True, "detail": "ok"}]
    assert run["started_at"] == datetime(2025, 11, 16, 2, tzinfo=UTC)
    # No statement the warehouse submitted inserts rows one by one.
    assert not any("VALUES" in sql and s + ".trips " in sql for sql in pg_wh.api.submitted)  # type: ignore[attr-defined]


def test_a_run_table_holding_another_day_is_not_published(
    pg: ThrowawayPostgres, pg_wh: RedshiftWarehouse, aws: MotoRedshift
) -> None:
    files, _ = stage_day(aws.client("s3"), DAY - timedelta(days=1), RUN, 5)
    loaded = pg_wh.load(DAY, RUN, files)  # the 14th's files loaded as the 15th

    with pytest.raises(InfrastructureError, match="hold rows of other days; nothing published"):
        pg_wh.publish(DAY, loaded, ledger(RUN, rows=5))

    assert fetch(pg, f"SELECT count(*) FROM {pg_wh.schema}.trips") == [(0,)]
    assert fetch(pg, f"SELECT count(*) FROM {pg_wh.schema}.runs") == [(0,)]


def test_figures_find_duplicates_and_region_mismatches(
    pg_wh: RedshiftWarehouse, aws: MotoRedshift
) -> None:
    files, _ = stage_day(aws.client("s3"), DAY, RUN, 12, duplicate=True, off_region="us-west")
    loaded = pg_wh.load(DAY, RUN, files)

    figures = pg_wh.figures(DAY, loaded)

    assert figures.duplicate_trip_ids == 1
    assert figures.region_mismatches == ["us-west"]


def test_republishing_a_day_replaces_it_exactly_once(
    pg: ThrowawayPostgres, pg_wh: RedshiftWarehouse, aws: MotoRedshift
) -> None:
    s3 = aws.client("s3")
    first, second = new_run(), new_run()
    files, _ = stage_day(s3, DAY, first, 20)
    pg_wh.publish(DAY, pg_wh.load(DAY, first, files), ledger(first, rows=20))
    files, _ = stage_day(s3, DAY, second, 25)
    pg_wh.publish(DAY, pg_wh.load(DAY, second, files), ledger(second, rows=25))

    assert pg_wh.published_rows(DAY) == 25
    s = pg_wh.schema
    assert fetch(pg, f"SELECT DISTINCT _run_id FROM {s}.trips") == [(second,)]
    assert fetch(pg, f"SELECT count(*) FROM {s}.trips_quarantine") == [(2,)]
    assert fetch(pg, f"SELECT sum(trip_count) FROM {s}.region_daily") == [(25,)]
    assert [r["run_id"] for r in pg_wh.recent_runs(5)] == [second, first]

    # The next day's checks see the latest published run of each earlier day.
    nxt = DAY + timedelta(days=1)
    run = new_run()
    files, _ = stage_day(s3, nxt, run, 5)
    assert pg_wh.figures(nxt, pg_wh.load(nxt, run, files)).history == {DAY: 25}


def test_failed_runs_keep_their_tables_until_the_day_is_published(
    pg: ThrowawayPostgres, pg_wh: RedshiftWarehouse, aws: MotoRedshift
) -> None:
    s3 = aws.client("s3")
    failed, good = new_run(), new_run()
    files, _ = stage_day(s3, DAY, failed, 8)
    pg_wh.load(DAY, failed, files)
    pg_wh.record_run(ledger(failed, status="failed", error="checks failed: min_rows"))
    assert len(staging_tables(pg, pg_wh)) == 3  # kept for inspection
    assert pg_wh.published_rows(DAY) == 0

    files, _ = stage_day(s3, DAY, good, 9)
    pg_wh.publish(DAY, pg_wh.load(DAY, good, files), ledger(good, rows=9))

    assert staging_tables(pg, pg_wh) == []
    runs = pg_wh.recent_runs(5)
    assert [(r["status"], r["error"]) for r in runs] == [
        ("published", None),
        ("failed", "checks failed: min_rows"),
    ]


def test_many_failed_runs_tables_are_dropped_past_the_batch_limit(
    pg: ThrowawayPostgres, pg_wh: RedshiftWarehouse, aws: MotoRedshift
) -> None:
    s3 = aws.client("s3")
    failed = [new_run() for _ in range(12)]
    for run in failed[:2]:  # two of them left tables; all twelve are in the ledger
        files, _ = stage_day(s3, DAY, run, 4)
        pg_wh.load(DAY, run, files)
    for run in failed:
        pg_wh.record_run(ledger(run, status="failed", error="checks failed"))
    good = new_run()
    files, _ = stage_day(s3, DAY, good, 7)
    loaded = pg_wh.load(DAY, good, files)
    api: PostgresDataApi = pg_wh.api  # type: ignore[assignment]
    api.batch_sizes.clear()

    pg_wh.publish(DAY, loaded, ledger(good, rows=7))

    assert api.batch_sizes == [40, 7]  # SET + 6 DML + ledger + 3x13 DROPs = 47, split at 40
    assert staging_tables(pg, pg_wh) == []
    assert pg_wh.published_rows(DAY) == 7


def _install_trigger(pg: ThrowawayPostgres, schema: str, body: str) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(
            f"CREATE FUNCTION {schema}.fault() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN {body}; RETURN NEW; END $$"
        )
        conn.execute(
            f"CREATE TRIGGER fault BEFORE INSERT ON {schema}.runs "
            f"FOR EACH ROW EXECUTE FUNCTION {schema}.fault()"
        )


def _remove_trigger(pg: ThrowawayPostgres, schema: str) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP TRIGGER fault ON {schema}.runs")


def _published_day(pg: ThrowawayPostgres, schema: str) -> tuple[Any, ...]:
    """(trips, their run ids, region_daily trips, published ledger rows) as a reader sees them."""
    return (
        fetch(pg, f"SELECT count(*) FROM {schema}.trips")[0][0],
        sorted(r[0] for r in fetch(pg, f"SELECT DISTINCT _run_id FROM {schema}.trips")),
        fetch(pg, f"SELECT sum(trip_count) FROM {schema}.region_daily")[0][0],
        fetch(pg, f"SELECT count(*) FROM {schema}.runs WHERE status = 'published'")[0][0],
    )


def test_a_statement_failing_mid_publish_leaves_the_old_day(
    pg: ThrowawayPostgres, pg_wh: RedshiftWarehouse, aws: MotoRedshift
) -> None:
    s3 = aws.client("s3")
    old, new = new_run(), new_run()
    files, _ = stage_day(s3, DAY, old, 20)
    pg_wh.publish(DAY, pg_wh.load(DAY, old, files), ledger(old, rows=20))
    files, _ = stage_day(s3, DAY, new, 26)
    loaded = pg_wh.load(DAY, new, files)
    # The ledger INSERT (statement 8 of 11) fails, after the three DELETE/INSERT pairs ran.
    _install_trigger(pg, pg_wh.schema, "RAISE EXCEPTION 'injected: ledger refused'")

    with pytest.raises(InfrastructureError, match="publish 2025-11-15: FAILED: statement 8 of"):
        pg_wh.publish(DAY, loaded, ledger(new, rows=26))

    assert _published_day(pg, pg_wh.schema) == (20, [old], 20, 1)
    assert len(staging_tables(pg, pg_wh)) == 3  # the new run's tables: not dropped either
    _remove_trigger(pg, pg_wh.schema)
    pg_wh.publish(DAY, loaded, ledger(new, rows=26))
    assert _published_day(pg, pg_wh.schema) == (26, [new], 26, 2)


def test_a_publish_killed_mid_transaction_leaves_the_old_day(
    pg: ThrowawayPostgres, pg_wh: RedshiftWarehouse, aws: MotoRedshift
) -> None:
    s3 = aws.client("s3")
    old, new = new_run(), new_run()
    files, _ = stage_day(s3, DAY, old, 20)
    pg_wh.publish(DAY, pg_wh.load(DAY, old, files), ledger(old, rows=20))
    files, _ = stage_day(s3, DAY, new, 26)
    loaded = pg_wh.load(DAY, new, files)
    _install_trigger(pg, pg_wh.schema, "PERFORM pg_sleep(60)")  # stalls at the ledger INSERT
    api: PostgresDataApi = pg_wh.api
    outcome: list[BaseException] = []

    def publish() -> None:
        try:
            pg_wh.publish(DAY, loaded, ledger(new, rows=26))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=publish)
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # until the batch sits in pg_sleep, trips already replaced
        pid = api.batch_pid
        if pid and fetch(
            pg, "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND wait_event = 'PgSleep'", pid
        ):
            break
        time.sleep(0.05)
    else:
        pytest.fail("the publish batch never reached the ledger INSERT")

    assert _published_day(pg, pg_wh.schema) == (20, [old], 20, 1)  # readers see the old day
    fetch(pg, "SELECT pg_terminate_backend(%s)", pid)
    thread.join(20)

    assert outcome and isinstance(outcome[0], InfrastructureError)
    assert _published_day(pg, pg_wh.schema) == (20, [old], 20, 1)
    _remove_trigger(pg, pg_wh.schema)
    pg_wh.publish(DAY, loaded, ledger(new, rows=26))
    assert _published_day(pg, pg_wh.schema) == (26, [new], 26, 2)


def test_two_runs_publishing_one_day_at_once_never_mix(
    pg: ThrowawayPostgres, pg_wh: RedshiftWarehouse, aws: MotoRedshift
) -> None:
    s3 = aws.client("s3")
    base, one, two = new_run(), new_run(), new_run()
    files, _ = stage_day(s3, DAY, base, 10)
    pg_wh.publish(DAY, pg_wh.load(DAY, base, files), ledger(base, rows=10))
    loads = {}
    for run, n in ((one, 21), (two, 23)):
        files, _ = stage_day(s3, DAY, run, n)
        loads[run] = (pg_wh.load(DAY, run, files), n)
    # Both batches stall 2 s at their ledger INSERT, so their transactions overlap.
    _install_trigger(pg, pg_wh.schema, "PERFORM pg_sleep(2)")
    errors: list[BaseException] = []

    def publish(run: str) -> None:
        loaded, n = loads[run]
        try:
            pg_wh.publish(DAY, loaded, ledger(run, rows=n))
        except InfrastructureError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(run,)) for run in (one, two)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    count, run_ids, regions, _ = _published_day(pg, pg_wh.schema)
    assert len(run_ids) == 1 and run_ids[0] in (one, two)
    assert count == regions == loads[run_ids[0]][1]
    assert len(errors) == 1  # SERIALIZABLE: the overlapping second publisher fails (retried)
    assert "could not serialize" in str(errors[0])


CLIENT = Path(__file__).with_name("publish_client.py")


def test_a_publish_whose_client_died_after_submitting_commits_once_and_the_rerun_finds_it(
    pg: ThrowawayPostgres, aws: MotoRedshift
) -> None:
    """The client dies right after the server has its publish batch; the batch commits anyway.

    The warehouse talks to moto's Data API with the real boto3 client, and moto runs each
    statement on the real PostgreSQL when it ends (``engine``: the stand-in's SQL engine). The
    client is a process of its own, SIGKILLed at ``publish-submitted`` (``tasks.faults``): its
    batch sits submitted, not run, until the stand-in finishes it with nobody polling. A re-run of
    the publish by the same run (the publish task's retry, or the flow's retry: one run id) finds
    the run's ``published`` row in the ledger and submits nothing: the day is published once,
    whole, with one ledger row, and the run is not reported failed. A later run replaces the day.
    """
    s3 = aws.client("s3")
    aws.engine = PostgresDataApi(pg.dsn(), s3)
    aws.polls_to_finish = 1
    schema = f"a_{uuid.uuid4().hex[:10]}"
    api = DataApi(
        aws.client("redshift-data"),
        database="dev",
        workgroup_name="tripflow-wg",
        timeout_s=60,
        poll_first_s=0.01,
        poll_max_s=0.05,
    )
    wh = RedshiftWarehouse(
        api, manifests=CopyManifests(s3), iam_role=ROLE, schema=schema, statement_timeout_s=60
    )
    old, run = new_run(), new_run()
    files, _ = stage_day(s3, DAY, old, 20)
    wh.publish(DAY, wh.load(DAY, old, files), ledger(old, rows=20))
    files, clean = stage_day(s3, DAY, run, 26)
    loaded = wh.load(DAY, run, files)
    row = ledger(run, rows=26)
    config = {
        "target": "redshift",
        "endpoint": aws.endpoint,
        "region": REGION,
        "access_key_id": ACCESS_KEY_ID,
        "secret_access_key": SECRET_ACCESS_KEY,
        "iam_role": ROLE,
        "schema": schema,
        "run_date": DAY.isoformat(),
        "load": dataclasses.asdict(loaded),
        "ledger": {**dataclasses.asdict(row), "run_date": DAY.isoformat()},
    }
    batches_before = len(aws.sqls("batch_execute_statement"))
    killed = subprocess.run(
        [sys.executable, str(CLIENT), json.dumps(config)],
        env={**os.environ, KILL_ENV: SUBMITTED},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "published" not in killed.stdout
    (batch,) = aws.sqls("batch_execute_statement")[batches_before:]  # the client's one batch
    assert any(sql.startswith(f"DELETE FROM {schema}.trips ") for sql in batch)
    assert _published_day(pg, schema) == (20, [old], 20, 1)  # submitted, not yet run

    assert aws.finish_started() == 1  # the server commits the batch its client left behind
    published = (26, [run], 26, 2)
    assert _published_day(pg, schema) == published
    fare = sum(clean["fare_usd"].to_list(), Decimal(0))
    assert fetch(pg, f"SELECT sum(fare_usd) FROM {schema}.trips") == [(fare,)]

    aws.requests.clear()
    wh.publish(DAY, loaded, row)  # the re-run of the publish: same run, same staging tables

    assert aws.sqls("batch_execute_statement") == []  # nothing submitted again
    assert _published_day(pg, schema) == published
    assert fetch(pg, f"SELECT status FROM {schema}.runs WHERE run_id = %s", run) == [("published",)]
    assert wh.published_rows(DAY) == 26

    newer = new_run()  # a new run of the day afterwards replaces it, whole
    files, _ = stage_day(s3, DAY, newer, 24)
    wh.publish(DAY, wh.load(DAY, newer, files), ledger(newer, rows=24))
    assert _published_day(pg, schema) == (24, [newer], 24, 3)


def test_the_postgres_translation_is_only_the_listed_one() -> None:
    ddl = "CREATE TABLE IF NOT EXISTS a.t (x SUPER NOT NULL)\nDISTSTYLE EVEN SORTKEY(trip_date)"
    assert to_postgres(ddl) == "CREATE TABLE IF NOT EXISTS a.t (x JSONB NOT NULL)"
    assert to_postgres("SELECT 1 WHERE d = CAST(:run_date AS DATE)") == (
        "SELECT 1 WHERE d = CAST(%(run_date)s AS DATE)"
    )


def test_a_day_staged_by_the_pipeline_publishes_through_the_checks(
    tmp_path: Path, pg: ThrowawayPostgres, pg_wh: RedshiftWarehouse, aws: MotoRedshift
) -> None:
    """The pipeline's own extract and transform stage the day (Parquet as production writes it);
    its files are copied to the S3 stand-in in the staging layout; then load, figures, the real
    checks, publish and the report's reading of the ledger."""
    settings = load_settings(
        {
            "source": "synthetic",
            "rows": 3000,
            "staging": str(tmp_path / "staging"),
            "pii_key_file": str(tmp_path / "pii.key"),
        },
        environ={},
    )
    ctx = RunContext.create(RUN, DAY, settings)
    report = RunReport(ctx)
    report.extracted = extract(ctx)
    report.transformed = transform(ctx)
    staged = {s: ctx.staging.read(s, DAY) for s in ("clean", "quarantine", "region_daily")}
    s3 = aws.client("s3")
    uris: dict[str, list[str]] = {}
    for stage, dataset in staged.items():
        uris[stage] = []
        for name in dataset.files:
            key = f"pipeline/{stage}/date={DAY}/{Path(name).name}"
            s3.upload_file(name, BUCKET, key)
            uris[stage].append(f"s3://{BUCKET}/{key}")
    assert staged["quarantine"].rows > 0  # the synthetic day has quarantined rows (SUPER path)

    report.loaded = pg_wh.load(
        DAY, RUN, StagedFiles(uris["clean"], uris["quarantine"], uris["region_daily"])
    )
    figures = pg_wh.figures(DAY, report.loaded)
    report.checks = run_checks(
        figures,
        min_rows=1,
        extracted=report.rows["extracted"],
        quarantined=report.rows["quarantined"],
        threshold=settings.quarantine_threshold,
        staged_rows=staged["clean"].rows,
        staged_fare_usd_sum=Decimal(staged["clean"].manifest["checksums"]["fare_usd_sum"]),
    )
    assert [(c.name, c.passed) for c in report.checks if not c.passed] == []
    pg_wh.publish(DAY, report.loaded, report.ledger("published"))

    assert report.loaded.rows == staged["clean"].rows
    assert report.loaded.quarantine_rows == staged["quarantine"].rows
    assert pg_wh.published_rows(DAY) == staged["clean"].rows
    (row,) = run_rows(pg_wh.recent_runs(5), settings)  # what `tripflow report` shows
    assert row["run_id"] == RUN and row["status"] == "published"
    assert row["rows"] == staged["clean"].rows and row["failed_checks"] == []
