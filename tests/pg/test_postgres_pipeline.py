"""``tripflow run --source postgres`` end to end, as a user runs it (a subprocess, a real Prefect
server from ``tests/conftest.py``, the throwaway PostgreSQL, DuckDB): published, and no secret in
anything it printed, staged or stored."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import duckdb
import pytest
from helpers import tripflow
from pgserver import PASSWORD, ThrowawayPostgres

from tasks.sources.postgres import seed


@pytest.mark.usefixtures("prefect_server")
def test_run_source_postgres_publishes_the_day(pg: ThrowawayPostgres, workdir: Path) -> None:
    seed(pg.dsn(), date(2025, 11, 15), 20_000, table="public.e2e_trips")
    seed(pg.dsn(), date(2025, 11, 16), 500, table="public.e2e_trips")  # the next day: not read
    env = {"TRIPFLOW_POSTGRES_DSN": pg.dsn(), "TRIPFLOW_POSTGRES_TABLE": "public.e2e_trips"}
    proc = tripflow(
        "run", "--source", "postgres", "--date", "2025-11-15", "--json", cwd=workdir, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "published"
    assert report["rows"]["extracted"] == 20_000
    assert report["rows"]["loaded"] + report["rows"]["quarantined"] == 20_000
    assert [s["name"] for s in report["stages"]][:2] == ["extract", "transform"]
    # The DSN's password is nowhere: not in the output, the logs, staging or the warehouse.
    assert PASSWORD not in proc.stdout and PASSWORD not in proc.stderr
    for path in (workdir / ".tripflow").rglob("*"):
        if path.is_file() and path.suffix != ".duckdb":
            assert PASSWORD.encode() not in path.read_bytes(), path
    with duckdb.connect(str(workdir / ".tripflow" / "warehouse.duckdb"), read_only=True) as db:
        tables = [
            r[0]
            for r in db.execute(
                "SELECT table_schema || '.' || table_name FROM information_schema.tables"
            ).fetchall()
        ]
        for name in tables:
            dump = db.execute(f"SELECT * FROM {name}").fetchall()
            assert PASSWORD not in repr(dump), name
        published = db.execute(
            "SELECT count(*) FROM analytics.trips WHERE trip_date = DATE '2025-11-15'"
        ).fetchone()
    assert published == (report["rows"]["loaded"],)


@pytest.mark.usefixtures("prefect_server")
def test_the_dsn_can_come_from_a_prefect_secret_block(pg: ThrowawayPostgres, workdir: Path) -> None:
    """``postgres_dsn_block`` names a Prefect ``Secret`` block: the run reads its DSN from the
    Prefect API (no DSN in the environment at all), and still prints no password."""
    from prefect.blocks.system import Secret

    seed(pg.dsn(), date(2025, 11, 15), 3_000, table="public.block_trips")
    Secret(value=pg.dsn()).save("tripflow-pg-dsn", overwrite=True)
    env = {
        "TRIPFLOW_POSTGRES_DSN": "",
        "TRIPFLOW_POSTGRES_DSN_BLOCK": "tripflow-pg-dsn",
        "TRIPFLOW_POSTGRES_TABLE": "public.block_trips",
    }
    proc = tripflow(
        "run", "--source", "postgres", "--date", "2025-11-15", "--json", cwd=workdir, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "published" and report["rows"]["extracted"] == 3_000
    assert PASSWORD not in proc.stdout and PASSWORD not in proc.stderr

    missing = tripflow(
        "run",
        "--source",
        "postgres",
        "--date",
        "2025-11-15",
        cwd=workdir,
        env={**env, "TRIPFLOW_POSTGRES_DSN_BLOCK": "no-such-dsn"},
    )
    assert missing.returncode == 2, missing.stderr[-3000:]
    assert "postgres_dsn_block 'no-such-dsn': no Secret block" in missing.stderr
