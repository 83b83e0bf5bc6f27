"""The BigQuery warehouse, driven through the real ``google-cloud-bigquery`` client against a
STAND-IN of the BigQuery REST API (``bqemulator``, behind a recording proxy: see ``bq_standin``).

What runs for real: the pipeline's own extract and transform stage the day as Parquet; the
client sends real REST requests; the stand-in creates the tables, runs the load jobs (from
``gs://`` URIs mapped onto a local folder, and from uploads), the checks' queries and the publish
transaction. What the stand-in does not model (dry-run estimates, bytes billed, enforcement of
``maximumBytesBilled``): the tests assert on the requests the client sent, and the proxy states
the figures BigQuery would report (named so in each test).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core.client_options import ClientOptions
from google.auth import jwt as google_jwt
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from helpers import tripflow
from prefect_gcp import GcpCredentials
from warehouses.bq_standin import STANDIN_TOKEN, TOKEN_PATH, StandIn, bigquery_standin

from tasks.checks import run_checks
from tasks.config import load_settings
from tasks.errors import InfrastructureError, UsageError
from tasks.faults import KILL_ENV, SUBMITTED
from tasks.report import RunReport
from tasks.stages import RunContext, extract, transform
from tasks.warehouses.base import StagedFiles
from tasks.warehouses.bigquery import (
    PUBLISHED_TABLES,
    TRIPS_SCHEMA,
    BigQueryWarehouse,
    from_block,
)
from tasks.warehouses.blocks import TripWarehouse

DAY = date(2025, 11, 15)
LIMIT = 10**9
BUCKET = "tripflow-staging"

#: The seed's 10 sample trips of one day (tasks/data/sample_trips.csv), and one with a negative
#: fare (quarantined).
TRIPS = [
    ("T001", 12.5, "18.75", "us-east"),
    ("T002", 5.2, "8.50", "us-east"),
    ("T003", 25.0, "35.00", "us-west"),
    ("T004", 8.7, "12.90", "us-east"),
    ("T005", 15.3, "22.50", "us-west"),
    ("T006", 3.1, "6.00", "eu-west"),
    ("T007", 42.0, "55.00", "eu-west"),
    ("T008", 7.8, "11.25", "us-east"),
    ("T009", 18.6, "27.00", "us-west"),
    ("T010", 9.4, "14.50", "eu-west"),
    ("T011", 9.0, "-3.00", "us-east"),
]


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    with bigquery_standin(tmp_path_factory.mktemp("bq")) as running:
        yield running


@pytest.fixture
def warehouse(standin: StandIn, request: pytest.FixtureRequest) -> BigQueryWarehouse:
    standin.proxy.reset()
    client = bigquery.Client(
        project=standin.project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        location="US",
        client_options=ClientOptions(api_endpoint=standin.endpoint),
    )
    return BigQueryWarehouse(
        client,
        project=standin.project,
        dataset="t_" + request.node.name.removeprefix("test_")[:50],
        maximum_bytes_billed=LIMIT,
        statement_timeout_s=120,
    )


class Day:
    """One day staged by the pipeline's own extract and transform (a real RunReport)."""

    def __init__(self, tmp: Path, day: date, run_id: str, **settings: Any) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        csv = tmp / f"trips-{day}-{run_id}.csv"
        lines = ["trip_id,date,distance_km,fare_usd,region"]
        lines += [f"{t}-{day:%m%d},{day},{km},{fare},{region}" for t, km, fare, region in TRIPS]
        csv.write_text("\n".join(lines) + "\n")
        values = {
            "source": f"file:{csv}",
            "staging": str(tmp / "staging"),
            "pii_key_file": str(tmp / "pii.key"),
            "quarantine_threshold": 0.5,
            **settings,
        }
        self.ctx = RunContext.create(run_id, day, load_settings(values, environ={}))
        self.report = RunReport(self.ctx)
        self.report.extracted = extract(self.ctx)
        self.report.transformed = transform(self.ctx)
        self.staged = {
            stage: self.ctx.staging.read(stage, day)
            for stage in ("clean", "quarantine", "region_daily")
        }

    def local_files(self) -> StagedFiles:
        return StagedFiles(
            trips=self.staged["clean"].files,
            quarantine=self.staged["quarantine"].files,
            region_daily=self.staged["region_daily"].files,
        )

    def gcs_files(self, standin: StandIn) -> StagedFiles:
        """The staged files copied into the stand-in's GCS folder, as ``gs://`` URIs."""
        uris: dict[str, list[str]] = {}
        for stage, staged in self.staged.items():
            uris[stage] = []
            for index, name in enumerate(staged.files):
                # No ``date=`` folder: the emulator's DuckDB would read it as a hive partition
                # column, which BigQuery does not without hivePartitioningOptions.
                key = f"{self.ctx.run_id}/{stage}/{self.ctx.run_date}/part-{index:05d}.parquet"
                target = standin.gcs_root / BUCKET / key
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(name, target)
                uris[stage].append(f"gs://{BUCKET}/{key}")
        return StagedFiles(uris["clean"], uris["quarantine"], uris["region_daily"])

    def run(self, wh: BigQueryWarehouse, files: StagedFiles, min_rows: int = 1) -> str:
        """load -> figures -> checks -> publish (or record the failed run); the status."""
        report = self.report
        report.loaded = wh.load(self.ctx.run_date, self.ctx.run_id, files)
        figures = wh.figures(self.ctx.run_date, report.loaded)
        clean = self.staged["clean"]
        report.checks = run_checks(
            figures,
            min_rows=min_rows,
            extracted=report.rows["extracted"],
            quarantined=report.rows["quarantined"],
            threshold=self.ctx.settings.quarantine_threshold,
            staged_rows=clean.rows,
            staged_fare_usd_sum=Decimal(clean.manifest["checksums"]["fare_usd_sum"]),
        )
        if all(c.passed for c in report.checks):
            wh.publish(self.ctx.run_date, report.loaded, report.ledger("published"))
            return "published"
        wh.record_run(report.ledger("failed"))
        return "failed"


