"""The stages end to end as plain functions: real Parquet, a real DuckDB file, no Prefect."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tasks.config import Settings, load_settings
from tasks.errors import InfrastructureError
from tasks.report import RunReport
from tasks.stages import RunContext, extract, load, publish, transform, validate
from tasks.staging import MANIFEST, Staging

DAY = date(2025, 11, 15)


def settings(tmp: Path, **overrides: object) -> Settings:
    values = {
        "staging": str(tmp / "staging"),
        "warehouse": f"duckdb:{tmp / 'wh.duckdb'}",
        "pii_key_file": str(tmp / "pii.key"),
        **overrides,
    }
    return load_settings(values, environ={})


def run_day(s: Settings, day: date = DAY, run_id: str = "run0001") -> RunReport:
    """extract -> transform -> load -> validate -> publish when every check passes."""
    ctx = RunContext.create(run_id, day, s)
    report = RunReport(ctx)
    report.extracted = extract(ctx)
    report.transformed = transform(ctx)
    report.read_regions()
    report.loaded = load(ctx)
    report.checks = validate(
        ctx, report.rows["extracted"], report.rows["quarantined"], report.loaded
    )
    if all(c.passed for c in report.checks):
        report.status = "published"
        report.published_rows = publish(ctx, report.loaded, report.ledger("published"))
    else:
        report.status = "failed"
    return report


def query(tmp: Path, sql: str, params: object = None) -> list[tuple[object, ...]]:
    with duckdb.connect(str(tmp / "wh.duckdb"), read_only=True) as con:
        return con.execute(sql, params).fetchall()


def test_sample_publishes_the_seed_summary(tmp_path: Path) -> None:
    report = run_day(settings(tmp_path, source="sample"))
    assert report.status == "published"
    assert {
        r["region"]: (
            r["trip_count"],
            r["total_distance_km"],
            r["total_fare_usd"],
            r["avg_fare_per_km"],
        )
        for r in report.regions
    } == {
        "us-east": (4, 34.2, 51.40, 1.50),
        "us-west": (3, 58.9, 84.50, 1.43),
        "eu-west": (3, 54.5, 75.50, 1.39),
    }
    assert query(tmp_path, "SELECT count(*), sum(fare_usd)::VARCHAR FROM analytics.trips")[0] == (
        10,
        "211.40",
    )
    rows = query(
        tmp_path,
        "SELECT region, trip_count, total_distance_km, total_fare_usd, avg_fare_per_km "
        "FROM analytics.region_daily ORDER BY region",
    )
    assert [(r[0], r[1], r[2], float(r[3]), r[4]) for r in rows] == [
        ("eu-west", 3, 54.5, 75.5, 1.39),
        ("us-east", 4, 34.2, 51.4, 1.5),
        ("us-west", 3, 58.9, 84.5, 1.43),
    ]
    ledger = query(
        tmp_path, "SELECT status, rows_extracted, rows_loaded, stages FROM analytics.runs"
    )
    assert ledger[0][:3] == ("published", 10, 10)
    stages = json.loads(str(ledger[0][3]))
    assert stages["raw"]["rows"] == 10 and stages["clean"]["fare_usd_sum"] == "211.40"
    # Lineage on every row.
    lineage = query(
        tmp_path,
        "SELECT count(*) FROM analytics.trips WHERE _run_id = 'run0001' "
        "AND _source_file LIKE '%sample_trips.csv' AND _source_row BETWEEN 1 AND 10",
    )
    assert lineage[0][0] == 10
    # The day is the run's own tables, registered as published.
    assert query(
        tmp_path, "SELECT table_kind, table_name FROM analytics.partitions ORDER BY 1"
    ) == [
        ("region_daily", "region_daily_20251115_run0001"),
        ("trips", "trips_20251115_run0001"),
        ("trips_quarantine", "trips_quarantine_20251115_run0001"),
    ]


def test_re_running_a_day_replaces_it_exactly_once(tmp_path: Path) -> None:
    s = settings(tmp_path, rows=3000)
    first = run_day(s, run_id="run0001")
    second = run_day(s, run_id="run0002")
    assert first.status == second.status == "published"
    assert query(tmp_path, "SELECT count(*), count(DISTINCT trip_id) FROM analytics.trips")[0] == (
        first.rows["loaded"],
        first.rows["loaded"],
    )
    assert query(tmp_path, "SELECT DISTINCT _run_id FROM analytics.trips") == [("run0002",)]
    assert (
        query(tmp_path, "SELECT count(*) FROM analytics.trips_quarantine")[0][0]
        == first.rows["quarantined"]
    )
    assert (
        query(tmp_path, "SELECT sum(trip_count) FROM analytics.region_daily")[0][0]
        == first.rows["loaded"]
    )
    assert (
        query(tmp_path, "SELECT count(*) FROM analytics.runs WHERE status = 'published'")[0][0] == 2
    )


def test_a_failed_check_publishes_nothing_and_keeps_the_staging_table(tmp_path: Path) -> None:
    good = run_day(settings(tmp_path, source="sample"), run_id="good0001")
    assert good.status == "published"
    before = query(tmp_path, "SELECT * FROM analytics.trips ORDER BY trip_id")
    bad = run_day(settings(tmp_path, source="sample", min_rows=100_000), run_id="bad00001")
    assert bad.status == "failed"
    assert [c.name for c in bad.checks if not c.passed] == ["min_rows"]
    assert query(tmp_path, "SELECT * FROM analytics.trips ORDER BY trip_id") == before
    kept = [name for name in parts(tmp_path) if name.endswith("bad00001")]
    assert kept == [
        "region_daily_20251115_bad00001",
        "trips_20251115_bad00001",
        "trips_quarantine_20251115_bad00001",
    ]
    assert query(tmp_path, "SELECT count(*) FROM analytics_parts.trips_20251115_bad00001") == [
        (10,)
    ]
    files = tmp_path / "wh.duckdb.files"
    assert sorted(p.name for p in files.iterdir()) == ["20251115_bad00001", "20251115_good0001"]
    # A failed run's views and files stay until the day is published again; then they and the
    # previously published version go.
    _record_failed(tmp_path, bad)
    assert run_day(settings(tmp_path, source="sample"), run_id="new00001").status == "published"
    assert sorted(p.name for p in files.iterdir()) == ["20251115_new00001"]
    assert parts(tmp_path) == [
        "region_daily_20251115_new00001",
        "region_daily_empty",
        "trips_20251115_new00001",
        "trips_empty",
        "trips_quarantine_20251115_new00001",
        "trips_quarantine_empty",
    ]


def parts(tmp: Path) -> list[str]:
    """The run views (and the empty base tables) in ``analytics_parts``."""
    rows = query(
        tmp,
        "SELECT view_name FROM duckdb_views() WHERE schema_name = 'analytics_parts' UNION ALL "
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'analytics_parts' ORDER BY 1",
    )
    return [str(r[0]) for r in rows]


def _record_failed(tmp: Path, report: RunReport) -> None:
    from tasks.stages import record_run

    record_run(report.ctx, report.ledger("failed"))


def _write_trips(path: Path, day: date, good: int, bad: int) -> None:
    rows = [f"T{i},{day},5.0,10.0,us-east" for i in range(good)]
    rows += [f"B{i},{day},0,10.0,us-east" for i in range(bad)]
    path.write_text("trip_id,date,distance_km,fare_usd,region\n" + "\n".join(rows) + "\n")


@pytest.mark.parametrize(("bad", "passes"), [(5, True), (6, False)])
def test_quarantine_share_threshold_is_inclusive(tmp_path: Path, bad: int, passes: bool) -> None:
    path = tmp_path / "trips.csv"
    _write_trips(path, DAY, 100 - bad, bad)
    report = run_day(settings(tmp_path, source=f"file:{path}"))
    check = next(c for c in report.checks if c.name == "quarantine_share")
    assert check.passed is passes
    assert report.status == ("published" if passes else "failed")


def test_volume_7d_fails_a_day_of_near_zero_rows(tmp_path: Path) -> None:
    for offset in range(1, 5):
        day = DAY - timedelta(days=offset)
        path = tmp_path / f"d{offset}.csv"
        _write_trips(path, day, 100, 0)
        assert (
            run_day(settings(tmp_path, source=f"file:{path}"), day, f"hist{offset:04d}").status
            == "published"
        )
    path = tmp_path / "today.csv"
    _write_trips(path, DAY, 40, 0)
    report = run_day(settings(tmp_path, source=f"file:{path}"), DAY, "today001")
    volume = next(c for c in report.checks if c.name == "volume_7d")
    assert not volume.passed and "mean 100" in volume.detail
    assert report.status == "failed"
    assert (
        query(tmp_path, "SELECT count(*) FROM analytics.trips WHERE trip_date = $d", {"d": DAY})[0][
            0
        ]
        == 0
    )


def test_a_file_with_no_rows_on_the_day_fails_min_rows(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    _write_trips(path, DAY - timedelta(days=1), 10, 0)
    report = run_day(settings(tmp_path, source=f"file:{path}"))
    assert report.rows["extracted"] == 0
    assert [c.name for c in report.checks if not c.passed] == ["min_rows"]
    assert report.extracted is not None and report.extracted.other_days == 10


def test_staging_folders_end_with_a_manifest(tmp_path: Path) -> None:
    s = settings(tmp_path, source="sample")
    run_day(s)
    staging = Staging(s.staging)
    for stage in ("raw", "clean", "quarantine", "region_daily"):
        folder = staging.folder(stage, DAY)
        manifest = json.loads((folder / MANIFEST).read_text())
        assert manifest["run_id"] == "run0001"
        assert manifest["rows"] == sum(f["rows"] for f in manifest["files"])
        for f in manifest["files"]:
            assert pl.read_parquet(folder / f["name"]).height == f["rows"]


def test_a_folder_without_its_manifest_is_not_trusted(tmp_path: Path) -> None:
    s = settings(tmp_path, source="sample")
    run_day(s)
    (Staging(s.staging).folder("clean", DAY) / MANIFEST).unlink()
    with pytest.raises(InfrastructureError, match="not complete"):
        load(RunContext.create("run0002", DAY, s))


def test_a_failed_rewrite_leaves_the_previous_folder(tmp_path: Path) -> None:
    staging = Staging(str(tmp_path / "st"))
    with staging.write("raw", DAY, "one") as folder:
        pl.DataFrame({"a": [1, 2]}).write_parquet(folder / "part-0.parquet")
    with pytest.raises(RuntimeError), staging.write("raw", DAY, "two") as folder:
        pl.DataFrame({"a": [9]}).write_parquet(folder / "part-0.parquet")
        raise RuntimeError("killed mid-write")
    kept = staging.read("raw", DAY)
    assert (kept.rows, kept.manifest["run_id"]) == (2, "one")
    assert [p.name for p in (tmp_path / "st" / "raw").iterdir()] == ["date=2025-11-15"]


def test_mixed_transform_outputs_are_refused(tmp_path: Path) -> None:
    s = settings(tmp_path, source="sample")
    run_day(s)
    staging = Staging(s.staging)
    with staging.write("region_daily", DAY, "another-run") as folder:
        pl.DataFrame({"a": [1]}).write_parquet(folder / "part-0.parquet")
    with pytest.raises(InfrastructureError, match="different"):
        load(RunContext.create("run0003", DAY, s))


def test_pii_key_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    s = settings(tmp_path, source="sample")
    first = run_day(s, run_id="run0001")
    second = run_day(s, run_id="run0002")
    key = tmp_path / "pii.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert first.extracted and second.extracted
    assert first.extracted.pii_key_fingerprint == second.extracted.pii_key_fingerprint
    assert key.read_text() not in json.dumps(first.as_dict())


def test_a_day_larger_than_one_bucket_finds_the_same_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Repeated trip_ids of a large day are found bucket by bucket, with the same outcome."""
    import tasks.stages

    one = run_day(settings(tmp_path / "one", source="synthetic", rows=20_000))
    monkeypatch.setattr(tasks.stages, "REPEATED_ID_BUCKET_ROWS", 1_000)
    many = run_day(settings(tmp_path / "many", source="synthetic", rows=20_000))
    assert one.rows["quarantined"] == many.rows["quarantined"]
    reasons_one = one.as_dict()["quarantine_reasons"]
    assert reasons_one["duplicate_trip_id"] > 0
    assert many.as_dict()["quarantine_reasons"] == reasons_one
    assert one.published_rows == many.published_rows


