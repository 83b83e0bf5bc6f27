"""How ``raw/`` is compressed, measured end to end in CPU seconds: extract, transform, load and
validate of one synthetic day, in this process (no Prefect), for each setting.

    uv run python bench/raw_parquet_bench.py --rows 2000000 zstd/zstd none/zstd lz4/zstd

``A/B``: raw staged with A, clean/quarantine/region_daily with B. CPU seconds
(``time.process_time``, all threads) rather than wall time, so that a shared machine distorts the
comparison less. A benchmark, not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from tasks.config import load_settings
from tasks.report import RunReport
from tasks.stages import RunContext, extract, load, transform, validate
from tasks.staging import PARQUET_WRITE, RAW_PARQUET_WRITE

SETTINGS: dict[str, dict[str, Any]] = {
    "zstd": {"compression": "zstd", "compression_level": 1},
    "lz4": {"compression": "lz4"},
    "none": {"compression": "uncompressed"},
}


def use(target: dict[str, Any], setting: dict[str, Any]) -> None:
    target.clear()
    target.update(setting)


def measure(rows: int, raw: dict[str, Any], rest: dict[str, Any], tmp: Path) -> dict[str, float]:
    """CPU seconds of each stage for one day staged with these settings."""
    s = load_settings(
        {
            "staging": str(tmp / "staging"),
            "warehouse": f"duckdb:{tmp / 'wh.duckdb'}",
            "pii_key_file": str(tmp / "pii.key"),
            "rows": rows,
        },
        environ={},
    )
    ctx = RunContext.create("bench0001", date(2025, 11, 15), s)
    r = RunReport(ctx)
    cpu: dict[str, float] = {}

    def timed(name: str, step: Callable[[], Any]) -> Any:
        started = time.process_time()
        out = step()
        cpu[name] = round(time.process_time() - started, 2)
        return out

    use(RAW_PARQUET_WRITE, raw)
    use(PARQUET_WRITE, raw)  # what a source that imports PARQUET_WRITE would use
    r.extracted = timed("extract", lambda: extract(ctx))
    use(PARQUET_WRITE, rest)
    r.transformed = timed("transform", lambda: transform(ctx))
    loaded = timed("load", lambda: load(ctx))
    timed("validate", lambda: validate(ctx, r.rows["extracted"], r.rows["quarantined"], loaded))
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("variants", nargs="+", default=["zstd/zstd", "none/zstd"])
    args = parser.parse_args()
    saved = (dict(RAW_PARQUET_WRITE), dict(PARQUET_WRITE))
    for variant in args.variants:
        raw, rest = (SETTINGS[v] for v in variant.split("/"))
        tmp = Path(tempfile.mkdtemp(prefix="tripflow-rawbench-"))
        try:
            cpu = measure(args.rows, raw, rest, tmp)
            raw_mb = sum(p.stat().st_size for p in (tmp / "staging" / "raw").rglob("*.parquet"))
            print(
                f"{variant:<10} {cpu} total {sum(cpu.values()):.2f} CPU-s, raw "
                f"{raw_mb >> 20} MB, load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            use(RAW_PARQUET_WRITE, saved[0])
            use(PARQUET_WRITE, saved[1])


if __name__ == "__main__":
    main()
