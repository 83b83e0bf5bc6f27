"""Each stage in a process of its own, as each runs in a pod of its own on the Kubernetes pool.

    uv run python bench/stage_process_bench.py --rows 1000000 8000000

In ``tripflow run`` all stages share one process, so a stage's peak RSS there includes what earlier
stages left allocated. Here extract, transform, load, validate and publish each run in a fresh
Python process that imports what a stage pod imports (Prefect and ``flows.stages``) and runs
the plain stage function, handing each other the staged day exactly as the per-stage deployments
do; each reports its wall time and its process's peak RSS (VmHWM: interpreter, Prefect, Polars and
DuckDB included). These are the figures the stage pods' memory limits are set from.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

STAGES = ("extract", "transform", "load", "validate", "publish")
RUNNER = r"""
import json, sys, time
from datetime import date
from pathlib import Path
from tasks.config import load_settings
from tasks.metrics import peak_rss_mb
from tasks.report import RunReport
from tasks import stages
import flows.stages  # what a stage pod imports: Prefect and the stage flows
stage, rows, work = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
settings = load_settings({"rows": rows, "staging": str(work / "staging"),
    "warehouse": f"duckdb:{work / 'wh.duckdb'}", "pii_key_file": str(work / "pii.key")}, environ={})
ctx = stages.RunContext.create("bench0000001", date(2025, 11, 15), settings)
state = work / "state.json"
saved = json.loads(state.read_text()) if state.exists() else {}
start = time.perf_counter()
if stage == "extract":
    saved["extracted"] = stages.extract(ctx).rows
elif stage == "transform":
    saved["quarantined"] = stages.transform(ctx).rows_quarantined
elif stage == "load":
    saved["load"] = stages.load(ctx).__dict__
else:
    loaded = stages.LoadResult(**saved["load"])
    if stage == "validate":
        checks = stages.validate(ctx, saved["extracted"], saved["quarantined"], loaded)
        saved["passed"] = all(c.passed for c in checks)
    else:
        stages.publish(ctx, loaded, RunReport(ctx).ledger("published"))
seconds = time.perf_counter() - start
state.write_text(json.dumps(saved))
peak = round(peak_rss_mb())
print(json.dumps({"stage": stage, "seconds": round(seconds, 2), "peak_rss_mb": peak}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 8_000_000])
    args = parser.parse_args()
    print(f"{'rows':>10} {'stage':>10} {'seconds':>8} {'peak MiB':>9}")
    results = []
    for rows in args.rows:
        work = Path(tempfile.mkdtemp(prefix="tripflow-stage-bench-"))
        total = 0.0
        for stage in STAGES:
            proc = subprocess.run(
                [sys.executable, "-c", RUNNER, stage, str(rows), str(work)],
                capture_output=True,
                text=True,
                check=True,
            )
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            total += out["seconds"]
            results.append({"rows": rows, **out})
            print(f"{rows:>10,} {stage:>10} {out['seconds']:>8.2f} {out['peak_rss_mb']:>9.0f}")
        peak = max(r["peak_rss_mb"] for r in results if r["rows"] == rows)
        print(f"{rows:>10,} {'all':>10} {total:>8.2f} {peak:>9.0f}")
        shutil.rmtree(work, ignore_errors=True)
    out_dir = Path(__file__).resolve().parent / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "stage_process.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
