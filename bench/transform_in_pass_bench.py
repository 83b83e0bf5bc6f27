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

With ``--old REV [--new REV]``, two revisions instead of two ways: each revision's **in pass**, its
code checked out with ``git worktree add --detach`` and imported from there (``PYTHONPATH``, this
checkout's virtual environment), alternating, on the same seeded day:

    uv run python bench/transform_in_pass_bench.py --old 7b5dba7 --new HEAD --rounds 3

Printed per run: the two stages' wall seconds, the process's CPU seconds (user + sys) and its peak
RSS, the PostgreSQL server's CPU seconds over the run (its processes', read from the postmaster's
children times), the clean and quarantined rows (which must be equal), and the load average.
Nothing here is a test: no time is asserted. Run it alone on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
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


def server_cpu(postmaster: int | None) -> float:
    """CPU seconds of the PostgreSQL server's exited processes (its backends), from the
    postmaster's children times; 0 when the server is not this machine's."""
    if postmaster is None:
        return 0.0
    fields = Path(f"/proc/{postmaster}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def run(way: str, env: dict[str, str], tree: Path, postmaster: int | None) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="tripflow-in-pass-") as work:
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_before = server_cpu(postmaster)
        out = subprocess.run(
            [sys.executable, "-c", RUNNER, way, work],
            env=env | {"PYTHONPATH": str(tree)},
            cwd=tree,
            check=True,
            capture_output=True,
            text=True,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        time.sleep(0.5)  # the backend has exited: its CPU is in the postmaster's children times
        server = server_cpu(postmaster) - server_before
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result | {"cpu": round(cpu, 2), "server_cpu": round(server, 2), "load": round(load, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=8_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", help="a PostgreSQL whose public.trips already holds the day")
    parser.add_argument("--old", help="compare this revision's in-pass run with --new's")
    parser.add_argument("--new", default="HEAD")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from postgres_bench import TABLE, ThrowawayPostgres, pg_env, seed
    from revisions_bench import worktree

    server = None if args.dsn else ThrowawayPostgres().start()
    trees_in = Path(tempfile.mkdtemp(prefix="tripflow-revisions-"))
    try:
        dsn = args.dsn or server.dsn()  # type: ignore[union-attr]
        env = pg_env(dsn) | {"TRIPFLOW_POSTGRES_DSN": dsn}
        postmaster = None
        if server is not None:
            print(f"seeded in {seed(env, DAY, args.rows, TABLE, None):.1f} s", flush=True)
            postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
        # (label, way, tree): the two ways in this checkout, or two revisions' in-pass runs
        if args.old:
            cases = [(rev, "in pass", worktree(rev, trees_in)) for rev in (args.old, args.new)]
        else:
            cases = [(way, way, HERE.parent) for way in WAYS]
        results: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in cases}
        for r in range(args.rounds):
            for label, way, tree in cases if r % 2 == 0 else cases[::-1]:
                results[label].append(result := run(way, env, tree, postmaster))
                print(label, json.dumps(result), flush=True)
        print("\n| run | extract s | transform s | both s | CPU s | server CPU s | peak MB |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for label, runs in results.items():
            both = [x["extract"] + x["transform"] for x in runs]
            print(
                f"| {label} | {median(x['extract'] for x in runs):.2f} "
                f"| {median(x['transform'] for x in runs):.2f} | {median(both):.2f} "
                f"| {median(x['cpu'] for x in runs):.2f} "
                f"| {median(x['server_cpu'] for x in runs):.2f} "
                f"| {max(x['peak_mb'] for x in runs):.0f} |"
            )
        rows = {(x["clean"], x["quarantined"]) for runs in results.values() for x in runs}
        print("same clean and quarantined rows:", len(rows) == 1, sorted(rows))
    finally:
        if server is not None:
            server.stop()
        for tree in trees_in.iterdir():
            subprocess.run(
                ["git", "-C", str(HERE.parent), "worktree", "remove", "--force", str(tree)],
                check=False, capture_output=True,
            )  # fmt: skip
        shutil.rmtree(trees_in, ignore_errors=True)


if __name__ == "__main__":
    main()