def _stage_only(s: Settings, run_id: str, day: date = DAY) -> RunReport:
    """extract -> transform -> load, not published."""
    ctx = RunContext.create(run_id, day, s)
    report = RunReport(ctx)
    report.extracted = extract(ctx)
    report.transformed = transform(ctx)
    report.loaded = load(ctx)
    return report


def _digests(folder: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.parquet"))
    }


def test_files_a_published_day_reads_outlive_later_runs_until_the_day_is_replaced(
    tmp_path: Path,
) -> None:
    s = settings(tmp_path, rows=3000)
    first = run_day(s, run_id="run0001")
    assert first.status == "published"
    served = tmp_path / "wh.duckdb.files" / "20251115_run0001"
    digests = _digests(served)
    assert sorted(digests) == [
        "region_daily/part-00000.parquet",
        "trips/part-00000.parquet",
        "trips_quarantine/part-00000.parquet",
    ]
    day = "SELECT count(*), sum(fare_usd)::VARCHAR, min(_run_id) FROM analytics.trips"
    published = query(tmp_path, day)
    # A later run re-stages the day (staging replaces its folders) and loads it; a failed run
    # loads it too and is recorded as failed: the published day's files are untouched.
    _stage_only(settings(tmp_path, rows=3500), "run0002")
    failed = run_day(settings(tmp_path, rows=3600, min_rows=10**9), run_id="run0003")
    assert failed.status == "failed"
    _record_failed(tmp_path, failed)
    assert _digests(served) == digests
    assert query(tmp_path, day) == published
    # A load cannot re-adopt the published run's files.
    with pytest.raises(InfrastructureError, match="is published"):
        load(RunContext.create("run0001", DAY, s))
    assert _digests(served) == digests
    # Publishing another version replaces the day once; the files it no longer reads go.
    again = run_day(settings(tmp_path, rows=3200), run_id="run0004")
    assert again.status == "published"
    assert sorted(p.name for p in (tmp_path / "wh.duckdb.files").iterdir()) == [
        "20251115_run0002",  # loaded, never published nor recorded: kept (it may still publish)
        "20251115_run0004",
    ]
    assert query(tmp_path, day)[0][0] == again.rows["loaded"]
    assert query(tmp_path, day)[0][2] == "run0004"


