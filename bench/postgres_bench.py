"""PostgreSQL day extract, side by side: the COPY floor, the seed's way, dlt, and tripflow.

    uv run python bench/postgres_bench.py --rows 1000000 8000000

For each size, one throwaway PostgreSQL 15 (``tests/pg/pgserver.py``) holds ``public.trips`` with
N synthetic trips on the day (``tripflow source seed-postgres``) plus 100,000 on each neighbouring
day, so the day's range predicate has rows to skip. Then, each in its own process under
``/usr/bin/time -v`` (wall time and peak RSS of the process tree):

1. floor: ``psql -c "COPY (SELECT * … the day …) TO STDOUT (FORMAT binary)" > /dev/null``;
2. the seed's way: ``psql \\copy`` of the day to a CSV file, ``csv.DictReader`` rows and a dict
   group-by per region (what the seed's Kubernetes Job does); and its row-by-row INSERTs into the
   warehouse (DuckDB), timed on a 50,000-row sample and EXTRAPOLATED to N rows;
3. dlt (``sql_table``, its fastest backend, connectorx) loading the day into DuckDB;
4. ``tripflow run --source postgres --date D --json`` end to end (extract, transform, load,
   validate, publish) against a Prefect server the benchmark starts once on a PostgreSQL database
   of its own, as production servers run (its start-up is not counted; the run's own flow/task
   orchestration is).

Prints a table and the ratios, and writes ``bench/results/postgres.json``. A benchmark, not a test:
nothing asserts a time. Run it alone: the machine has two cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "pg"))

from pgserver import ThrowawayPostgres, free_port  # noqa: E402

PY = sys.executable
TRIPFLOW = str(Path(sys.executable).parent / "tripflow")
SAMPLE_ROWS = 50_000
NEIGHBOUR_ROWS = 100_000
COLUMNS = (
    "trip_id, pickup_ts, dropoff_ts, distance_km, fare_usd, region, rider_id, rider_email, "
    "driver_id, payment_type, status"
)


def day_query(day: date, extra: str = "") -> str:
    nxt = day + timedelta(days=1)
    return (
        f"SELECT {COLUMNS} FROM public.trips WHERE pickup_ts >= '{day} 00:00:00+00' "
        f"AND pickup_ts < '{nxt} 00:00:00+00'{extra}"
    )


def pg_env(dsn: str) -> dict[str, str]:
    """libpq variables for psql, so no password sits on a command line."""
    from psycopg.conninfo import conninfo_to_dict

    p = conninfo_to_dict(dsn)
    return {
        **os.environ,
        "PGHOST": str(p["host"]),
        "PGPORT": str(p["port"]),
        "PGUSER": str(p["user"]),
        "PGPASSWORD": str(p["password"]),
        "PGDATABASE": str(p["dbname"]),
    }


# ------------------------------------------------------------------------------------------
# Workers: each runs in its own process (``--worker NAME``) under /usr/bin/time -v.
# ------------------------------------------------------------------------------------------


def worker_seed_way(day: date, work: Path) -> dict[str, Any]:
    """CSV export with psql, then csv.DictReader and a dict group-by per region."""
    path = work / "day.csv"
    started = time.perf_counter()
    subprocess.run(
        ["psql", "-qc", f"\\copy ({day_query(day)}) TO '{path}' WITH (FORMAT csv, HEADER)"],
        check=True,
    )
    exported = time.perf_counter() - started
    groups: dict[str, dict[str, float]] = {}
    rows = 0
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            rows += 1
            g = groups.setdefault(row["region"], {"trips": 0, "distance": 0.0, "fare": 0.0})
            g["trips"] += 1
            g["distance"] += float(row["distance_km"] or 0)
            g["fare"] += float(row["fare_usd"] or 0)
    path.unlink()
    return {"rows": rows, "export_seconds": round(exported, 2), "regions": len(groups)}


def worker_inserts(day: date, work: Path) -> dict[str, Any]:
    """Row-by-row INSERTs into DuckDB of a 50,000-row sample of the day (rows per second)."""
    import duckdb

    path = work / "sample.csv"
    subprocess.run(
        [
            "psql",
            "-qc",
            f"\\copy ({day_query(day, f' LIMIT {SAMPLE_ROWS}')}) TO '{path}' WITH (FORMAT csv)",
        ],
        check=True,
    )
    con = duckdb.connect(str(work / "inserts.duckdb"))
    con.execute(
        "CREATE TABLE trips (trip_id VARCHAR, pickup_ts TIMESTAMPTZ, dropoff_ts TIMESTAMPTZ, "
        "distance_km DOUBLE, fare_usd DECIMAL(12,2), region VARCHAR, rider_id VARCHAR, "
        "rider_email VARCHAR, driver_id VARCHAR, payment_type VARCHAR, status VARCHAR)"
    )
    with open(path, newline="") as handle:
        rows = [[v or None for v in r] for r in csv.reader(handle)]
    started = time.perf_counter()
    for row in rows:
        con.execute("INSERT INTO trips VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    seconds = time.perf_counter() - started
    con.close()
    return {"rows": len(rows), "seconds": round(seconds, 2), "rows_per_s": len(rows) / seconds}


def worker_dlt(day: date, work: Path) -> dict[str, Any]:
    """dlt's sql_table with its fastest backend (connectorx) into DuckDB, the day only."""
    import dlt
    import duckdb
    import sqlalchemy as sa
    from dlt.sources.sql_database import sql_table

    dsn = os.environ["BENCH_DSN"].split("?")[0]
    nxt = day + timedelta(days=1)

    def only_the_day(query: Any, table: Any, *_: Any) -> Any:
        return query.where(
            table.c.pickup_ts >= sa.text(f"'{day} 00:00:00+00'::timestamptz"),
            table.c.pickup_ts < sa.text(f"'{nxt} 00:00:00+00'::timestamptz"),
        )

    resource = sql_table(
        credentials=dsn.replace("postgresql://", "postgresql+psycopg://"),
        table="trips",
        schema="public",
        backend="connectorx",
        backend_kwargs={"conn": dsn},
        query_adapter_callback=only_the_day,
    )
    pipeline = dlt.pipeline(
        pipeline_name="bench",
        destination=dlt.destinations.duckdb(str(work / "dlt.duckdb")),
        dataset_name="raw",
        pipelines_dir=str(work / "dlt"),
    )
    pipeline.run(resource, write_disposition="replace")
    with duckdb.connect(str(work / "dlt.duckdb"), read_only=True) as con:
        row = con.execute("SELECT count(*) FROM raw.trips").fetchone()
    return {"rows": int(row[0]) if row else 0}


