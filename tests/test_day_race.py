"""Two runs of one day at once, each with its own version of the day's file (different trips,
counts and fares), through the real ``tripflow`` CLI in subprocesses, on the default DuckDB
warehouse and the session's real Prefect server.

- **One staging root**: the day lock makes the runs take turns. The day ends as the later run's,
  whole, and the ledger holds both.
- **Two staging roots, one warehouse**: no lock is shared, so the runs race for real through
  extract, transform, load, validate and publish; both wait for each other before publishing
  (a barrier point), so they overlap on any machine and their publishes queue up. The warehouse
  still ends with exactly one run's day, whole — its row count *and* its exact sum of fares are
  one input's — and the ledger's latest published run of the day is that run.

The warehouse is read through its published interface only (``analytics.trips`` and the ledger
``analytics.runs``), whatever DuckDB keeps behind them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tasks.faults import BARRIER_ENV, PAUSE_ENV

pytestmark = pytest.mark.usefixtures("prefect_server")
DAY = "2025-11-15"
TRIPFLOW = str(Path(sys.executable).parent / "tripflow")


def write_version(path: Path, prefix: str, trips: int, fare: str) -> tuple[int, Decimal]:
    """One version of the day's file; its (rows, exact sum of fares)."""
    lines = [f"{prefix}-{i},{DAY},{3 + i % 5},{fare},us-east" for i in range(trips)]
    path.write_text("trip_id,date,distance_km,fare_usd,region\n" + "\n".join(lines) + "\n")
    return trips, Decimal(fare) * trips


def run_both(
    workdir: Path, runs: list[tuple[Path, Path | None]], env: dict[str, str] | None = None
) -> list[tuple[int, Any]]:
    """Start every ``(file, staging root)`` run at once; (exit code, --json report) of each."""
    procs = []
    for source, staging in runs:
        args = [TRIPFLOW, "run", "--date", DAY, "--source", f"file:{source}", "--json"]
        if staging is not None:
            args += ["--staging", str(staging)]
        procs.append(
            subprocess.Popen(
                args,
                cwd=workdir,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "TRIPFLOW_RETRY_DELAYS": "1,2", **(env or {})},
            )
        )
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode in (0, 1, 3), stderr[-3000:]  # never a crash or a traceback
        assert "Traceback" not in stderr, stderr[-3000:]
        out.append((proc.returncode, json.loads(stdout)))
    return out


def published_day(workdir: Path) -> tuple[int, Decimal, set[str], list[tuple[str, str]]]:
    """(rows, sum of fares, run ids of the day's trips, the day's ledger: (run id, status) in
    the order the runs finished)."""
    with duckdb.connect(str(workdir / ".tripflow" / "warehouse.duckdb"), read_only=True) as con:
        rows, fares = con.execute(
            "SELECT count(*), coalesce(sum(fare_usd), 0) FROM analytics.trips WHERE trip_date = $d",
            {"d": DAY},
        ).fetchone()  # type: ignore[misc]
        runs = {
            str(r[0])
            for r in con.execute(
                "SELECT DISTINCT _run_id FROM analytics.trips WHERE trip_date = $d", {"d": DAY}
            ).fetchall()
        }
        ledger = [
            (str(r[0]), str(r[1]))
            for r in con.execute(
                "SELECT run_id, status FROM analytics.runs WHERE run_date = $d "
                "ORDER BY finished_at",
                {"d": DAY},
            ).fetchall()
        ]
    return int(rows), Decimal(fares), runs, ledger


def test_one_staging_root_the_runs_take_turns_and_the_later_one_wins(workdir: Path) -> None:
    a, b = workdir / "version-a.csv", workdir / "version-b.csv"
    inputs = {
        str(a): write_version(a, "a", 400, "12.34"),
        str(b): write_version(b, "b", 600, "7.77"),
    }
    results = run_both(workdir, [(a, None), (b, None)])

    assert [code for code, _ in results] == [0, 0], [r.get("error") for _, r in results]
    input_of = {
        report["run_id"]: inputs[str(source)]
        for (_, report), source in zip(results, (a, b), strict=True)
    }
    rows, fares, runs, ledger = published_day(workdir)
    assert sorted(ledger) == sorted((run_id, "published") for run_id in input_of)  # both
    later = ledger[-1][0]
    assert runs == {later}  # the later run's day …
    assert (rows, fares) == input_of[later]  # … whole: its rows and its exact fares


def test_two_staging_roots_race_and_the_day_is_exactly_one_runs(workdir: Path) -> None:
    a, b = workdir / "version-a.csv", workdir / "version-b.csv"
    inputs = {
        str(a): write_version(a, "a", 6_000, "12.34"),
        str(b): write_version(b, "b", 9_000, "7.77"),
    }
    # Both runs wait for each other before publishing (tasks.faults.barrier_point): they overlap
    # for certain, whatever the machine's load, and their publishes race for the warehouse.
    barrier = {PAUSE_ENV: "publish", BARRIER_ENV: f"{workdir / 'barrier'}:2"}
    roots = [workdir / "staging-a", workdir / "staging-b"]
    results = run_both(workdir, [(a, roots[0]), (b, roots[1])], env=barrier)

    assert [code for code, _ in results] == [0, 0], [r.get("error") for _, r in results]
    input_of = {
        report["run_id"]: inputs[str(source)]
        for (_, report), source in zip(results, (a, b), strict=True)
    }
    rows, fares, runs, ledger = published_day(workdir)
    assert len(runs) == 1  # never a mix of the two versions
    (winner,) = runs
    assert (rows, fares) == input_of[winner]  # whole: exactly one input's rows and fares
    assert sorted(ledger) == sorted((run_id, "published") for run_id in input_of)  # both
    assert ledger[-1][0] == winner  # the ledger's latest published run is the day's
    # They raced: each run's life (started .. finished, in the ledger) overlaps the other's.
    with duckdb.connect(str(workdir / ".tripflow" / "warehouse.duckdb"), read_only=True) as con:
        (start_1, end_1), (start_2, end_2) = con.execute(
            "SELECT started_at, finished_at FROM analytics.runs WHERE run_date = $d", {"d": DAY}
        ).fetchall()
    assert start_1 < end_2 and start_2 < end_1