def test_readers_see_the_old_day_until_the_new_one_is_published(tmp_path: Path) -> None:
    first = run_day(settings(tmp_path, rows=2000), run_id="run0001")
    old = query(tmp_path, "SELECT * FROM analytics.trips ORDER BY trip_id")
    second = _stage_only(settings(tmp_path, rows=2500), "run0002")
    assert query(tmp_path, "SELECT * FROM analytics.trips ORDER BY trip_id") == old
    assert second.loaded is not None
    ctx = second.ctx
    second.checks = validate(
        ctx, second.rows["extracted"], second.rows["quarantined"], second.loaded
    )
    publish(ctx, second.loaded, second.ledger("published"))
    new = query(tmp_path, "SELECT count(*), min(_run_id), max(_run_id) FROM analytics.trips")
    assert new == [(second.loaded.rows, "run0002", "run0002")]
    assert second.loaded.rows != first.rows["loaded"]


def test_published_views_keep_the_money_and_time_types(tmp_path: Path) -> None:
    report = run_day(settings(tmp_path, rows=3000))
    assert report.status == "published"
    assert {c.name for c in report.checks if c.passed} >= {"reconcile_staging", "region_totals"}
    types = query(
        tmp_path,
        "SELECT typeof(fare_usd), typeof(pickup_ts), typeof(_source_row) FROM analytics.trips "
        "LIMIT 1",
    )
    assert types == [("DECIMAL(18,2)", "TIMESTAMP WITH TIME ZONE", "BIGINT")]
    totals = query(tmp_path, "SELECT typeof(total_fare_usd) FROM analytics.region_daily LIMIT 1")
    assert totals == [("DECIMAL(18,2)",)]


