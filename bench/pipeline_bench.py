"""Benchmark ``tripflow run`` on synthetic days: wall time and peak RSS per stage.

    uv run python bench/pipeline_bench.py --rows 1000000 8000000

Each size runs in a fresh working folder as a real ``tripflow run --json`` subprocess (Prefect's
temporary server included in the process's wall time, not in the stage figures). Per-stage peak RSS
is the process's high-water mark reset at each stage's start (``/proc/self/clear_refs``), so it
includes the Python interpreter, Prefect, Polars and DuckDB. Results are printed as a table and
written to ``bench/results/pipeline.json``. A benchmark, not a test: nothing here asserts a time.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRIPFLOW = Path(sys.executable).parent / "tripflow"


def run(rows: int, date: str) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix=f"tripflow-bench-{rows}-"))
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    # Prefect's temporary server per run, as measured before the CLI's background server existed
    # (bench/cli_bench.py measures that one); nothing is left running after the benchmark.
    env["TRIPFLOW_LOCAL_SERVER"] = "0"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        [str(TRIPFLOW), "run", "--rows", str(rows), "--date", date, "--json"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(work, ignore_errors=True)
    if not proc.stdout.strip():
        raise SystemExit(proc.stderr[-3000:])
    report = json.loads(proc.stdout)
    stages = report["stages"]
    return {
        "rows": rows,
        "status": report["status"],
        "loaded": report["rows"]["loaded"],
        "stages": stages,
        "stages_seconds": round(sum(s["seconds"] for s in stages), 2),
        "stages_peak_rss_mb": max(s["peak_rss_mb"] for s in stages),
        "process_wall_seconds": round(wall, 2),
        "process_cpu_seconds": round(
            (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 8_000_000])
    parser.add_argument("--date", default="2025-11-15")
    args = parser.parse_args()
    results = [run(n, args.date) for n in args.rows]
    header = f"{'rows':>10} {'stage':>10} {'seconds':>8} {'peak MiB':>9}"
    print(header)
    for r in results:
        for s in r["stages"]:  # type: ignore[union-attr]
            print(f"{r['rows']:>10,} {s['name']:>10} {s['seconds']:>8.2f} {s['peak_rss_mb']:>9.0f}")
        print(
            f"{r['rows']:>10,} {'stages':>10} {r['stages_seconds']:>8.2f} "
            f"{r['stages_peak_rss_mb']:>9.0f}   (process wall {r['process_wall_seconds']} s incl. "
            f"Prefect's temporary server; status {r['status']})"
        )
    if len(results) > 1:
        a, b = results[0], results[-1]
        ratio = b["stages_seconds"] / a["stages_seconds"]  # type: ignore[operator]
        print(
            f"\n{b['rows']:,} vs {a['rows']:,} rows: time x{ratio:.2f}, "
            f"peak RSS x{b['stages_peak_rss_mb'] / a['stages_peak_rss_mb']:.2f} "
            f"for x{b['rows'] / a['rows']:.0f} the rows"
        )
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
