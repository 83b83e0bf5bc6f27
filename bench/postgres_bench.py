"""PostgreSQL day → published DuckDB, side by side: the COPY floor, dlt and tripflow, in rounds.

    uv run python bench/postgres_bench.py --rows 8000000 --rounds 3 --temporary-server \
        --local-server --distinct-riders

One throwaway PostgreSQL 15 (``tests/pg/pgserver.py``) holds ``public.trips``: N trips on the day
from ``tripflow source seed-postgres`` (the project's realistic generator: UUID text ids, one
distinct rider per 4 trips, ~300k drivers, ``numeric(10,2)`` fares, ``timestamptz`` pickups, ~2%
dirty rows) plus 100,000 on each neighbouring day, so the day's range predicate has rows to skip.
Each approach runs in its own process under ``/usr/bin/time -v`` (wall time, peak RSS of the
process tree), in alternating rounds (round r starts with approach r mod k), and the tables show
medians with the 1-minute load average read before each process:

1. floor: ``psql -c "COPY (SELECT … the day …) TO STDOUT (FORMAT binary)" > /dev/null``;
2. dlt (``sql_table``, its fastest backend, connectorx) loading the day into DuckDB;
3. ``tripflow run --source postgres --date D --json`` end to end (extract, transform, load,
   validate, publish) against a RUNNING Prefect server the benchmark starts once, on a PostgreSQL
   database of its own, as production servers run (its start-up is not counted);
4. with ``--temporary-server``: once, after the rounds, the same run with no
   ``PREFECT_API_URL`` and ``TRIPFLOW_LOCAL_SERVER=0`` (Prefect starts a temporary server inside
   the process, counted);
   with ``--local-server``: once, after the rounds, the same run against the CLI's own background
   server (``tripflow server start``: SQLite, as a first-time user's ``tripflow run`` starts it),
   already running (its start not counted);
5. with ``--distinct-riders``: once, a second table of N trips where every trip has its own rider
   (the most distinct e-mails to hash), run by tripflow with the running server: its peak;
6. with ``--seed-way``: the seed's CSV + ``csv.DictReader`` way and its row-by-row INSERTs
   (extrapolated from 50,000 rows), once.

Writes ``bench/results/postgres.json`` and ``bench/results/postgres.md`` (the tables). A benchmark,
not a test: nothing asserts a time. Run it alone: the machine has two cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
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


TABLE = "public.trips"
SEED = (TRIPFLOW, "source", "seed-postgres")
DISTINCT_TABLE = "public.trips_distinct"


def day_query(day: date, extra: str = "", table: str = TABLE) -> str:
    nxt = day + timedelta(days=1)
    return (
        f"SELECT {COLUMNS} FROM {table} WHERE pickup_ts >= '{day} 00:00:00+00' "
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
        table=os.environ.get("BENCH_TABLE", TABLE).split(".")[1],
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
        row = con.execute(
            f"SELECT count(*) FROM raw.{os.environ.get('BENCH_TABLE', TABLE).split('.')[1]}"
        ).fetchone()
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
    cpu = sum(
        float(m.group(1))
        for m in re.finditer(r"(?:User|System) time \(seconds\): ([0-9.]+)", proc.stderr)
    )
    return {
        "seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
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
    deadline = time.monotonic() + 900
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


def seed(env: dict[str, str], day: date, rows: int, table: str, riders: int | None) -> float:
    """The day's ``rows`` trips (``riders`` distinct riders, default one per 4 trips) and
    100,000 on each neighbouring day, into ``table``, by ``tripflow source seed-postgres``."""
    started = time.perf_counter()
    for when, n, extra in (
        (day - timedelta(days=1), NEIGHBOUR_ROWS, []),
        (day, rows, ["--riders", str(riders)] if riders else []),
        (day + timedelta(days=1), NEIGHBOUR_ROWS, []),
    ):
        subprocess.run(
            [*SEED, "--date", str(when), "--rows", str(n), "--table", table, *extra],
            env=env,
            check=True,
            capture_output=True,
        )
    return time.perf_counter() - started


def run_floor(env: dict[str, str], work: Path, day: date) -> dict[str, Any]:
    with open(os.devnull, "w") as devnull:
        out = timed(
            ["psql", "-qc", f"COPY ({day_query(day)}) TO STDOUT (FORMAT binary)"],
            env,
            work,
            stdout=devnull,
        )
    out.pop("stdout")
    return out


def run_tripflow(env: dict[str, str], work: Path, day: date, name: str) -> dict[str, Any]:
    run_dir = work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    try:
        tf = timed(
            [TRIPFLOW, "run", "--source", "postgres", "--date", str(day), "--json"], env, run_dir
        )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    report = json.loads(tf.pop("stdout"))
    if report["status"] != "published":
        raise SystemExit(f"tripflow run did not publish: {report.get('error')}")
    tf["extracted"] = report["rows"]["extracted"]
    tf["quarantined"] = report["rows"]["quarantined"]
    tf["stages"] = {
        s["name"]: {
            "seconds": s["seconds"],
            "cpu_seconds": s.get("cpu_seconds"),
            "peak_rss_mb": s["peak_rss_mb"],
        }
        for s in report["stages"]
    }
    tf["stages_seconds"] = round(sum(s["seconds"] for s in report["stages"]), 2)
    stage_peak = max(s["peak_rss_mb"] for s in report["stages"])
    tf["peak_rss_mb"] = max(tf["peak_rss_mb"] or 0, stage_peak)
    return tf


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def bench(args: argparse.Namespace, api: str, prefect_home: Path) -> dict[str, Any]:
    day = date.fromisoformat(args.date)
    rows = args.rows
    server = ThrowawayPostgres().start()
    work = Path(tempfile.mkdtemp(prefix=f"tripflow-pgbench-{rows}-"))
    try:
        dsn = server.dsn()
        env = {**pg_env(dsn), "BENCH_DSN": dsn, "TRIPFLOW_POSTGRES_DSN": dsn}
        results: dict[str, Any] = {"rows": rows, "date": str(day), "rounds": []}
        results["seed_seconds"] = round(seed(env, day, rows, TABLE, None), 1)
        print(f"[{rows:,}] seeded in {results['seed_seconds']}s", file=sys.stderr)
        quiet = {"PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_HOME": str(prefect_home)}
        running = {**env, **quiet, "PREFECT_API_URL": api}
        # No PREFECT_API_URL and the local server off: Prefect's temporary server, in the process
        # (without TRIPFLOW_LOCAL_SERVER=0 the CLI would start its background server instead).
        temporary = {k: v for k, v in env.items() if k != "PREFECT_API_URL"} | {
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_HOME": str(work / "prefect-temporary"),
            "TRIPFLOW_LOCAL_SERVER": "0",
        }
        approaches: dict[str, Any] = {
            "floor": lambda: run_floor(env, work, day),
            "dlt": lambda: run_worker("dlt", day, env, work),
            "tripflow": lambda: run_tripflow(running, work, day, "tripflow"),
        }
        names = list(approaches)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            measured: dict[str, Any] = {}
            for name in order:
                load = load_average()
                out = approaches[name]()
                out["load_average_before"] = load
                measured[name] = out
                print(
                    f"[{rows:,}] round {r + 1} {name}: {out['seconds']} s, "
                    f"{out['peak_rss_mb']} MB, load {load}",
                    file=sys.stderr,
                )
            results["rounds"].append(measured)
        if args.temporary_server:
            load = load_average()
            out = run_tripflow(temporary, work, day, "tripflow-temporary")
            out["load_average_before"] = load
            results["temporary_server"] = out
            print(f"[{rows:,}] temporary server: {out}", file=sys.stderr)
        if args.local_server:
            # The CLI's own background server (SQLite, ``tripflow server start``), as a first-time
            # user runs it: started before, not counted, stopped after.
            local = {k: v for k, v in temporary.items() if k != "TRIPFLOW_LOCAL_SERVER"} | {
                "PREFECT_HOME": str(work / "prefect-local")
            }
            subprocess.run([TRIPFLOW, "server", "start"], env=local, cwd=work, check=True,
                           capture_output=True, timeout=300)  # fmt: skip
            try:
                load = load_average()
                out = run_tripflow(local, work, day, "tripflow-local")
                out["load_average_before"] = load
                results["local_server"] = out
                print(f"[{rows:,}] local server: {out}", file=sys.stderr)
            finally:
                subprocess.run([TRIPFLOW, "server", "stop"], env=local, cwd=work, check=False,
                               capture_output=True, timeout=120)  # fmt: skip
        if args.distinct_riders:
            seeded = seed(env, day, rows, DISTINCT_TABLE, rows)
            print(f"[{rows:,}] distinct riders seeded in {seeded:.1f}s", file=sys.stderr)
            load = load_average()
            out = run_tripflow(
                {**running, "TRIPFLOW_POSTGRES_TABLE": DISTINCT_TABLE}, work, day, "distinct"
            )
            out["load_average_before"] = load
            results["distinct_riders"] = out
            print(f"[{rows:,}] distinct riders: {out}", file=sys.stderr)
        if args.seed_way:
            results["seed_way"] = run_worker("seed_way", day, env, work)
            inserts = run_worker("inserts", day, env, work)
            inserts["extrapolated_seconds"] = round(rows / inserts["result"]["rows_per_s"], 1)
            results["inserts"] = inserts
        results["load_average_after"] = load_average()
        return results
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def tables(r: dict[str, Any]) -> str:
    rounds = r["rounds"]
    names = list(rounds[0])
    med = {n: median([x[n]["seconds"] for x in rounds]) for n in names}
    peak = {n: max(x[n]["peak_rss_mb"] or 0 for x in rounds) for n in names}
    loads = [x[n]["load_average_before"] for x in rounds for n in names]
    label = {
        "floor": "floor: psql `COPY (…) TO STDOUT (FORMAT binary)` to /dev/null",
        "dlt": "dlt 1.31 `sql_table`, connectorx backend, into DuckDB (no contract, no checks)",
        "tripflow": "`tripflow run --source postgres`, running Prefect server, published",
    }
    lines = [
        f"{r['rows']:,} trips, {len(rounds)} alternating rounds, medians; 1-minute load average "
        f"before each process: {min(loads)} to {max(loads)} (median {median(loads)}).",
        "",
        "| approach | median wall s | all rounds s | median CPU s (user+sys) | peak RSS MB (max) |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for n in names:
        each = ", ".join(str(x[n]["seconds"]) for x in rounds)
        cpu = median([x[n]["cpu_seconds"] for x in rounds])
        lines.append(f"| {label[n]} | {med[n]} | {each} | {cpu} | {peak[n]:.0f} |")
    tf = med["tripflow"]
    lines += [
        "",
        f"- dlt / tripflow = **{med['dlt'] / tf:.2f}x** (target ≥ 1.2); tripflow / floor = "
        f"**{tf / med['floor']:.2f}x** (target ≤ 3); tripflow peak **{peak['tripflow']:.0f} MB** "
        "(target ≤ 1024).",
    ]
    if "temporary_server" in r:
        t = r["temporary_server"]
        lines.append(
            f"- Prefect's temporary server (no `PREFECT_API_URL`), one run after the rounds: "
            f"{t['seconds']} s (stages {t['stages_seconds']} s), peak {t['peak_rss_mb']:.0f} MB; "
            f"dlt / tripflow = {med['dlt'] / t['seconds']:.2f}x, tripflow / floor = "
            f"{t['seconds'] / med['floor']:.2f}x (load {t['load_average_before']})."
        )
    if "local_server" in r:
        t = r["local_server"]
        lines.append(
            f"- the CLI's own background server (`tripflow server start`, SQLite), running, one "
            f"run after the rounds: {t['seconds']} s (stages {t['stages_seconds']} s), peak "
            f"{t['peak_rss_mb']:.0f} MB; dlt / tripflow = {med['dlt'] / t['seconds']:.2f}x, "
            f"tripflow / floor = {t['seconds'] / med['floor']:.2f}x (load "
            f"{t['load_average_before']})."
        )
    if "distinct_riders" in r:
        d = r["distinct_riders"]
        lines.append(
            f"- every trip its own rider ({r['rows']:,} distinct): {d['seconds']} s, peak "
            f"**{d['peak_rss_mb']:.0f} MB** (target ≤ 1024; load {d['load_average_before']})."
        )
    stages = list(rounds[0]["tripflow"]["stages"])
    lines += [
        "",
        "tripflow's stages (running server), medians over the rounds:",
        "",
        "| stage | wall s | CPU s | peak MiB |",
        "| --- | ---: | ---: | ---: |",
    ]
    for s in stages:
        vals = [x["tripflow"]["stages"][s] for x in rounds]
        lines.append(
            f"| {s} | {median([v['seconds'] for v in vals])} | "
            f"{median([v['cpu_seconds'] or 0 for v in vals])} | "
            f"{max(v['peak_rss_mb'] for v in vals):.0f} |"
        )
    stage_sum = median([x["tripflow"]["stages_seconds"] for x in rounds])
    lines.append(
        f"| **stages** | **{stage_sum}** | | |\n| process wall (medians) | {tf} | | |\n"
        f"| outside the stages (start-up, imports, flow/task runs, artifacts, exit) | "
        f"{round(tf - stage_sum, 2)} | | |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--date", default="2025-11-15")
    parser.add_argument("--temporary-server", action="store_true")
    parser.add_argument("--local-server", action="store_true")
    parser.add_argument("--distinct-riders", action="store_true")
    parser.add_argument("--seed-way", action="store_true")
    parser.add_argument("--worker", choices=sorted(WORKERS))
    parser.add_argument("--work")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](date.fromisoformat(args.date), Path(args.work))))
        return
    prefect_home = Path(tempfile.mkdtemp(prefix="tripflow-pgbench-prefect-"))
    prefect, api, prefect_db = start_prefect(prefect_home)
    try:
        results = bench(args, api, prefect_home)
    finally:
        prefect.terminate()
        prefect.wait(timeout=30)
        prefect_db.stop()
        shutil.rmtree(prefect_home, ignore_errors=True)
    out = HERE / "results" / "postgres.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    text = tables(results)
    (HERE / "results" / "postgres.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