def test_a_staged_null_in_a_required_column_is_refused(tmp_path: Path) -> None:
    from tasks.contract import CLEAN_SCHEMA
    from tasks.warehouses import StagedFiles
    from tasks.warehouses.duckdb import DuckDBWarehouse

    s = settings(tmp_path, source="sample")
    run_day(s)
    clean = Staging(s.staging).read("clean", DAY)
    broken = tmp_path / "broken.parquet"
    pl.read_parquet(clean.files[0]).with_columns(
        pl.when(pl.col("_source_row") == 3).then(None).otherwise(pl.col("trip_id")).alias("trip_id")
    ).select(CLEAN_SCHEMA.keys()).write_parquet(broken)
    warehouse = DuckDBWarehouse(str(tmp_path / "wh.duckdb"))
    with pytest.raises(InfrastructureError, match="column trip_id has 1 null"):
        warehouse.load(DAY, "run0009", StagedFiles([str(broken)], [], []))


def test_staged_files_on_another_filesystem_are_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    link = os.link

    def cross_device(source: str, target: Path) -> None:
        if "wh.duckdb.files" in str(target):  # the warehouse's folder: "another filesystem"
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        link(source, target)

    monkeypatch.setattr(os, "link", cross_device)
    report = run_day(settings(tmp_path, source="sample"))
    assert report.status == "published" and report.published_rows == 10
    adopted = tmp_path / "wh.duckdb.files" / "20251115_run0001" / "trips" / "part-00000.parquet"
    staged = Staging(str(tmp_path / "staging")).read("clean", DAY).files[0]
    assert adopted.read_bytes() == Path(staged).read_bytes()
    assert adopted.stat().st_ino != Path(staged).stat().st_ino


