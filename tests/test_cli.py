"""``tripflow`` as a user runs it: a real subprocess, a real Prefect server, DuckDB and Parquet."""

from __future__ import annotations

import json
import os
from pathlib import Path

import duckdb
import pytest
from helpers import TLC_CSV, tripflow
from pgserver import ThrowawayPostgres

pytestmark = pytest.mark.usefixtures("prefect_server")

CHECKS = [
    "min_rows",
    "quarantine_share",
    "unique_trip_id",
    "reconcile_staging",
    "region_totals",
    "volume_7d",
]
STAGES = ["extract", "transform", "load", "validate", "publish"]
REASONS = [
    "missing_key",
    "non_positive_distance",
    "negative_fare",
    "dropoff_before_pickup",
    "unknown_region",
    "duplicate_trip_id",
    "bad_record",
]


def run_json(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    proc = tripflow("run", *args, "--json", cwd=cwd, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, (
        f"stdout must hold exactly one JSON object:\n{proc.stdout}\n{proc.stderr}"
    )
    assert "Traceback" not in proc.stderr
    return proc.returncode, json.loads(lines[0])


def test_sample_prints_the_seeds_regional_summary(workdir: Path) -> None:
    proc = tripflow("run", "--source", "sample", "--date", "2025-11-15", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    for region, figures in {
        "us-east": ["4 trips", "34.2 km", "$51.40", "$1.50/km"],
        "us-west": ["3 trips", "58.9 km", "$84.50", "$1.43/km"],
        "eu-west": ["3 trips", "54.5 km", "$75.50", "$1.39/km"],
    }.items():
        line = next(line for line in lines if region in line and "trips" in line)
        for figure in figures:
            assert figure in line, line
    assert "2025-11-15: published" in proc.stderr
    assert ".tripflow/warehouse.duckdb" in proc.stderr
    assert "Prefect UI:" in proc.stderr and "/runs/flow-run/" in proc.stderr
    for stage in STAGES:
        assert f"✓ {stage}" in proc.stderr


def test_json_contract(workdir: Path) -> None:
    code, out = run_json(workdir, "--source", "sample", "--date", "2025-11-15")
    assert code == 0
    assert out["run_date"] == "2025-11-15" and out["status"] == "published"
    assert out["rows"] == {"extracted": 10, "quarantined": 0, "loaded": 10}
    assert list(out["quarantine_reasons"]) == REASONS
    assert [c["name"] for c in out["checks"]] == CHECKS and all(c["passed"] for c in out["checks"])
    assert [s["name"] for s in out["stages"]] == STAGES
    assert all(s["seconds"] >= 0 and s["peak_rss_mb"] > 0 for s in out["stages"])
    assert {r["region"]: r for r in out["regions"]}["us-east"] == {
        "region": "us-east",
        "trip_count": 4,
        "total_distance_km": 34.2,
        "total_fare_usd": 51.4,
        "avg_fare_per_km": 1.5,
    }
    assert "error" not in out
    cost = out["cost"]
    assert [s["name"] for s in cost["stages"]] == STAGES
    assert cost["bytes_staged"] > 0 and cost["total_usd"] > 0
    assert cost["total_usd"] == pytest.approx(sum(s["usd"] for s in cost["stages"]))


def test_schema_error_exits_2_and_stages_nothing(workdir: Path) -> None:
    bad = workdir / "bad.csv"
    bad.write_text(
        "trip_id,date,distance_km,fare_usd,region\nA,2025-11-15,1,2,x\nB,2025-11-15,x1,2,x\n"
    )
    code, out = run_json(workdir, "--source", f"file:{bad}", "--date", "2025-11-15")
    assert code == 2
    assert out["status"] == "failed"
    assert out["error"]["kind"] == "schema"
    assert (out["error"]["file"], out["error"]["column"], out["error"]["row"]) == (
        str(bad),
        "distance_km",
        2,
    )
    # The bad cell is described (length, shape, keyed fingerprint), never quoted.
    value = out["error"]["value"]
    assert value.startswith("text of 2 characters, shape 'a9', fingerprint "), value
    assert "x1" not in out["error"]["message"] and "'x1'" not in value
    assert not list((workdir / ".tripflow" / "staging").glob("raw/date=2025-11-15/*.parquet"))
    with duckdb.connect(str(workdir / ".tripflow" / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM analytics.trips").fetchone() == (0,)
        assert con.execute("SELECT status FROM analytics.runs").fetchall() == [("failed",)]


def test_missing_column_and_empty_file_exit_2(workdir: Path) -> None:
    missing = workdir / "missing.csv"
    missing.write_text("trip_id,date,fare_usd,region\nA,2025-11-15,2,x\n")
    code, out = run_json(workdir, "--source", f"file:{missing}", "--date", "2025-11-15")
    assert (code, out["error"]["column"], out["error"]["file"]) == (2, "distance_km", str(missing))
    empty = workdir / "empty.csv"
    empty.write_text("")
    code, out = run_json(workdir, "--source", f"file:{empty}", "--date", "2025-11-15")
    assert (code, out["error"]["kind"], out["error"]["file"]) == (2, "schema", str(empty))


def test_failed_check_exits_1_and_publishes_nothing(workdir: Path) -> None:
    code, out = run_json(workdir, "--source", "sample", "--date", "2025-11-15", "--min-rows", "11")
    assert code == 1
    assert out["status"] == "failed" and "error" not in out
    assert [c["name"] for c in out["checks"] if not c["passed"]] == ["min_rows"]
    assert [s["name"] for s in out["stages"]] == STAGES[:4]
    with duckdb.connect(str(workdir / ".tripflow" / "warehouse.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM analytics.trips").fetchone() == (0,)


def test_unreachable_warehouse_exits_3_after_retries(workdir: Path) -> None:
    code, out = run_json(
        workdir,
        "--source",
        "sample",
        "--date",
        "2025-11-15",
        "--warehouse",
        "duckdb:/proc/tripflow-cannot-write/wh.duckdb",
        env={"TRIPFLOW_RETRY_DELAYS": "0,0"},
    )
    assert code == 3
    assert out["error"]["kind"] == "infrastructure"
    assert "/proc/tripflow-cannot-write" in out["error"]["message"]


def test_bad_usage_exits_2(workdir: Path) -> None:
    assert tripflow("run", "--date", "15/11/2025", cwd=workdir).returncode == 2
    code, out = run_json(workdir, "--source", "nosuch")
    assert code == 2 and out["error"]["kind"] == "usage"


def test_tlc_real_sample_through_the_cli(workdir: Path) -> None:
    code, out = run_json(
        workdir, "--source", f"file:{TLC_CSV}", "--format", "nyc-tlc-yellow", "--date", "2019-01-15"
    )
    assert code == 0, out
    rows = out["rows"]
    assert rows["extracted"] == rows["quarantined"] + rows["loaded"] > 300
    assert out["quarantine_reasons"]["unknown_region"] > 0
    assert {r["region"] for r in out["regions"]} <= {
        "manhattan",
        "brooklyn",
        "queens",
        "bronx",
        "staten-island",
        "ewr",
    }
    assert sum(r["trip_count"] for r in out["regions"]) == rows["loaded"]


def test_configuration_layers_toml_env_flags(workdir: Path) -> None:
    (workdir / "tripflow.toml").write_text('[tripflow]\nmin_rows = 50\nsource = "sample"\n')
    code, out = run_json(workdir, "--date", "2025-11-15")
    assert code == 1 and out["checks"][0]["detail"].endswith("at least 50 required")
    code, out = run_json(workdir, "--date", "2025-11-15", env={"TRIPFLOW_MIN_ROWS": "5"})
    assert code == 0
    code, out = run_json(
        workdir, "--date", "2025-11-15", "--min-rows", "20", env={"TRIPFLOW_MIN_ROWS": "5"}
    )
    assert code == 1


def test_no_clear_text_pii_or_key_anywhere_on_disk(
    workdir: Path, prefect_database: ThrowawayPostgres
) -> None:
    canary = "canary-7f3a@rider.example"
    key = "canary-key-3b1e9d0c5a7f"
    csv = workdir / "trips.csv"
    others = "".join(f"T{i},2025-11-15 10:00:00,3,9,us-east,r{i}@x.org\n" for i in range(30))
    csv.write_text(
        "trip_id,pickup_ts,distance_km,fare_usd,region,rider_email\n"
        f"A,2025-11-15 08:00:00,3,9,us-east,{canary}\n"
        f"B,2025-11-15 09:00:00,0,9,us-east,{canary.upper()}\n" + others
    )
    code, out = run_json(
        workdir,
        "--source",
        f"file:{csv}",
        "--date",
        "2025-11-15",
        "--min-rows",
        "1",
        env={"TRIPFLOW_PII_KEY": key, "TRIPFLOW_QUARANTINE_THRESHOLD": "0.5"},
    )
    assert code == 0 and out["rows"] == {"extracted": 32, "quarantined": 1, "loaded": 31}
    assert canary not in json.dumps(out) and key not in json.dumps(out)
    csv.unlink()
    searched = 0
    roots = [workdir, Path(os.environ["PREFECT_HOME"])]
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                searched += 1
                assert canary.encode() not in data.lower(), path
                assert key.encode() not in data, path
    assert searched > 10
    # The session's Prefect server keeps runs, logs, artifacts and blocks in PostgreSQL.
    server_data = prefect_database.dump("prefect")
    assert b"flow_run" in server_data and b"2025-11-15" in server_data  # this run is in it
    assert canary.encode() not in server_data.lower() and key.encode() not in server_data


def test_backfill_runs_each_day_and_lists_the_failed_one(workdir: Path) -> None:
    data = workdir / "days"
    data.mkdir()
    for day, bad in (("2025-11-14", 0), ("2025-11-15", 50), ("2025-11-16", 0)):
        rows = [f"{day}-{i},{day},5,10,us-east" for i in range(100)]
        rows += [f"{day}-bad{i},{day},0,10,us-east" for i in range(bad)]
        (data / f"{day}.csv").write_text(
            "trip_id,date,distance_km,fare_usd,region\n" + "\n".join(rows) + "\n"
        )
    source = f"file:{data}/*.csv"
    proc = tripflow(
        "backfill",
        "--start",
        "2025-11-14",
        "--end",
        "2025-11-16",
        "--source",
        source,
        "--concurrency",
        "2",
        cwd=workdir,
    )
    assert proc.returncode == 1, proc.stderr
    assert "1 day(s) failed" in proc.stderr and "tripflow run --date 2025-11-15" in proc.stderr
    with duckdb.connect(str(workdir / ".tripflow" / "warehouse.duckdb"), read_only=True) as con:
        days = con.execute(
            "SELECT trip_date::VARCHAR, count(*) FROM analytics.trips GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert days == [("2025-11-14", 100), ("2025-11-16", 100)]
    # The failed day re-runs alone once its data is fixed.
    fixed = [f"2025-11-15-{i},2025-11-15,5,10,us-east" for i in range(100)]
    (data / "2025-11-15.csv").write_text(
        "trip_id,date,distance_km,fare_usd,region\n" + "\n".join(fixed) + "\n"
    )
    code, out = run_json(workdir, "--date", "2025-11-15", "--source", source)
    assert code == 0 and out["rows"]["loaded"] == 100
