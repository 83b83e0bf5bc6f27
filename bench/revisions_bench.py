"""Two revisions of tripflow side by side on one PostgreSQL day, through the CLI's own server.

    uv run python bench/revisions_bench.py --old bf9c25b --new HEAD --rows 8000000 --rounds 3
    uv run python bench/revisions_bench.py --old 29b55cf --new HEAD --source sample --rounds 7

``--source sample`` times the 10-row sample day instead (no PostgreSQL): the CLI's own cost.

For a change whose effect is smaller than the machine's drift between two benchmark sessions: both
revisions run in the same session, in alternating order (round r starts with the other one), on
the same seeded table (``postgres_bench.seed``: the realistic generator), each as
``tripflow run --source postgres --json`` in its own process, against the CLI's background
Prefect server (``tripflow server start``: SQLite, as a first-time user runs it; started once,
not counted). Each revision is checked out with ``git worktree add --detach`` into a temporary
folder and imported from there (``PYTHONPATH``) with this checkout's virtual environment, so
both use the same dependencies: a revision that changed ``uv.lock`` is not comparable this way.

Prints each run (wall, the five stages' sum, the rest) and the medians. A benchmark, not a test:
nothing asserts a time. Run it alone: the machine has two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from postgres_bench import ROOT, TABLE, ThrowawayPostgres, pg_env, seed


def worktree(rev: str, into: Path) -> Path:
    """``rev`` checked out (detached) in a worktree under ``into``."""
    path = into / rev.replace("/", "_")
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(path), rev],
        check=True, capture_output=True,
    )  # fmt: skip
    return path


def cli(tree: Path, env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m flows.cli ARGS`` with ``tree``'s code first on the import path."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        env={**env, "PYTHONPATH": str(tree)}, cwd=cwd, capture_output=True, text=True,
        check=False,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", default="HEAD")
    parser.add_argument("--rows", type=int, default=8_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--date", default="2025-11-15")
    parser.add_argument("--source", choices=("postgres", "sample"), default="postgres")
    args = parser.parse_args()
    # Each revision by its commit (``HEAD`` moves): what the table names.
    args.old, args.new = (
        subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for rev in (args.old, args.new)
    )
    day = date.fromisoformat(args.date)
    work = Path(tempfile.mkdtemp(prefix="tripflow-revisions-"))
    server = ThrowawayPostgres().start() if args.source == "postgres" else None
    trees: dict[str, Path] = {}
    try:
        trees = {args.old: worktree(args.old, work), args.new: worktree(args.new, work)}
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {
            "PREFECT_HOME": str(work / "prefect"),
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        if server is not None:
            dsn = server.dsn()
            env |= pg_env(dsn) | {"TRIPFLOW_POSTGRES_DSN": dsn}
            print(f"seeded {args.rows:,} trips in {seed(env, day, args.rows, TABLE, None):.1f} s")
        started = cli(trees[args.new], env, work, "server", "start")
        if started.returncode:
            raise SystemExit(f"tripflow server start failed: {started.stderr[-2000:]}")
        runs: dict[str, list[tuple[float, float]]] = {rev: [] for rev in trees}
        try:
            for r in range(args.rounds):
                order = list(trees) if r % 2 == 0 else list(trees)[::-1]
                for rev in order:
                    run = work / "run"
                    shutil.rmtree(run, ignore_errors=True)
                    run.mkdir()
                    load = os.getloadavg()[0]
                    began = time.perf_counter()
                    done = cli(trees[rev], env, run, "run", "--source", args.source,
                               "--date", str(day), "--json")  # fmt: skip
                    wall = time.perf_counter() - began
                    report = json.loads(done.stdout)
                    if report["status"] != "published":
                        raise SystemExit(f"{rev}: the run did not publish: {report.get('error')}")
                    stages = sum(s["seconds"] for s in report["stages"])
                    runs[rev].append((wall, stages))
                    print(
                        f"round {r + 1} {rev}: {wall:.2f} s wall, stages {stages:.2f} s, "
                        f"outside {wall - stages:.2f} s (load {load:.2f})",
                        flush=True,
                    )
        finally:
            cli(trees[args.new], env, work, "server", "stop")
        print("\n| revision | median wall s | median stages s | median outside the stages s |")
        print("| --- | ---: | ---: | ---: |")
        for rev, values in runs.items():
            wall = statistics.median(v[0] for v in values)
            stages = statistics.median(v[1] for v in values)
            outside = statistics.median(v[0] - v[1] for v in values)
            print(f"| {rev} | {wall:.2f} | {stages:.2f} | {outside:.2f} |")
    finally:
        if server is not None:
            server.stop()
        for tree in trees.values():
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                check=False, capture_output=True,
            )  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