WORKERS = {"seed_way": worker_seed_way, "inserts": worker_inserts, "dlt": worker_dlt}


# ------------------------------------------------------------------------------------------
# The driver
# ------------------------------------------------------------------------------------------


def timed(cmd: list[str], env: dict[str, str], cwd: Path, stdout: Any = None) -> dict[str, Any]:
    """Run ``cmd`` under /usr/bin/time -v: wall seconds, peak RSS (MB) and its stdout."""
    started = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-v", *cmd],
        env=env,
        cwd=cwd,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {
        "seconds": round(wall, 2),
        "peak_rss_mb": round(int(match.group(1)) / 1024, 1) if match else None,
        "stdout": proc.stdout if stdout is None else "",
    }


def run_worker(name: str, day: date, env: dict[str, str], work: Path) -> dict[str, Any]:
    out = timed(
        [PY, __file__, "--worker", name, "--date", str(day), "--work", str(work)], env, work
    )
    out["result"] = json.loads(out.pop("stdout").strip().splitlines()[-1])
    return out


def start_prefect(home: Path) -> tuple[subprocess.Popen[bytes], str, ThrowawayPostgres]:
    """A Prefect server backed by its own throwaway PostgreSQL, as a production server is.

    On its default SQLite database the server answers a task's first write after a few idle
    seconds with 503 ("database is locked", PrefectHQ/prefect#18934) and the client waits 2 s
    before retrying: about 2 s per stage of a long run that is not tripflow's to spend.
    """
    database = ThrowawayPostgres().start()
    from psycopg.conninfo import conninfo_to_dict

    p = conninfo_to_dict(database.dsn())
    url = f"postgresql+asyncpg://{p['user']}:{p['password']}@{p['host']}:{p['port']}/{p['dbname']}"
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": url,
    }
    proc = subprocess.Popen(
        [PY, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                if response.status == 200:
                    return proc, api, database
        except OSError:
            time.sleep(0.5)
    proc.kill()
    database.stop()
    raise SystemExit("the Prefect server did not start")


def bench_size(rows: int, day: date, api: str, prefect_home: Path) -> dict[str, Any]:
    server = ThrowawayPostgres().start()
    work = Path(tempfile.mkdtemp(prefix=f"tripflow-pgbench-{rows}-"))
    try:
        dsn = server.dsn()
        env = {**pg_env(dsn), "BENCH_DSN": dsn, "TRIPFLOW_POSTGRES_DSN": dsn}
        started = time.perf_counter()
        for when, n in ((day - timedelta(days=1), NEIGHBOUR_ROWS), (day, rows)):
            subprocess.run(
                [TRIPFLOW, "source", "seed-postgres", "--date", str(when), "--rows", str(n)],
                env=env,
                check=True,
                capture_output=True,
            )
        subprocess.run(
            [
                TRIPFLOW,
                "source",
                "seed-postgres",
                "--date",
                str(day + timedelta(days=1)),
                "--rows",
                str(NEIGHBOUR_ROWS),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        seeded = time.perf_counter() - started
        print(f"[{rows:,}] seeded in {seeded:.1f}s", file=sys.stderr)
        results: dict[str, Any] = {"rows": rows, "seed_seconds": round(seeded, 1)}

        with open(os.devnull, "w") as devnull:
            floor = timed(
                ["psql", "-qc", f"COPY ({day_query(day)}) TO STDOUT (FORMAT binary)"],
                env,
                work,
                stdout=devnull,
            )
        floor.pop("stdout")
        results["floor"] = floor
        print(f"[{rows:,}] floor {floor}", file=sys.stderr)

        results["seed_way"] = run_worker("seed_way", day, env, work)
        print(f"[{rows:,}] seed's way {results['seed_way']}", file=sys.stderr)
        inserts = run_worker("inserts", day, env, work)
        inserts["extrapolated_seconds"] = round(rows / inserts["result"]["rows_per_s"], 1)
        results["inserts"] = inserts
        print(f"[{rows:,}] inserts {inserts}", file=sys.stderr)

        results["dlt"] = run_worker("dlt", day, env, work)
        print(f"[{rows:,}] dlt {results['dlt']}", file=sys.stderr)

        run_dir = work / "tripflow"
        run_dir.mkdir()
        tf_env = {
            **env,
            "PREFECT_API_URL": api,
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        tf = timed(
            [TRIPFLOW, "run", "--source", "postgres", "--date", str(day), "--json"],
            tf_env,
            run_dir,
        )
        report = json.loads(tf.pop("stdout"))
        if report["status"] != "published":
            raise SystemExit(f"tripflow run did not publish: {report.get('error')}")
        tf["status"] = report["status"]
        tf["extracted"] = report["rows"]["extracted"]
        tf["stages"] = {s["name"]: [s["seconds"], s["peak_rss_mb"]] for s in report["stages"]}
        tf["stages_seconds"] = round(sum(s["seconds"] for s in report["stages"]), 2)
        results["tripflow"] = tf
        print(f"[{rows:,}] tripflow {tf}", file=sys.stderr)
        return results
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def table(all_results: list[dict[str, Any]]) -> str:
    lines = [
        "| trips | approach | wall s | peak RSS MB | ratio |",
        "| ---: | --- | ---: | ---: | --- |",
    ]
    for r in all_results:
        tf = r["tripflow"]["seconds"]
        seed_total = r["seed_way"]["seconds"] + r["inserts"]["extrapolated_seconds"]
        rate = r["inserts"]["result"]["rows_per_s"]
        stage_peak = max(p for _, p in r["tripflow"]["stages"].values())
        rows = [
            (
                "floor: psql binary COPY of the day to /dev/null",
                r["floor"]["seconds"],
                r["floor"]["peak_rss_mb"],
                f"tripflow / floor = {tf / r['floor']['seconds']:.2f}",
            ),
            (
                "seed's way: psql CSV export + csv.DictReader + dict group-by per region",
                r["seed_way"]["seconds"],
                r["seed_way"]["peak_rss_mb"],
                "",
            ),
            (
                f"seed's way: row-by-row INSERTs into DuckDB, EXTRAPOLATED from {SAMPLE_ROWS:,} "
                f"rows at {rate:.0f} rows/s",
                r["inserts"]["extrapolated_seconds"],
                r["inserts"]["peak_rss_mb"],
                "",
            ),
            (
                "seed's way, total (transform + extrapolated INSERTs)",
                round(seed_total, 1),
                None,
                f"seed's way / tripflow = {seed_total / tf:.0f}",
            ),
            (
                "dlt 1.31 sql_table, connectorx backend, into DuckDB",
                r["dlt"]["seconds"],
                r["dlt"]["peak_rss_mb"],
                f"dlt / tripflow = {r['dlt']['seconds'] / tf:.2f}",
            ),
            (
                "tripflow run --source postgres, end to end, published "
                f"(stages {r['tripflow']['stages_seconds']} s; max stage VmHWM "
                f"{stage_peak:.0f} MB)",
                tf,
                max(r["tripflow"]["peak_rss_mb"] or 0, stage_peak),
                "",
            ),
        ]
        for name, secs, rss, ratio in rows:
            shown = "" if rss is None else f"{rss:.0f}"
            lines.append(f"| {r['rows']:,} | {name} | {secs} | {shown} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--date", default="2025-11-15")
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--work")
    args = parser.parse_args()
    day = date.fromisoformat(args.date)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](day, Path(args.work))))
        return
    prefect_home = Path(tempfile.mkdtemp(prefix="tripflow-pgbench-prefect-"))
    prefect, api, prefect_db = start_prefect(prefect_home)
    try:
        results = [bench_size(rows, day, api, prefect_home) for rows in args.rows]
    finally:
        prefect.terminate()
        prefect.wait(timeout=30)
        prefect_db.stop()
        shutil.rmtree(prefect_home, ignore_errors=True)
    out = HERE / "results" / "postgres.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
