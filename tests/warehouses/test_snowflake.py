"""The Snowflake warehouse on a real staged day, run against a STAND-IN: fakesnow.

Stand-in: fakesnow 0.12.1 (``fakesnow.patch()`` replaces ``snowflake.connector.connect``; the SQL
is translated by sqlglot and runs on an in-memory DuckDB). The warehouse code, the real
prefect-snowflake ``SnowflakeCredentials.get_client`` path (key-pair from a PEM file) and the
real Parquet staged by ``tasks.stages.extract/transform`` are exercised unchanged. fakesnow models:
``PUT … AUTO_COMPRESS = FALSE`` to a table stage, ``COPY INTO … FILE_FORMAT = (TYPE = PARQUET)
MATCH_BY_COLUMN_NAME`` with its per-file result rows, ``BEGIN``/``COMMIT``/``ROLLBACK``, NOT NULL,
``QUALIFY``, ``PARSE_JSON``/VARIANT.

What fakesnow does NOT model, and how it is covered instead:
- ``COPY … FROM`` an S3/GCS external stage (no cloud storage): the exact statement text is asserted;
  the same statement shape (``FROM @stage/<folder>/ FILES = (…)``) runs on fakesnow against an
  external stage whose URL is ``file://`` (a stand-in only: Snowflake has no file:// stages).
- ``ALTER SESSION SET STATEMENT_TIMEOUT_IN_SECONDS`` and ``ALTER WAREHOUSE … SET WAREHOUSE_SIZE``
  (not implemented): they are answered as no-ops (fakesnow's ``nop_regexes``) and the test asserts
  they were sent, by their exact text, from fakesnow's own statement log (``FAKESNOW_DEBUG``).
- ``ON_ERROR = ABORT_STATEMENT`` atomicity across files, ``CLUSTER BY`` and ``TRANSIENT`` (fakesnow
  ignores the last two; the DDL text is asserted). fakesnow loads file by file, so the test that a
  bad file leaves nothing half-loaded also proves the warehouse drops the run's tables itself.
- Credentials: fakesnow accepts any; the test asserts the key handed to ``connect`` is the mounted
  file's key (DER), and that its PEM body appears nowhere it must not.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import signal
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import fakesnow
import polars as pl
import pytest
import snowflake.connector
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from helpers import tripflow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect_snowflake import SnowflakeConnector, SnowflakeCredentials
from warehouses.snowflake_support import (
    NOT_IN_FAKESNOW,
    fakesnow_site,
    key_digests,
    persisted_fakesnow,
)

from tasks.checks import run_checks
from tasks.config import load_settings
from tasks.errors import InfrastructureError, UsageError
from tasks.faults import KILL_ENV, SUBMITTED
from tasks.report import RunReport
from tasks.stages import RunContext, extract, transform
from tasks.warehouses import warehouse_from_block
from tasks.warehouses.base import LedgerRow, LoadResult, StagedFiles
from tasks.warehouses.blocks import TripWarehouse
from tasks.warehouses.snowflake import SnowflakeWarehouse

DAY = date(2025, 11, 15)
DATABASE = "TRIPFLOW"
SCHEMA = "ANALYTICS"


# --- a real staged day ---------------------------------------------------------------------------


class StagedDay:
    """A day extracted and transformed for real (synthetic source) into a tmp staging folder."""

    def __init__(self, root: Path, rows: int = 3000) -> None:
        self.root = root
        settings = load_settings(
            {
                "staging": str(root / "staging"),
                "pii_key_file": str(root / "pii.key"),
                "source": "synthetic",
                "rows": rows,
            },
            environ={},
        )
        self.ctx = RunContext.create("run0001", DAY, settings)
        self.report = RunReport(self.ctx)
        self.report.extracted = extract(self.ctx)
        self.report.transformed = transform(self.ctx)
        self.report.read_regions()
        staged = [
            self.ctx.staging.read(stage, DAY) for stage in ("clean", "quarantine", "region_daily")
        ]
        self.clean, self.quarantine, self.regions = staged
        self.files = StagedFiles(
            trips=self.clean.files,
            quarantine=self.quarantine.files,
            region_daily=self.regions.files,
        )

    def ledger(self, run_id: str, loaded: LoadResult, status: str = "published") -> LedgerRow:
        self.report.loaded = loaded
        return replace(self.report.ledger(status), run_id=run_id)


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> StagedDay:
    return StagedDay(tmp_path_factory.mktemp("snowflake-day"))


@pytest.fixture
def fake() -> Iterator[None]:
    """A fresh fakesnow (in-memory) for one test."""
    with fakesnow.patch(nop_regexes=NOT_IN_FAKESNOW):
        yield


def connect() -> Any:
    return snowflake.connector.connect(
        database=DATABASE, schema=SCHEMA, account="stand-in", user="TRIPFLOW_LOADER"
    )


def query(sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    con = connect()
    try:
        cur = con.cursor()
        cur.execute(sql, params)
        return [tuple(r) for r in cur.fetchall()]
    finally:
        con.close()


def tables() -> set[str]:
    rows = query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %(s)s", {"s": SCHEMA}
    )
    return {str(r[0]).lower() for r in rows}


def warehouse(**kwargs: Any) -> SnowflakeWarehouse:
    return SnowflakeWarehouse(connect, schema=SCHEMA, **kwargs)


# --- load, checks, publish -----------------------------------------------------------------------


def test_put_and_copy_load_the_staged_day_and_the_checks_pass(day: StagedDay, fake: None) -> None:
    wh = warehouse()
    wh.ensure_tables()
    loaded = wh.load(DAY, "run0001", day.files)

    assert (loaded.rows, loaded.quarantine_rows, loaded.region_rows) == (
        day.clean.rows,
        day.quarantine.rows,
        day.regions.rows,
    )
    assert day.quarantine.rows > 0  # the ARRAY column (reasons) is exercised too
    suffix = loaded.suffix
    assert {f"trips_{suffix}", f"trips_quarantine_{suffix}", f"region_daily_{suffix}"} <= tables()

    # The loaded rows are the staged rows: ids, exact money, reasons.
    staged = pl.read_parquet(list(day.clean.files))
    loaded_ids = {r[0] for r in query(f"SELECT trip_id FROM {SCHEMA}.trips_{suffix}")}
    assert loaded_ids == set(staged["trip_id"].to_list())
    reasons = query(f"SELECT reasons FROM {SCHEMA}.trips_quarantine_{suffix}")
    staged_reasons = pl.read_parquet(list(day.quarantine.files))["reasons"].to_list()
    assert sorted(json.loads(r[0]) for r in reasons) == sorted(staged_reasons)

    figures = wh.figures(DAY, loaded)
    assert figures.rows == day.clean.rows
    assert figures.fare_usd_sum == Decimal(day.clean.manifest["checksums"]["fare_usd_sum"])
    assert figures.duplicate_trip_ids == 0
    assert figures.region_mismatches == []
    checks = run_checks(
        figures,
        min_rows=1,
        extracted=day.report.rows["extracted"],
        quarantined=day.quarantine.rows,
        threshold=0.05,
        staged_rows=day.clean.rows,
        staged_fare_usd_sum=Decimal(day.clean.manifest["checksums"]["fare_usd_sum"]),
    )
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]

    wh.publish(DAY, loaded, day.ledger("run0001", loaded))
    assert wh.published_rows(DAY) == day.clean.rows
    assert query(
        f"SELECT count(*) FROM {SCHEMA}.trips_quarantine WHERE trip_date = %(d)s", {"d": DAY}
    ) == [(day.quarantine.rows,)]
    assert query(f"SELECT count(*) FROM {SCHEMA}.region_daily") == [(day.regions.rows,)]
    # The run's staging tables are gone once published.
    assert not {t for t in tables() if t.endswith(suffix.lower())}

    (run,) = wh.recent_runs(5)
    assert (run["run_id"], run["run_date"], run["status"]) == ("run0001", DAY, "published")
    assert run["rows_loaded"] == day.clean.rows
    assert run["stages"]["warehouse_staging"]["suffix"] == suffix  # VARIANT read back as JSON


def test_republishing_a_day_replaces_it_exactly_once(day: StagedDay, fake: None) -> None:
    wh = warehouse()
    first = wh.load(DAY, "run0001", day.files)
    wh.publish(DAY, first, day.ledger("run0001", first))
    # A failed run of the day keeps its tables for inspection until the day is published again.
    failed = wh.load(DAY, "runfail1", day.files)
    wh.record_run(day.ledger("runfail1", failed, status="failed"))
    assert f"trips_{failed.suffix}".lower() in tables()

    second = wh.load(DAY, "run0002", day.files)
    wh.publish(DAY, second, day.ledger("run0002", second))
    # A retried publish of the same run (its task died after the COMMIT) changes nothing.
    wh.publish(DAY, second, day.ledger("run0002", second))

    assert wh.published_rows(DAY) == day.clean.rows  # not twice
    assert query(f"SELECT count(*), count(DISTINCT trip_id) FROM {SCHEMA}.trips") == [
        (day.clean.rows, day.clean.rows)
    ]
    assert query(f"SELECT count(*) FROM {SCHEMA}.trips_quarantine") == [(day.quarantine.rows,)]
    assert query(f"SELECT count(*) FROM {SCHEMA}.region_daily") == [(day.regions.rows,)]
    assert tables() == {"trips", "trips_quarantine", "region_daily", "runs"}
    statuses = [(r["run_id"], r["status"]) for r in wh.recent_runs(10)]
    assert sorted(statuses) == [
        ("run0001", "published"),
        ("run0002", "published"),
        ("runfail1", "failed"),
    ]

    # The checks' history reads the ledger: the latest published run of each of D-7 .. D-1.
    later = wh.load(date(2025, 11, 16), "run0003", day.files)
    assert wh.figures(date(2025, 11, 16), later).history == {DAY: day.clean.rows}


def test_a_failure_inside_the_publish_transaction_rolls_back(
    day: StagedDay, fake: None, tmp_path: Path
) -> None:
    wh = warehouse()
    old = wh.load(DAY, "run0001", day.files)
    wh.publish(DAY, old, day.ledger("run0001", old))
    old_ids = {r[0] for r in query(f"SELECT trip_id FROM {SCHEMA}.trips")}

    # A new version of the day: the first 100 trips only (region totals recomputed to match).
    trips = pl.read_parquet(list(day.clean.files)).head(100)
    (tmp_path / "clean").mkdir()
    trips.write_parquet(tmp_path / "clean" / "part-00000.parquet")
    new_files = replace(day.files, trips=(str(tmp_path / "clean" / "part-00000.parquet"),))
    new = wh.load(DAY, "run0002", new_files)
    assert new.rows == 100

    # The ledger row is the last statement before COMMIT; a NOT NULL column left null fails it.
    broken = replace(day.ledger("run0002", new), source=None)  # type: ignore[arg-type]
    with pytest.raises(InfrastructureError, match="publish: ledger row failed"):
        wh.publish(DAY, new, broken)

    # The old day, whole: its rows, its region totals, its one ledger row.
    assert {r[0] for r in query(f"SELECT trip_id FROM {SCHEMA}.trips")} == old_ids
    assert wh.published_rows(DAY) == day.clean.rows
    assert query(f"SELECT count(*) FROM {SCHEMA}.region_daily") == [(day.regions.rows,)]
    assert [r["run_id"] for r in wh.recent_runs(10)] == ["run0001"]
    # The run's tables are kept, so publishing can be retried; then the day is the new one.
    assert f"trips_{new.suffix}".lower() in tables()
    wh.publish(DAY, new, day.ledger("run0002", new))
    assert wh.published_rows(DAY) == 100
    assert {r[0] for r in query(f"SELECT trip_id FROM {SCHEMA}.trips")} == set(
        trips["trip_id"].to_list()
    )


def test_publish_refuses_rows_of_another_day(day: StagedDay, fake: None, tmp_path: Path) -> None:
    """Replacing a day must not insert rows a later re-run of that day would not delete."""
    trips = pl.read_parquet(list(day.clean.files)).with_columns(
        trip_date=pl.lit(date(2025, 11, 14))
    )
    trips.write_parquet(tmp_path / "part-00000.parquet")
    wh = warehouse()
    loaded = wh.load(
        DAY, "run0001", replace(day.files, trips=(str(tmp_path / "part-00000.parquet"),))
    )
    with pytest.raises(InfrastructureError, match="rows are not of 2025-11-15; nothing published"):
        wh.publish(DAY, loaded, day.ledger("run0001", loaded))
    assert wh.published_rows(date(2025, 11, 14)) == 0
    assert wh.recent_runs(5) == []


# --- a bad file fails the COPY loudly, nothing half-loaded ---------------------------------------


def test_a_corrupt_parquet_file_fails_the_copy_and_leaves_nothing(
    day: StagedDay, fake: None, tmp_path: Path
) -> None:
    wh = warehouse()
    published = wh.load(DAY, "run0001", day.files)
    wh.publish(DAY, published, day.ledger("run0001", published))

    # The day's good file, then a truncated copy of it: the good one may load first on fakesnow.
    good = tmp_path / "part-00000.parquet"
    bad = tmp_path / "part-00001.parquet"
    shutil.copy(day.clean.files[0], good)
    bad.write_bytes(Path(day.clean.files[0]).read_bytes()[:200])
    files = replace(day.files, trips=(str(good), str(bad)))

    with pytest.raises(InfrastructureError, match=r"COPY INTO ANALYTICS\.trips_20251115_run0002"):
        wh.load(DAY, "run0002", files)
    assert not {t for t in tables() if "run0002" in t}  # none of the run's tables is left
    assert wh.published_rows(DAY) == day.clean.rows  # the published day is untouched


def test_a_parquet_file_missing_a_required_column_fails_the_copy(
    day: StagedDay, fake: None, tmp_path: Path
) -> None:
    trips = pl.read_parquet(list(day.clean.files)).drop("fare_usd")
    trips.write_parquet(tmp_path / "part-00000.parquet")
    wh = warehouse()
    with pytest.raises(InfrastructureError, match=r"COPY INTO ANALYTICS\.trips_20251115_run0001"):
        wh.load(DAY, "run0001", replace(day.files, trips=(str(tmp_path / "part-00000.parquet"),)))
    assert not {t for t in tables() if "run0001" in t}


# --- the production path: an external stage over object storage ----------------------------------


def test_copy_from_an_s3_external_stage_names_exactly_the_manifest_files() -> None:
    """Not executable on fakesnow (no S3 external stages): the statement text is the contract."""
    wh = SnowflakeWarehouse(
        connect,
        schema=SCHEMA,
        stage_name="TRIPFLOW.ANALYTICS.TRIPFLOW_STAGE",
        stage_url="s3://tripflow-staging/prod",
    )
    names = {"schema": SCHEMA, "table": "trips", "suffix": "20251115_run0001"}
    uris = [
        "s3://tripflow-staging/prod/clean/date=2025-11-15/part-00000.parquet",
        "s3://tripflow-staging/prod/clean/date=2025-11-15/part-00001.parquet",
    ]
    assert wh.copy_statements(names, uris) == [
        "COPY INTO ANALYTICS.trips_20251115_run0001 "
        "FROM @TRIPFLOW.ANALYTICS.TRIPFLOW_STAGE/clean/date=2025-11-15/ "
        "FILES = ('part-00000.parquet', 'part-00001.parquet') "
        "FILE_FORMAT = (TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE "
        "ON_ERROR = ABORT_STATEMENT FORCE = TRUE"
    ]
    # gcsfs spells GCS URIs gs://, Snowflake stage URLs gcs://: the same files either way.
    gcs = SnowflakeWarehouse(connect, stage_name="S", stage_url="gcs://bucket/staging/")
    (statement,) = gcs.copy_statements(
        names, ["gs://bucket/staging/region_daily/date=2025-11-15/a.parquet"]
    )
    assert "FROM @S/region_daily/date=2025-11-15/ FILES = ('a.parquet')" in statement
    # A file outside the stage's URL, or in object storage with no stage: a configuration error.
    with pytest.raises(UsageError, match="not under the Snowflake stage URL"):
        wh.copy_statements(names, ["s3://elsewhere/clean/date=2025-11-15/part-00000.parquet"])
    with pytest.raises(UsageError, match="set the TripWarehouse block's stage_name"):
        SnowflakeWarehouse(connect).copy_statements(names, uris)
    with pytest.raises(UsageError, match="unsupported character"):
        wh.copy_statements(
            names, ["s3://tripflow-staging/prod/clean/x'); DROP TABLE t; --/a.parquet"]
        )


def test_the_external_stage_copy_runs_on_fakesnow_over_a_file_url(
    day: StagedDay, fake: None
) -> None:
    """The production statement shape (``FROM @stage/<folder>/ FILES = (…)``), executed.

    The stage's URL is ``file://`` here: a stand-in only (Snowflake stages are S3/GCS/Azure).
    """
    stage_url = "file://" + str((day.root / "staging").resolve()) + "/"
    query(f"CREATE STAGE {SCHEMA}.TRIPFLOW_STAGE URL = '{stage_url}'")
    wh = warehouse(stage_name="TRIPFLOW_STAGE", stage_url=str(day.root / "staging"))
    loaded = wh.load(DAY, "run0001", day.files)
    assert (loaded.rows, loaded.quarantine_rows, loaded.region_rows) == (
        day.clean.rows,
        day.quarantine.rows,
        day.regions.rows,
    )
    assert wh.figures(DAY, loaded).region_mismatches == []


def test_published_tables_are_clustered_by_day_and_run_tables_are_transient() -> None:
    """fakesnow ignores CLUSTER BY and TRANSIENT: the DDL sent is asserted."""
    from tasks.warehouses import snowflake as sf

    published = sf.CREATE_PUBLISHED_TABLE.format(schema=SCHEMA, table="trips", columns="x INT")
    assert published == "CREATE TABLE IF NOT EXISTS ANALYTICS.trips (x INT) CLUSTER BY (trip_date)"
    run = sf.CREATE_RUN_TABLE.format(schema=SCHEMA, table="trips", suffix="s", columns="x INT")
    assert run.startswith("CREATE OR REPLACE TRANSIENT TABLE ANALYTICS.trips_s")
    assert "ON_ERROR = ABORT_STATEMENT" in sf.COPY_FROM_TABLE_STAGE
    assert "AUTO_COMPRESS = FALSE" in sf.PUT_FILE


# --- session settings from the block -------------------------------------------------------------


def test_statement_timeout_every_session_and_warehouse_size_once(
    fake: None, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FAKESNOW_DEBUG", "snowflake")  # fakesnow prints each statement it receives
    wh = warehouse(statement_timeout_s=120, warehouse="TRIPFLOW_WH", warehouse_size="small")
    wh.ensure_tables()
    wh.published_rows(DAY)
    sent = [line.rstrip(";") for line in capfd.readouterr().err.splitlines()]
    assert sent.count("ALTER SESSION SET STATEMENT_TIMEOUT_IN_SECONDS = 120") == 2
    assert sent.count("ALTER WAREHOUSE TRIPFLOW_WH SET WAREHOUSE_SIZE = 'SMALL'") == 1
    assert sent.index("ALTER SESSION SET STATEMENT_TIMEOUT_IN_SECONDS = 120") < sent.index(
        "CREATE SCHEMA IF NOT EXISTS ANALYTICS"
    )

    warehouse(statement_timeout_s=30, warehouse="TRIPFLOW_WH").ensure_tables()
    log = capfd.readouterr().err
    assert "ALTER SESSION SET STATEMENT_TIMEOUT_IN_SECONDS = 30" in log
    assert "ALTER WAREHOUSE" not in log  # no size configured: the warehouse is left as it is


def _connector() -> SnowflakeConnector:
    credentials = SnowflakeCredentials(account="tripflow-test", user="U", password="stand-in")
    return SnowflakeConnector(
        credentials=credentials, database=DATABASE, warehouse="TRIPFLOW_WH", schema=SCHEMA
    )


def test_a_block_without_warehouse_size_never_resizes_the_warehouse(
    fake: None, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The block's default sends no ``ALTER WAREHOUSE`` (fakesnow's own statement log): a shared
    warehouse sized by someone else keeps its size."""
    monkeypatch.setenv("FAKESNOW_DEBUG", "snowflake")
    block = TripWarehouse(target="snowflake", dataset=SCHEMA, snowflake_connector=_connector())
    assert block.warehouse_size is None
    wh = warehouse_from_block(block)
    wh.ensure_tables()
    wh.published_rows(DAY)
    sent = capfd.readouterr().err
    assert "ALTER SESSION SET STATEMENT_TIMEOUT_IN_SECONDS" in sent  # the log was on
    assert "ALTER WAREHOUSE" not in sent


