"""Broken on purpose: real SIGKILLs inside each stage, concurrent runs of one day, storage and
warehouse failures, and a 30-day backfill with failing days. Real processes, DuckDB and Parquet."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from helpers import tripflow

from tasks.faults import KILL_ENV, POINTS

pytestmark = pytest.mark.usefixtures("prefect_server")
DAY = "2025-11-15"
FAST_RETRIES = {"TRIPFLOW_RETRY_DELAYS": "0,0"}


def warehouse(workdir: Path) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(workdir / ".tripflow" / "warehouse.duckdb"), read_only=True)


def day_state(workdir: Path) -> tuple[int, int, set[str]]:
    """(rows, distinct trip ids, run ids) of the published day."""
    with warehouse(workdir) as con:
        rows, distinct = con.execute(
            "SELECT count(*), count(DISTINCT trip_id) FROM analytics.trips WHERE trip_date = $d",
            {"d": DAY},
        ).fetchone()  # type: ignore[misc]
        runs = {
            r[0] for r in con.execute("SELECT DISTINCT _run_id FROM analytics.trips").fetchall()
        }
    return int(rows), int(distinct), runs


def run(
    workdir: Path, rows: int, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return tripflow("run", "--date", DAY, "--rows", str(rows), "--json", cwd=workdir, env=env)


def test_sigkill_in_every_stage_leaves_old_or_new_never_a_mix(workdir: Path) -> None:
    first = run(workdir, 2000)
    assert first.returncode == 0, first.stderr
    published = json.loads(first.stdout)
    previous = day_state(workdir)
    assert previous[0] == previous[1] == published["rows"]["loaded"]
    for i, point in enumerate(POINTS):
        rows = 2100 + 100 * i  # each version of the day has its own size
        killed = run(workdir, rows, env={KILL_ENV: point})
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
        assert killed.stdout == ""  # died mid-run: no report
        assert day_state(workdir) == previous, f"killed in {point}: the day changed"
        again = run(workdir, rows)
        assert again.returncode == 0, (point, again.stderr[-2000:])
        report = json.loads(again.stdout)
        state = day_state(workdir)
        assert state[0] == state[1] == report["rows"]["loaded"], point
        assert state[2] == {report["run_id"]}, point
        previous = state
    with warehouse(workdir) as con:
        published_runs = con.execute(
            "SELECT count(*) FROM analytics.runs WHERE status = 'published'"
        ).fetchone()
        parts = con.execute("SELECT count(*) FROM analytics.partitions").fetchone()
    assert published_runs == (1 + len(POINTS),)
    assert parts == (3,)  # one trips, quarantine and region_daily table for the one day


def test_two_runs_of_one_day_at_once_give_one_result(workdir: Path) -> None:
    procs = [
        subprocess.Popen(
            [
                str(Path(sys.executable).parent / "tripflow"),
                "run",
                "--date",
                DAY,
                "--rows",
                "20000",
                "--json",
            ],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    reports = [json.loads(o[0]) for o in outs]
    rows, distinct, runs = day_state(workdir)
    assert rows == distinct == reports[0]["rows"]["loaded"] == reports[1]["rows"]["loaded"]
    assert len(runs) == 1 and runs <= {r["run_id"] for r in reports}


def test_staging_refusing_writes_fails_clearly_and_publishes_nothing(workdir: Path) -> None:
    blocker = workdir / "not-a-folder"
    blocker.write_text("a file where the staging folder should be")
    proc = tripflow(
        "run",
        "--source",
        "sample",
        "--date",
        DAY,
        "--staging",
        str(blocker),
        "--json",
        cwd=workdir,
        env=FAST_RETRIES,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["error"]["kind"] == "infrastructure" and str(blocker) in out["error"]["message"]
    assert "Traceback" not in proc.stderr


def test_warehouse_refusing_the_load_retries_then_fails_and_staging_stays_whole(
    workdir: Path,
) -> None:
    db = workdir / ".tripflow" / "warehouse.duckdb"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a DuckDB file" * 100)
    proc = tripflow(
        "run", "--source", "sample", "--date", DAY, "--json", cwd=workdir, env=FAST_RETRIES
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["error"]["kind"] == "infrastructure" and str(db.name) in out["error"]["message"]
    assert [s["name"] for s in out["stages"]] == ["extract", "transform", "load"]
    assert "Traceback" not in proc.stderr
    for stage in ("raw", "clean", "quarantine", "region_daily"):
        manifest = workdir / ".tripflow" / "staging" / stage / f"date={DAY}" / "_manifest.json"
        assert json.loads(manifest.read_text())["rows"] >= 0
    # Once the warehouse is back, the same day publishes.
    db.unlink()
    proc = tripflow("run", "--source", "sample", "--date", DAY, "--json", cwd=workdir)
    assert proc.returncode == 0 and json.loads(proc.stdout)["rows"]["loaded"] == 10


def test_a_30_day_backfill_with_failing_days(workdir: Path) -> None:
    data = workdir / "days"
    data.mkdir()
    bad_days = {"2025-10-05", "2025-10-17", "2025-10-28"}
    for n in range(1, 31):
        day = f"2025-10-{n:02d}"
        bad = 40 if day in bad_days else 0
        lines = [f"{day}-{i},{day},4,9,us-east" for i in range(60)]
        lines += [f"{day}-x{i},{day},-1,9,us-east" for i in range(bad)]
        (data / f"{day}.csv").write_text(
            "trip_id,date,distance_km,fare_usd,region\n" + "\n".join(lines) + "\n"
        )
    proc = tripflow(
        "backfill",
        "--start",
        "2025-10-01",
        "--end",
        "2025-10-30",
        "--source",
        f"file:{data}/*.csv",
        "--concurrency",
        "3",
        "--json",
        cwd=workdir,
        timeout=900,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert set(out["failed"]) == bad_days
    assert len(out["days"]) == 30
    with warehouse(workdir) as con:
        days = con.execute(
            "SELECT count(DISTINCT trip_date), count(*) FROM analytics.trips"
        ).fetchone()
    assert days == (27, 27 * 60)
