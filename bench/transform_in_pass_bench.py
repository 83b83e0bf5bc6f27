"""The extract and the transform on one PostgreSQL day: `raw/` staged and read back, or the
transform applied in the extract's pass (what `tripflow run` does since issue 14).

    uv run python bench/transform_in_pass_bench.py --rows 8000000 --rounds 3

One seeded day (a throwaway PostgreSQL and the realistic generator, as `bench/postgres_bench.py`;
or `--dsn` for a server whose `public.trips` already holds it). Each way runs in a fresh process,
in alternating rounds, with no Prefect: `tasks.stages.extract` then `tasks.stages.transform`,

1. **staged**: `extract(ctx)`, as a per-stage pod runs it (`raw/` staged, then read back by the
   transform: its repeated ids, later duplicates, clean pass and quarantine pass);
2. **in pass**: `extract(ctx, transform_in_pass=True)`, as `tripflow run` runs it (each part's rules
   applied as it is read, no `raw/`, the held rows settled by the transform stage).

Printed per run: the two stages' wall seconds, the process's CPU seconds (user + sys) and its peak
RSS, the clean and quarantined rows (which must be equal), and the load average. Nothing here is a
test: no time is asserted. Run it alone on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
DAY = date(2025, 11, 15)
WAYS = ("staged", "in pass")

RUNNER = r"""
import json, sys, time
from datetime import date
from pathlib import Path
from tasks.config import load_settings
from tasks.metrics import peak_rss_mb
from tasks import stages
way, work = sys.argv[1], Path(sys.argv[2])
settings = load_settings({"source": "postgres", "staging": str(work / "staging"),
    "warehouse": f"duckdb:{work / 'wh.duckdb'}", "pii_key_file": str(work / "pii.key")})
ctx = stages.RunContext.create("bench0000001", date(2025, 11, 15), settings)
start = time.perf_counter()
stages.extract(ctx, transform_in_pass=way == "in pass")
extracted = time.perf_counter()
out = stages.transform(ctx)
done = time.perf_counter()
print(json.dumps({"extract": extracted - start, "transform": done - extracted,
    "clean": out.rows_clean, "quarantined": out.rows_quarantined, "peak_mb": peak_rss_mb()}))
"""


def run(way: str, env: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="tripflow-in-pass-") as work:
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run(
            [sys.executable, "-c", RUNNER, way, work],
            env=env,
            cwd=HERE.parent,
            check=True,
            capture_output=True,
            text=True,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result | {"cpu": round(cpu, 2), "load": round(load, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=8_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", help="a PostgreSQL whose public.trips already holds the day")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from postgres_bench import TABLE, ThrowawayPostgres, pg_env, seed

    server = None if args.dsn else ThrowawayPostgres().start()
    try:
        dsn = args.dsn or server.dsn()  # type: ignore[union-attr]
        env = pg_env(dsn) | {"TRIPFLOW_POSTGRES_DSN": dsn, "PYTHONPATH": str(HERE.parent)}
        if server is not None:
            print(f"seeded in {seed(env, DAY, args.rows, TABLE, None):.1f} s", flush=True)
        results: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
        for r in range(args.rounds):
            for way in WAYS if r % 2 == 0 else WAYS[::-1]:
                results[way].append(result := run(way, env))
                print(way, json.dumps(result), flush=True)
        print("\n| way | extract s | transform s | both s | CPU s | peak MB |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for way, runs in results.items():
            both = [x["extract"] + x["transform"] for x in runs]
            print(
                f"| {way} | {median(x['extract'] for x in runs):.2f} "
                f"| {median(x['transform'] for x in runs):.2f} | {median(both):.2f} "
                f"| {median(x['cpu'] for x in runs):.2f} | {max(x['peak_mb'] for x in runs):.0f} |"
            )
        rows = {(x["clean"], x["quarantined"]) for runs in results.values() for x in runs}
        print("same clean and quarantined rows:", len(rows) == 1, sorted(rows))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