@pytest.mark.usefixtures("prefect_server")
def test_a_block_saved_with_the_old_default_size_is_named_in_a_warning(
    fake: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A document saved when ``warehouse_size`` defaulted to XSMALL (made here as Prefect made it
    then: the block schema of that time, whose default was XSMALL, and every field's value) is
    still resized, as it says, but the run warns, naming the block and how to clear it. The same
    value saved under today's schema is a choice: no warning."""
    from prefect.client.schemas.actions import BlockDocumentCreate, BlockSchemaCreate

    connector = _connector()
    connector.save("snowflake-size-connector", overwrite=True)
    current = TripWarehouse(
        target="snowflake", dataset=SCHEMA, warehouse_size="XSMALL", snowflake_connector=connector
    )
    current.save("snowflake-size-chosen", overwrite=True)  # registers today's type and schema
    fields = json.loads(json.dumps(TripWarehouse.model_json_schema()))
    fields["properties"]["warehouse_size"]["default"] = "XSMALL"  # the schema before the change
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug("trip-warehouse")
        old_schema = client.create_block_schema(
            BlockSchemaCreate(
                fields=fields,
                block_type_id=block_type.id,
                capabilities=[],
                version="non-versioned",
            )
        )
        saved = client.read_block_document_by_name("snowflake-size-chosen", "trip-warehouse")
        client.create_block_document(
            BlockDocumentCreate(
                name="snowflake-size-inherited",
                data={**saved.data, "snowflake_connector": {"$ref": {
                    "block_document_id": str(connector._block_document_id)}}},
                block_schema_id=old_schema.id,
                block_type_id=block_type.id,
            )
        )  # fmt: skip

    caplog.set_level("WARNING", logger="tasks.warehouses.snowflake")
    inherited = TripWarehouse.load("snowflake-size-inherited")
    assert inherited.warehouse_size == "XSMALL" and inherited.inherited_warehouse_size()
    wh = warehouse_from_block(inherited)
    assert isinstance(wh, SnowflakeWarehouse) and wh.warehouse_size == "XSMALL"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "'snowflake-size-inherited'" in warnings[0] and "warehouse_size XSMALL" in warnings[0]
    assert "warehouse_size=None" in warnings[0]

    caplog.clear()
    chosen = TripWarehouse.load("snowflake-size-chosen")
    assert chosen.warehouse_size == "XSMALL" and not chosen.inherited_warehouse_size()
    warehouse_from_block(chosen)
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []


def test_bad_session_configuration_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="warehouse_size 'HUGE'"):
        warehouse(warehouse="WH", warehouse_size="HUGE")
    with pytest.raises(UsageError, match="not a safe SQL identifier"):
        warehouse(warehouse="WH; DROP DATABASE X")
    with pytest.raises(UsageError, match="both stage_name and stage_url"):
        warehouse(stage_name="TRIPFLOW_STAGE")
    with pytest.raises(UsageError, match="must be positive"):
        warehouse(statement_timeout_s=0)


# --- the block, key-pair auth from a mounted secret, and the private-key canary ------------------


def _mounted_key(folder: Path) -> tuple[Path, str, bytes]:
    """An RSA key written as the Kubernetes Secret mount would hold it: (path, PEM body, DER)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = folder / "mnt" / "secrets" / "snowflake-private-key.pem"
    path.parent.mkdir(parents=True)
    path.write_bytes(pem)
    path.chmod(0o400)
    body = "".join(pem.decode().strip().splitlines()[1:-1])
    return path, body, der


def _block(key_path: Path) -> TripWarehouse:
    credentials = SnowflakeCredentials(
        account="tripflow-test", user="TRIPFLOW_LOADER", private_key_path=key_path
    )
    connector = SnowflakeConnector(
        credentials=credentials, database=DATABASE, warehouse="TRIPFLOW_WH", schema=SCHEMA
    )
    return TripWarehouse(
        target="snowflake",
        database=DATABASE,
        dataset=SCHEMA,
        statement_timeout_s=600,
        warehouse_size="XSMALL",
        snowflake_connector=connector,
    )


def _secret_forms(body: str, der: bytes) -> list[str]:
    """The key as text in the forms it could leak in (PEM body lines, base64 and hex of the DER)."""
    lines = [
        line for line in (body[i : i + 64] for i in range(0, len(body), 64)) if len(line) == 64
    ]
    return [body, base64.b64encode(der).decode(), der.hex(), *lines[1:4]]


def test_block_key_pair_auth_and_the_private_key_canary(
    day: StagedDay,
    fake: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("DEBUG")
    monkeypatch.setenv("FAKESNOW_DEBUG", "snowflake")  # every statement and its parameters, logged
    key_path, body, der = _mounted_key(tmp_path)
    block = _block(key_path)

    wh = warehouse_from_block(block)  # the --warehouse block:NAME dispatcher
    assert isinstance(wh, SnowflakeWarehouse)
    wh.ensure_tables()
    loaded = wh.load(DAY, "run0001", day.files)
    wh.publish(DAY, loaded, day.ledger("run0001", loaded))
    runs = wh.recent_runs(5)
    assert wh.published_rows(DAY) == day.clean.rows

    # Key-pair auth for real: prefect-snowflake read the mounted file and handed its key to connect.
    connect_kwargs = snowflake.connector.connect.call_args.kwargs  # type: ignore[attr-defined]
    assert connect_kwargs["private_key"] == der
    assert (connect_kwargs["database"], connect_kwargs["schema"]) == (DATABASE, SCHEMA)
    assert "password" not in connect_kwargs
    assert connect_kwargs["autocommit"] is True  # whatever the saved credentials block says

    # ... and the key is nowhere else: logs, statements, output, staged files, warehouse tables.
    captured = capfd.readouterr()
    dumps = [
        json.dumps(row, default=str)
        for table in ("trips", "trips_quarantine", "region_daily", "runs")
        for row in query(f"SELECT * FROM {SCHEMA}.{table}")
    ]
    staged = [
        p.read_bytes().decode("latin-1") for p in (day.root / "staging").rglob("*") if p.is_file()
    ]
    haystacks = {
        "logs": caplog.text,
        "stdout": captured.out,
        "stderr (every statement sent)": captured.err,
        "recent_runs": json.dumps(runs, default=str),
        "warehouse tables": "\n".join(dumps),
        "staged files": "\n".join(staged),
        "description": wh.description,
    }
    assert "ALTER SESSION SET STATEMENT_TIMEOUT_IN_SECONDS = 600" in captured.err  # logs were on
    for where, text in haystacks.items():
        for form in _secret_forms(body, der):
            assert form not in text, f"private key found in {where}"


def test_a_broken_key_file_fails_to_connect_without_echoing_it(tmp_path: Path, fake: None) -> None:
    key_path, body, der = _mounted_key(tmp_path)
    pem = key_path.read_text()
    key_path.chmod(0o600)
    lines = pem.strip().splitlines()
    key_path.write_text("\n".join([lines[0], *lines[1:8], lines[-1]]) + "\n")  # truncated body
    wh = warehouse_from_block(_block(key_path))
    with pytest.raises(InfrastructureError, match="cannot connect") as failure:
        wh.ensure_tables()
    message = str(failure.value)
    for form in [*_secret_forms(body, der), body[:64], body[64:128]]:
        assert form not in message
    assert failure.value.__cause__ is None  # the parser's exception (and its input) is not chained


def test_the_block_needs_its_connector() -> None:
    with pytest.raises(UsageError, match="needs its snowflake_connector"):
        warehouse_from_block(TripWarehouse(target="snowflake"))


@pytest.mark.usefixtures("prefect_server")
def test_a_full_tripflow_run_on_the_snowflake_block_leaks_no_private_key(
    workdir: Path, tmp_path: Path
) -> None:
    """``tripflow run --warehouse block:NAME`` in a subprocess, its Snowflake being fakesnow.

    The subprocess loads a test-only ``sitecustomize`` (``snowflake_support``) that patches
    ``snowflake.connector.connect`` with a persisted fakesnow: everything else is the real CLI,
    flow, Prefect server, block loading, prefect-snowflake key-pair auth and staging.
    """
    key_path, body, der = _mounted_key(tmp_path)
    _block(key_path).save("snowflake-canary", overwrite=True)
    env = {
        **fakesnow_site(tmp_path),
        "PREFECT_LOGGING_LEVEL": "DEBUG",
        # fakesnow prints every statement with its parameters: the flow's logs then hold them.
        "FAKESNOW_DEBUG": "snowflake",
    }
    args = ("--source", "synthetic", "--rows", "2000", "--date", DAY.isoformat())
    proc = tripflow(
        "run", *args, "--warehouse", "block:snowflake-canary", "--json", cwd=workdir, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "published", report.get("error")
    published = report["rows"]["loaded"]
    assert published > 1900

    # Every connection authenticated with the mounted key (digests recorded by the stand-in).
    digests = key_digests(tmp_path)
    assert digests and set(digests) == {hashlib.sha256(der).hexdigest()}

    with persisted_fakesnow(tmp_path, DATABASE, SCHEMA) as cur:
        cur.execute(f"SELECT count(*) FROM {SCHEMA}.trips WHERE trip_date = %(d)s", {"d": DAY})
        assert cur.fetchall() == [(published,)]
        cur.execute(f"SELECT status, rows_loaded FROM {SCHEMA}.runs")
        assert cur.fetchall() == [("published", published)]
        dumps = []
        for table in ("trips", "trips_quarantine", "region_daily", "runs"):
            cur.execute(f"SELECT * FROM {SCHEMA}.{table}")
            dumps += [json.dumps(row, default=str) for row in cur.fetchall()]

    flow_run_id = UUID(report["flow_run_id"])
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    log_text = "\n".join(log.message for log in logs)
    assert "COPY INTO ANALYTICS.trips_" in log_text and "PUT 'file://" in log_text
    assert artifacts
    staged = [
        p.read_bytes().decode("latin-1") for p in (workdir / ".tripflow").rglob("*") if p.is_file()
    ]
    haystacks = {
        "stdout (the JSON report)": proc.stdout,
        "stderr": proc.stderr,
        "flow run logs (with every statement sent)": log_text,
        "artifacts": "\n".join(str(a.data) for a in artifacts),
        "warehouse tables": "\n".join(dumps),
        "staging and .tripflow files": "\n".join(staged),
    }
    for where, text in haystacks.items():
        for form in _secret_forms(body, der):
            assert form not in text, f"private key found in {where}"


@pytest.mark.usefixtures("prefect_server")
def test_sigkill_at_the_kill_points_on_fakesnow_leaves_one_whole_day(
    workdir: Path, tmp_path: Path
) -> None:
    """``tripflow run`` on the Snowflake block (fakesnow, persisted) SIGKILLed at its kill points:
    ``load`` (a run table loaded, its siblings not), ``publish`` (delete, insert and ledger row run,
    COMMIT not sent) and ``publish-submitted`` (COMMIT sent, the run's tables not dropped), one
    after the other, then a re-run. Before the COMMIT the old day stays whole; after it the killed
    run's day is whole and in the ledger; the re-run (over the killed runs' leftovers) replaces the
    day whole, with one ledger row per published run.

    What this proves is **tripflow's statement order** — every change to the day inside one
    ``BEGIN … COMMIT``, the ledger row inside it, DDL only after it — on fakesnow, whose
    transactions are DuckDB's. It does **not** prove Snowflake's own atomicity (that Snowflake
    rolls back a session killed mid-transaction, or that its COMMIT is all or nothing): nothing
    here runs Snowflake.
    """
    key_path, _, _ = _mounted_key(tmp_path)
    _block(key_path).save("snowflake-kill", overwrite=True)
    site = fakesnow_site(tmp_path)

    def run(rows: int, kill: str | None = None) -> Any:
        env = {**site, **({KILL_ENV: kill} if kill else {})}
        args = ("--source", "synthetic", "--rows", str(rows), "--date", DAY.isoformat())
        return tripflow(
            "run", *args, "--warehouse", "block:snowflake-kill", "--json", cwd=workdir, env=env
        )

    def state() -> tuple[int, int, set[str], list[tuple[Any, ...]]]:
        """(rows, distinct trip ids, run ids of the day, published ledger rows)."""
        with persisted_fakesnow(tmp_path, DATABASE, SCHEMA) as cur:
            cur.execute(
                f"SELECT count(*), count(DISTINCT trip_id) FROM {SCHEMA}.trips "
                "WHERE trip_date = %(d)s",
                {"d": DAY},
            )
            rows, distinct = cur.fetchone()
            cur.execute(f"SELECT DISTINCT _run_id FROM {SCHEMA}.trips")
            runs = {str(r[0]) for r in cur.fetchall()}
            cur.execute(
                f"SELECT run_id, rows_loaded FROM {SCHEMA}.runs WHERE status = 'published' "
                "ORDER BY finished_at"
            )
            ledger = [tuple(r) for r in cur.fetchall()]
        return int(rows), int(distinct), runs, ledger

    first = run(2000)
    assert first.returncode == 0, first.stderr[-3000:]
    previous = state()
    assert previous[0] == previous[1] == json.loads(first.stdout)["rows"]["loaded"]
    for i, point in enumerate(("load", "publish", SUBMITTED)):
        killed = run(2100 + 100 * i, point)  # each version of the day has its own size
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
        after = state()
        if point == SUBMITTED:  # committed: the killed run's day, whole, and in the ledger
            (killed_run,) = after[2]
            assert after[0] == after[1] == dict(after[3])[killed_run], point
            assert after[3][:-1] == previous[3] and killed_run not in previous[2]
        else:
            assert after == previous, f"killed in {point}: the day changed"
        previous = after
    again = run(2500)
    assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads(again.stdout)
    rows, distinct, runs, ledger = state()
    assert rows == distinct == report["rows"]["loaded"]
    assert runs == {report["run_id"]}
    assert ledger[-1] == (report["run_id"], report["rows"]["loaded"])
    assert len(ledger) == 3 and len({run_id for run_id, _ in ledger}) == 3  # each run once