def rows(wh: BigQueryWarehouse, sql: str) -> list[dict[str, Any]]:
    """Read back through the client directly (not through the warehouse under test)."""
    sql = sql.format(ds=f"`{wh.project}.{wh.dataset}`")
    return [dict(r.items()) for r in wh.client.query(sql).result()]


def day_summary(wh: BigQueryWarehouse, day: date) -> dict[str, Any]:
    (trips,) = rows(
        wh,
        "SELECT count(*) AS n, sum(fare_usd) AS fare, count(DISTINCT _run_id) AS runs, "
        f"max(_run_id) AS run FROM {{ds}}.trips WHERE trip_date = DATE '{day}'",
    )
    (regions,) = rows(
        wh, f"SELECT count(*) AS n FROM {{ds}}.region_daily WHERE trip_date = DATE '{day}'"
    )
    (quarantine,) = rows(
        wh, f"SELECT count(*) AS n FROM {{ds}}.trips_quarantine WHERE trip_date = DATE '{day}'"
    )
    return {
        "trips": trips["n"],
        "fare": trips["fare"],
        "run": trips["run"] if trips["runs"] == 1 else trips["runs"],
        "region_daily": regions["n"],
        "quarantine": quarantine["n"],
    }


def dry_run_first(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The query jobs that ran, each checked to follow a dry run of its own SQL."""
    pending: Counter[str] = Counter()
    ran = []
    for job in jobs:
        if "query" not in job:
            continue
        sql = job["query"]["query"]
        if job.get("dryRun"):
            pending[sql] += 1
        else:
            assert pending[sql] > 0, f"ran without a dry run first: {sql}"
            pending[sql] -= 1
            ran.append(job)
    return ran


def test_load_figures_publish_a_staged_day(
    tmp_path: Path, standin: StandIn, warehouse: BigQueryWarehouse
) -> None:
    day = Day(tmp_path, DAY, "run00001")
    files = day.gcs_files(standin)
    assert day.run(warehouse, files) == "published"

    loaded = day.report.loaded
    assert loaded is not None
    assert (loaded.rows, loaded.quarantine_rows, loaded.region_rows) == (10, 1, 3)
    assert day_summary(warehouse, DAY) == {
        "trips": 10,
        "fare": Decimal("211.40"),
        "run": "run00001",
        "region_daily": 3,
        "quarantine": 1,
    }
    (bad,) = rows(warehouse, "SELECT trip_id, reasons FROM {ds}.trips_quarantine")
    assert bad == {"trip_id": "T011-1115", "reasons": ["negative_fare"]}
    assert {c.name: c.passed for c in day.report.checks} == {
        "min_rows": True,
        "quarantine_share": True,
        "unique_trip_id": True,
        "reconcile_staging": True,
        "region_totals": True,
        "volume_7d": True,
    }
    assert warehouse.published_rows(DAY) == 10
    (run,) = warehouse.recent_runs(5)
    assert (run["run_id"], run["status"], run["rows_loaded"]) == ("run00001", "published", 10)
    assert run["stages"]["warehouse_staging"]["suffix"] == loaded.suffix
    assert [c["name"] for c in run["checks"]] == [c.name for c in day.report.checks]

    # The published tables: partitioned by day, clustered by region (the DDL sent, and the table).
    ddl = [j["query"]["query"] for j in standin.proxy.jobs() if "CREATE TABLE IF NOT" in str(j)]
    assert sum("PARTITION BY trip_date\nCLUSTER BY region" in q for q in ddl) == 6  # 2 dry + run
    trips = warehouse.client.get_table(warehouse.table_id("trips"))
    assert trips.time_partitioning.field == "trip_date"
    assert [f.name for f in trips.schema] == [name for name, _, _ in TRIPS_SCHEMA]
    # The run's staging tables are gone once published.
    names = {t.table_id for t in warehouse.client.list_tables(warehouse.dataset)}
    assert names == {"trips", "trips_quarantine", "region_daily", "runs"}

    # The load jobs: one per table, the day's gs:// Parquet, an explicit schema, no autodetect.
    loads = [j["load"] for j in standin.proxy.jobs() if "load" in j]
    assert [load["sourceFormat"] for load in loads] == ["PARQUET"] * 3 + ["NEWLINE_DELIMITED_JSON"]
    assert loads[3]["destinationTable"]["tableId"] == f"runs_{loaded.suffix}"  # the ledger row
    trips_load = loads[0]
    assert trips_load["sourceUris"] == list(files.trips)
    assert trips_load["sourceFormat"] == "PARQUET"
    assert trips_load["autodetect"] is False
    assert trips_load["writeDisposition"] == "WRITE_TRUNCATE"
    assert trips_load["createDisposition"] == "CREATE_NEVER"
    assert trips_load["destinationTable"]["tableId"] == f"trips_{loaded.suffix}$20251115"
    assert [f["name"] for f in trips_load["schema"]["fields"]] == [n for n, _, _ in TRIPS_SCHEMA]
    assert loads[1]["parquetOptions"]["enableListInference"] is True
    assert loads[1]["sourceUris"] == list(files.quarantine)


def test_republish_replaces_the_day_exactly_once(
    tmp_path: Path, standin: StandIn, warehouse: BigQueryWarehouse
) -> None:
    first = Day(tmp_path / "a", DAY, "run00001")
    assert first.run(warehouse, first.gcs_files(standin)) == "published"
    next_day = DAY + timedelta(days=1)
    other = Day(tmp_path / "b", next_day, "run00002")
    assert other.run(warehouse, other.gcs_files(standin)) == "published"
    again = Day(tmp_path / "c", DAY, "run00003")
    assert again.run(warehouse, again.gcs_files(standin)) == "published"

    day = day_summary(warehouse, DAY)
    assert (day["trips"], day["run"], day["region_daily"], day["quarantine"]) == (
        10,
        "run00003",
        3,
        1,
    )
    untouched = day_summary(warehouse, next_day)
    assert (untouched["trips"], untouched["run"], untouched["region_daily"]) == (10, "run00002", 3)
    ledger = rows(warehouse, "SELECT run_id, status FROM {ds}.runs ORDER BY finished_at")
    assert ledger == [
        {"run_id": "run00001", "status": "published"},
        {"run_id": "run00002", "status": "published"},
        {"run_id": "run00003", "status": "published"},
    ]
    # The published tables and the ledger were created once, by the first run.
    created = [j for j in standin.proxy.jobs() if "CREATE TABLE IF NOT EXISTS" in str(j)]
    assert len(created) == 4 * 2  # each: its dry run, then the DDL
    # The day after sees each published day once in its history (volume_7d's figures).
    later = Day(tmp_path / "d", DAY + timedelta(days=2), "run00004")
    loaded = warehouse.load(later.ctx.run_date, later.ctx.run_id, later.gcs_files(standin))
    assert warehouse.figures(later.ctx.run_date, loaded).history == {DAY: 10, next_day: 10}


def test_a_failed_check_publishes_nothing(
    tmp_path: Path, standin: StandIn, warehouse: BigQueryWarehouse
) -> None:
    good = Day(tmp_path / "a", DAY, "run00001")
    assert good.run(warehouse, good.gcs_files(standin)) == "published"
    bad = Day(tmp_path / "b", DAY, "run00002")
    assert bad.run(warehouse, bad.gcs_files(standin), min_rows=1000) == "failed"
    assert [c.name for c in bad.report.checks if not c.passed] == ["min_rows"]

    assert day_summary(warehouse, DAY) == {
        "trips": 10,
        "fare": Decimal("211.40"),
        "run": "run00001",
        "region_daily": 3,
        "quarantine": 1,
    }
    assert [(r["run_id"], r["status"]) for r in warehouse.recent_runs(5)] == [
        ("run00002", "failed"),
        ("run00001", "published"),
    ]
    # The failed run's staging tables stay for inspection (they expire on their own).
    suffix = bad.report.loaded.suffix  # type: ignore[union-attr]
    names = {t.table_id for t in warehouse.client.list_tables(warehouse.dataset)}
    assert {f"{table}_{suffix}" for table, _, _ in PUBLISHED_TABLES} <= names


def test_a_publish_that_fails_midway_changes_nothing(
    tmp_path: Path, standin: StandIn, warehouse: BigQueryWarehouse
) -> None:
    good = Day(tmp_path / "a", DAY, "run00001")
    assert good.run(warehouse, good.gcs_files(standin)) == "published"
    rerun = Day(tmp_path / "b", DAY, "run00002")
    loaded = warehouse.load(DAY, "run00002", rerun.gcs_files(standin))
    # The transaction's third table cannot be read: its DELETE/INSERT of trips, already run
    # inside the transaction, must be rolled back with it.
    warehouse.client.delete_table(warehouse.table_id(f"region_daily_{loaded.suffix}"))
    rerun.report.loaded = loaded
    with pytest.raises(InfrastructureError, match=f"publish of {DAY}"):
        warehouse.publish(DAY, loaded, rerun.report.ledger("published"))
    assert day_summary(warehouse, DAY) == {
        "trips": 10,
        "fare": Decimal("211.40"),
        "run": "run00001",
        "region_daily": 3,
        "quarantine": 1,
    }
    assert [r["run_id"] for r in warehouse.recent_runs(5)] == ["run00001"]


CLIENT = Path(__file__).with_name("publish_client.py")


def test_a_publish_whose_client_died_after_submitting_commits_once_and_the_rerun_finds_it(
    tmp_path: Path, standin: StandIn, warehouse: BigQueryWarehouse
) -> None:
    """The client dies right after BigQuery (the stand-in) has its publish job; the job commits.

    The client is a process of its own (``publish_client.py``), SIGKILLed at
    ``publish-submitted`` (``tasks.faults``) right after ``jobs.insert`` of the publish
    transaction returned. The stand-in finishes the job with no client waiting (the test waits
    for it through the job's id, as BigQuery's job history would show it). A re-run of the
    publish by the same run (the publish task's retry, or the flow's retry: one run id) finds the
    run's ``published`` row in the ledger and submits no second transaction: the day is published
    once, whole, with one ledger row for the run (today's main appended a second one).
    """
    old = Day(tmp_path / "a", DAY, "run00001")
    assert old.run(warehouse, old.gcs_files(standin)) == "published"
    new = Day(tmp_path / "b", DAY, "run00002")
    new.report.loaded = warehouse.load(DAY, "run00002", new.gcs_files(standin))
    row = new.report.ledger("published")
    config = {
        "target": "bigquery",
        "endpoint": standin.endpoint,
        "project": standin.project,
        "dataset": warehouse.dataset,
        "maximum_bytes_billed": LIMIT,
        "run_date": DAY.isoformat(),
        "load": dataclasses.asdict(new.report.loaded),
        "ledger": {**dataclasses.asdict(row), "run_date": DAY.isoformat()},
    }
    standin.proxy.reset()
    killed = subprocess.run(
        [sys.executable, str(CLIENT), json.dumps(config)],
        env={**os.environ, KILL_ENV: SUBMITTED},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert "published" not in killed.stdout
    (submitted,) = [
        r.body
        for r in standin.proxy.requests
        if r.job_configuration is not None
        and "BEGIN TRANSACTION" in str(r.job_configuration)
        and not r.job_configuration.get("dryRun")
    ]
    job = warehouse.client.get_job(submitted["jobReference"]["jobId"], location="US")
    job.result(timeout=120)  # it ran to its end with nobody waiting for it

    published = {"trips": 10, "fare": Decimal("211.40"), "run": "run00002", "region_daily": 3}
    summary = day_summary(warehouse, DAY)
    assert {k: summary[k] for k in published} == published
    ledger_sql = "SELECT run_id, status FROM {ds}.runs ORDER BY finished_at"
    expected = [
        {"run_id": "run00001", "status": "published"},
        {"run_id": "run00002", "status": "published"},
    ]
    assert rows(warehouse, ledger_sql) == expected

    standin.proxy.reset()
    warehouse.publish(DAY, new.report.loaded, row)  # the re-run of the publish: same run

    again = [j for j in standin.proxy.jobs() if "BEGIN TRANSACTION" in str(j)]
    assert again == []  # no second transaction, not even its dry run
    summary = day_summary(warehouse, DAY)
    assert {k: summary[k] for k in published} == published
    assert rows(warehouse, ledger_sql) == expected
    assert warehouse.published_rows(DAY) == 10


def test_every_query_is_dry_run_first_and_carries_its_limits(
    tmp_path: Path, standin: StandIn, warehouse: BigQueryWarehouse
) -> None:
    day = Day(tmp_path, DAY, "run00001")
    assert day.run(warehouse, day.gcs_files(standin)) == "published"
    warehouse.recent_runs(5)

    jobs = standin.proxy.jobs()
    queries = [j for j in jobs if "query" in j]
    real = [i for i, j in enumerate(queries) if not j.get("dryRun")]
    assert len(real) >= 12  # 4 DDL, 3 staging DDL, 3 figures, ledger DDL, publish, reads
    for i in real:
        job = queries[i]
        before = queries[i - 1]
        assert before.get("dryRun") is True, job["query"]["query"]
        assert before["query"]["query"] == job["query"]["query"]
        assert job["query"]["maximumBytesBilled"] == str(LIMIT)
        assert job["jobTimeoutMs"] == "120000"
    assert len(queries) == 2 * len(real)
    # Load jobs have no maximumBytesBilled in the API (they bill nothing), but carry the timeout.
    for job in jobs:
        if "load" in job:
            assert job["jobTimeoutMs"] == "120000"
    publish = [j["query"]["query"] for j in queries if "BEGIN TRANSACTION" in j["query"]["query"]]
    assert len(publish) == 2  # its dry run, then the transaction itself
    assert "COMMIT TRANSACTION" in publish[1]


def test_a_query_estimated_over_the_limit_is_refused_before_it_runs(
    tmp_path: Path, standin: StandIn, warehouse: BigQueryWarehouse
) -> None:
    day = Day(tmp_path, DAY, "run00001")
    files = day.gcs_files(standin)
    # Stand-in figure: the emulator estimates 0 bytes for everything; the proxy states what
    # BigQuery's dry run would say for the publish transaction.
    standin.proxy.estimates.append(("BEGIN TRANSACTION", LIMIT + 1))
    with pytest.raises(UsageError) as refused:
        day.run(warehouse, files)
    message = str(refused.value)
    assert f"publish of {DAY}" in message
    assert f"{LIMIT + 1:,} bytes" in message and f"{LIMIT:,}" in message

    transaction = [
        j
        for j in standin.proxy.jobs()
        if "BEGIN TRANSACTION" in j.get("query", {}).get("query", "")
    ]
    assert [j.get("dryRun", False) for j in transaction] == [True]  # never sent to run
    assert warehouse.published_rows(DAY) == 0
    assert warehouse.recent_runs(5) == []


def test_usage_sums_the_bytes_bigquery_reports(
    tmp_path: Path, standin: StandIn, warehouse: BigQueryWarehouse
) -> None:
    day = Day(tmp_path, DAY, "run00001")
    files = day.gcs_files(standin)
    # The emulator reports 0 bytes for every job: so does usage().
    day.report.loaded = warehouse.load(DAY, "run00001", files)
    assert warehouse.usage().bytes_processed == 0
    # Stand-in figure: each finished query job reports 1 MiB processed and billed.
    standin.proxy.billed = 2**20
    before = sum(1 for j in standin.proxy.jobs() if "query" in j and not j.get("dryRun"))
    warehouse.figures(DAY, day.report.loaded)
    after = sum(1 for j in standin.proxy.jobs() if "query" in j and not j.get("dryRun"))
    assert after - before == 3
    assert warehouse.usage().bytes_processed == 3 * 2**20
    assert warehouse.usage().bytes_billed == 3 * 2**20


def test_local_staging_loads_by_upload(
    tmp_path: Path, standin: StandIn, warehouse: BigQueryWarehouse
) -> None:
    day = Day(tmp_path, DAY, "run00001")
    assert day.run(warehouse, day.local_files()) == "published"
    assert warehouse.published_rows(DAY) == 10
    uploads = [
        r.body["configuration"]["load"]
        for r in standin.proxy.requests
        if r.path.startswith("/upload/") and r.method == "POST" and r.job_configuration
    ]
    parquet = [u for u in uploads if u["sourceFormat"] == "PARQUET"]
    suffix = day.report.loaded.suffix  # type: ignore[union-attr]
    assert [u["destinationTable"]["tableId"] for u in parquet] == [
        f"{table}_{suffix}$20251115" for table, _, _ in PUBLISHED_TABLES
    ]
    assert all(
        u["autodetect"] is False and u["writeDisposition"] == "WRITE_TRUNCATE" for u in parquet
    )


def test_unreadable_staging_and_bad_configuration_are_refused(
    standin: StandIn, warehouse: BigQueryWarehouse
) -> None:
    s3 = StagedFiles(trips=["s3://bucket/trips.parquet"], quarantine=[], region_daily=[])
    with pytest.raises(UsageError, match="gs:// URIs or local paths"):
        warehouse.load(DAY, "run00001", s3)
    with pytest.raises(UsageError, match="not a safe SQL identifier"):
        BigQueryWarehouse(warehouse.client, project=standin.project, dataset="x; DROP")
    with pytest.raises(UsageError, match="not a GCP project id"):
        BigQueryWarehouse(warehouse.client, project="Bad Project", dataset="analytics")


def test_from_block_uses_the_blocks_endpoint_and_limits(
    standin: StandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No ambient identity here (and no metadata server to ask): the stand-in gets anonymous calls.
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    block = TripWarehouse(
        target="bigquery",
        project=standin.project,
        dataset="from_block",
        location="US",
        endpoint_url=standin.endpoint,
        maximum_bytes_billed=123_456_789,
        statement_timeout_s=77,
    )
    wh = from_block(block)
    standin.proxy.reset()
    wh.ensure_tables()
    assert {t.table_id for t in wh.client.list_tables("from_block")} == {
        "trips",
        "trips_quarantine",
        "region_daily",
        "runs",
    }
    real = [j for j in standin.proxy.jobs() if "query" in j and not j.get("dryRun")]
    assert real and all(j["query"]["maximumBytesBilled"] == "123456789" for j in real)
    assert all(j["jobTimeoutMs"] == "77000" for j in real)


@pytest.mark.usefixtures("prefect_server")
def test_tripflow_run_on_a_bigquery_block(workdir: Path, tmp_path: Path, standin: StandIn) -> None:
    """``tripflow run --warehouse block:NAME`` in a subprocess: the real CLI, flow, Prefect server
    and block loading; the block's endpoint is the stand-in (local staging: uploads)."""
    TripWarehouse(
        target="bigquery",
        project=standin.project,
        dataset="cli_run",
        endpoint_url=standin.endpoint,
        maximum_bytes_billed=LIMIT,
        statement_timeout_s=300,
    ).save("bigquery-standin", overwrite=True)
    standin.proxy.reset()
    # Stand-in figure: every finished query job reports 1 MiB processed and billed.
    standin.proxy.billed = 2**20
    env = {
        "NO_GCE_CHECK": "True",  # no metadata server to ask for an identity here
        "GOOGLE_APPLICATION_CREDENTIALS": "",
        "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
    }
    args = ("--source", "sample", "--date", DAY.isoformat(), "--json")
    proc = tripflow("run", *args, "--warehouse", "block:bigquery-standin", cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = standin.proxy.jobs()  # the run's jobs (before this test's own read-back queries)
    report = json.loads(proc.stdout)
    assert report["status"] == "published", report.get("error")
    assert report["rows"]["loaded"] == 10

    client = bigquery.Client(
        project=standin.project,
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options=ClientOptions(api_endpoint=standin.endpoint),
    )
    (row,) = client.query(
        f"SELECT count(*) AS n, sum(fare_usd) AS fare FROM `{standin.project}.cli_run.trips`"
    ).result()
    assert (row["n"], row["fare"]) == (10, Decimal("211.40"))
    (ledger,) = client.query(
        f"SELECT run_id, status FROM `{standin.project}.cli_run.runs`"
    ).result()
    assert (ledger["run_id"], ledger["status"]) == (report["run_id"], "published")
    real = dry_run_first(jobs)  # stages may interleave their queries
    assert len(real) >= 12
    assert all(job["query"]["maximumBytesBilled"] == str(LIMIT) for job in real)
    # The cost report sums what load, validate and publish's jobs reported (the report's own
    # reading of the ledger is not a stage's).
    stage_jobs = [j for j in real if "LIMIT @limit" not in j["query"]["query"]]
    assert report["cost"]["warehouse_bytes_billed"] == len(stage_jobs) * 2**20
    assert report["cost"]["warehouse_bytes_processed"] == len(stage_jobs) * 2**20


def test_from_block_authenticates_with_the_gcp_credentials_block(standin: StandIn) -> None:
    """A prefect-gcp ``GcpCredentials`` block with service account info: the client signs a JWT
    with its key, exchanges it at the account's ``token_uri`` (the proxy stands in for Google's
    OAuth endpoint) and sends that token with every API call; the key is never sent."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    email = f"bq-writer@{standin.project}.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": standin.project,
        "private_key_id": "standin-key-1",
        "private_key": private_pem,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": f"{standin.endpoint}{TOKEN_PATH}",
    }
    block = TripWarehouse(
        target="bigquery",
        dataset="with_credentials",
        endpoint_url=standin.endpoint,
        gcp_credentials=GcpCredentials(service_account_info=info, project=standin.project),
    )
    wh = from_block(block)
    assert wh.project == standin.project  # from the credentials block
    standin.proxy.reset()
    wh.ensure_tables()

    (grant,) = [r for r in standin.proxy.requests if r.path == TOKEN_PATH]
    claims = google_jwt.decode(  # type: ignore[no-untyped-call]
        grant.body["assertion"][0], certs=public_pem, verify=True
    )
    assert claims["iss"] == email
    api = [r for r in standin.proxy.requests if r.path.startswith("/bigquery/")]
    assert api and {r.authorization for r in api} == {f"Bearer {STANDIN_TOKEN}"}
    key_body = "".join(private_pem.splitlines()[1:-1])
    assert all(key_body[:40] not in json.dumps(r.body) for r in standin.proxy.requests)


def test_an_unreachable_bigquery_is_an_infrastructure_error(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = bigquery.Client(
        project="tripflow-test",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options=ClientOptions(api_endpoint=f"http://127.0.0.1:{port}"),
    )
    wh = BigQueryWarehouse(client, project="tripflow-test", dataset="analytics", api_retry_s=1.0)
    started = time.monotonic()
    with pytest.raises(InfrastructureError, match="BigQuery published rows: dry run failed"):
        wh.published_rows(DAY)
    assert time.monotonic() - started < 30


def test_a_query_past_the_timeout_is_cancelled(
    standin: StandIn, warehouse: BigQueryWarehouse
) -> None:
    warehouse.ensure_tables()
    warehouse.statement_timeout_s = 2
    standin.proxy.reset()
    # Stand-in behaviour: the proxy reports this query's job as RUNNING, forever.
    standin.proxy.hold.append("count(*) AS n FROM")
    started = time.monotonic()
    with pytest.raises(InfrastructureError, match=r"published rows: no result after 2s"):
        warehouse.published_rows(DAY)
    assert time.monotonic() - started < 30
    (held,) = standin.proxy.held_jobs
    cancels = [r.path for r in standin.proxy.requests if r.path.endswith("/cancel")]
    assert cancels == [f"/bigquery/v2/projects/{standin.project}/jobs/{held}/cancel"]
    (job,) = [j for j in standin.proxy.jobs() if "query" in j and not j.get("dryRun")]
    assert job["jobTimeoutMs"] == "2000"  # BigQuery would stop it there on its own too