def _loaded_figures(tmp: Path, repeat: int) -> int:
    """``duplicate_trip_ids`` of the sample day with ``repeat`` rows given the first row's id."""
    from tasks.contract import CLEAN_SCHEMA
    from tasks.warehouses import StagedFiles
    from tasks.warehouses.duckdb import DuckDBWarehouse

    s = settings(tmp, source="sample")
    run_day(s)
    clean = Staging(s.staging).read("clean", DAY)
    trips = pl.read_parquet(clean.files[0])
    first = trips["trip_id"][0]
    staged = tmp / "staged.parquet"
    trips.with_columns(
        pl.when(pl.col("_source_row").is_in(sorted(trips["_source_row"])[1 : 1 + repeat]))
        .then(pl.lit(first))
        .otherwise(pl.col("trip_id"))
        .alias("trip_id")
    ).select(CLEAN_SCHEMA.keys()).write_parquet(staged)
    warehouse = DuckDBWarehouse(str(tmp / "wh.duckdb"))
    loaded = warehouse.load(DAY, "run0009", StagedFiles([str(staged)], [], []))
    return warehouse.figures(DAY, loaded).duplicate_trip_ids


@pytest.mark.parametrize("repeat", [0, 1, 3])
def test_figures_count_repeated_trip_ids(tmp_path: Path, repeat: int) -> None:
    assert _loaded_figures(tmp_path, repeat) == repeat


def test_a_trip_id_hash_collision_is_never_counted_as_a_duplicate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten distinct ids through a hash with two values collide; the ids themselves are counted.
    from tasks.warehouses import duckdb as warehouse_module

    colliding = warehouse_module.STAGING_FIGURES.replace("hash(trip_id)", "hash(trip_id) % 2")
    assert colliding != warehouse_module.STAGING_FIGURES
    monkeypatch.setattr(warehouse_module, "STAGING_FIGURES", colliding)
    assert _loaded_figures(tmp_path, 0) == 0
    assert _loaded_figures(tmp_path / "again", 2) == 2
