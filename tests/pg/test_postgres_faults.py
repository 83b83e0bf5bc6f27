"""The source going away mid-extract, on the real throwaway PostgreSQL (no mocks).

While ``tripflow run --source postgres`` (a real subprocess) streams the day, its backend is
terminated with ``pg_terminate_backend`` — as a failover or a DBA would. The extract task fails
with an infrastructure error naming host and database (never the password), Prefect retries it,
the retry reads the day again from a fresh snapshot, and the day is published exactly once, with
the raw staging folder complete (its manifest lists the rows the retry read).
When the source stays down, the run fails after its retries with exit 3 and publishes nothing.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import date
from pathlib import Path

import duckdb
import pytest
from helpers import tripflow
from pgserver import PASSWORD, ThrowawayPostgres, free_port

from tasks.sources.postgres import seed
from tasks.staging import Staging

DAY = date(2025, 11, 15)
ROWS = 600_000
TABLE = "public.fault_trips"


def _terminate_the_reader(pg: ThrowawayPostgres, stop: threading.Event, killed: list[str]) -> None:
    """Terminate the first tripflow backend seen running the day's query."""
    while not stop.is_set() and not killed:
        pids = pg.psql_local(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'tripflow' "
            "AND state = 'active' AND query ILIKE '%fault_trips%'"
        ).split()
        for pid in pids:
            if pg.psql_local(f"SELECT pg_terminate_backend({pid})").strip() == "t":
                killed.append(pid)
                return
        time.sleep(0.05)


@pytest.mark.usefixtures("prefect_server")
def test_source_terminated_mid_extract_is_retried_and_published_once(
    pg: ThrowawayPostgres, workdir: Path
) -> None:
    seed(pg.dsn(), DAY, ROWS, table=TABLE)
    env = {
        "TRIPFLOW_POSTGRES_DSN": pg.dsn(),
        "TRIPFLOW_POSTGRES_TABLE": TABLE,
        "TRIPFLOW_RETRY_DELAYS": "1,1",
        "PREFECT_LOGGING_LEVEL": "INFO",
    }
    stop, killed = threading.Event(), []  # type: ignore[var-annotated]
    watcher = threading.Thread(target=_terminate_the_reader, args=(pg, stop, killed))
    watcher.start()
    try:
        proc = tripflow(
            "run",
            "--source",
            "postgres",
            "--date",
            DAY.isoformat(),
            "--min-rows",
            "1000",
            "--json",
            cwd=workdir,
            env=env,
        )
    finally:
        stop.set()
        watcher.join(30)
    assert killed, "the reader's backend was never seen running (nothing was terminated)"
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "published"
    assert report["rows"]["extracted"] == ROWS
    # The first attempt's failure, as logged: host and database, never the password.
    assert "PostgreSQL source" in proc.stderr and "Retry 1/2" in proc.stderr, proc.stderr[-3000:]
    assert PASSWORD not in proc.stderr and PASSWORD not in proc.stdout
    # The retried extract applied the transform in its pass (no raw/): every row staged once, and
    # the failed attempt's scratch is gone.
    staging = Staging(str(workdir / ".tripflow" / "staging"))
    assert staging.read("clean", DAY).rows + staging.read("quarantine", DAY).rows == ROWS
    assert not (workdir / ".tripflow" / "staging" / "raw").exists()
    assert not any((workdir / ".tripflow" / "staging" / ".transform").iterdir())
    with duckdb.connect(str(workdir / ".tripflow" / "warehouse.duckdb"), read_only=True) as db:
        published = db.execute(
            "SELECT count(*), count(DISTINCT trip_id) FROM analytics.trips"
        ).fetchone()
    assert published == (report["rows"]["loaded"], report["rows"]["loaded"])


@pytest.mark.usefixtures("prefect_server")
def test_source_down_fails_after_retries_and_publishes_nothing(workdir: Path) -> None:
    port = free_port()  # nothing listens there
    env = {
        "TRIPFLOW_POSTGRES_DSN": f"postgresql://tripflow:{PASSWORD}@127.0.0.1:{port}/trips",
        "TRIPFLOW_RETRY_DELAYS": "0.5,0.5",
    }
    proc = tripflow(
        "run", "--source", "postgres", "--date", DAY.isoformat(), "--json", cwd=workdir, env=env
    )
    assert proc.returncode == 3, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "failed" and report["error"]["kind"] == "infrastructure"
    assert f"host 127.0.0.1 port {port} database trips" in report["error"]["message"]
    assert PASSWORD not in proc.stdout + proc.stderr
    assert not (workdir / ".tripflow" / "staging" / "raw" / f"date={DAY}").exists()
    warehouse = workdir / ".tripflow" / "warehouse.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as db:
        [(status, loaded)] = db.execute("SELECT status, rows_loaded FROM analytics.runs").fetchall()
    assert (status, loaded) == ("failed", 0)
