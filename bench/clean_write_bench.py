"""The transform's costliest step, writing ``clean/``, measured with each writer and setting.

    uv run python bench/clean_write_bench.py --rows 8000000

One synthetic day (the realistic generator: UUID trip ids, one rider per 4 trips, ~300k drivers)
is extracted into a temporary staging folder (no Prefect), its clean trips are computed once in
memory as the transform computes them, and then written to Parquet by each way below, each
timed on its own: wall seconds and CPU seconds (``time.process_time``, all threads), the file's
size, and a full scan of it by Polars (what ``validate`` and the warehouse's views read). The
first row is what the transform does today (``tasks.staging.PARQUET_WRITE``, streamed by
``sink_parquet`` from ``raw/``). A benchmark, not a test: nothing asserts a time. Run it alone.
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

import duckdb
import polars as pl
import pyarrow.parquet as pq

from tasks.config import load_settings
from tasks.contract import RAW_SCHEMA
from tasks.stages import RunContext, extract
from tasks.staging import PARQUET_WRITE
from tasks.transforms import (
    classified_rows,
    clean_trips,
    later_duplicates,
    passing_rules,
    repeated_id_hashes,
)

ZSTD1 = {"compression": "zstd", "compression_level": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=8_000_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tripflow-clean-write-"))
    try:
        settings = load_settings(
            {
                "staging": str(tmp / "staging"),
                "warehouse": f"duckdb:{tmp / 'wh.duckdb'}",
                "pii_key_file": str(tmp / "pii.key"),
                "rows": args.rows,
            },
            environ={},
        )
        ctx = RunContext.create("bench0001", date(2025, 11, 15), settings)
        extract(ctx)
        raw = ctx.staging.read("raw", ctx.run_date).scan(RAW_SCHEMA)
        passing = passing_rules(raw, None)
        later = later_duplicates(passing, repeated_id_hashes(passing).collect()).collect()

        def streamed() -> pl.LazyFrame:
            return clean_trips(classified_rows(raw, None, later, valid=True), "bench0001")

        frame = streamed().collect()
        table = frame.to_arrow()
        low = [
            c for c in frame.columns if frame[c].dtype == pl.String and frame[c].n_unique() < 1000
        ]
        con = duckdb.connect(config={"threads": os.cpu_count() or 1})
        out = tmp / "clean.parquet"

        def pyarrow_write() -> None:
            pq.write_table(table, out, compression="zstd", compression_level=1, use_dictionary=low)

        def duckdb_write() -> None:
            con.register("clean_rows", table)
            con.execute(
                f"COPY clean_rows TO '{out}' (FORMAT parquet, COMPRESSION zstd, "
                "COMPRESSION_LEVEL 1)"
            )

        ways: dict[str, Callable[[], object]] = {
            "today: sink_parquet from raw/, zstd 1": lambda: streamed().sink_parquet(
                out, **PARQUET_WRITE
            ),
            "sink_parquet from raw/, lz4": lambda: streamed().sink_parquet(out, compression="lz4"),
            "sink_parquet from raw/, snappy": lambda: streamed().sink_parquet(
                out, compression="snappy"
            ),
            "sink_parquet from raw/, uncompressed": lambda: streamed().sink_parquet(
                out, compression="uncompressed"
            ),
            "sink_parquet from raw/, zstd 1, no statistics": lambda: streamed().sink_parquet(
                out, **ZSTD1, statistics=False
            ),
            "sink_parquet from raw/, zstd 1, maintain_order=False": lambda: streamed().sink_parquet(
                out, **ZSTD1, maintain_order=False
            ),
            "the frame in memory (no raw/ scan): write_parquet, zstd 1": lambda: (
                frame.write_parquet(out, **ZSTD1)
            ),
            "in memory: pyarrow, zstd 1, dictionaries on low-cardinality columns": pyarrow_write,
            "in memory: DuckDB COPY from Arrow, zstd 1": duckdb_write,
        }
        print(f"{args.rows:,} trips, {frame.height:,} clean; load {os.getloadavg()[0]:.1f}")
        print("| way | wall s | CPU s | MB | full scan s |")
        print("|---|---:|---:|---:|---:|")
        for name, way in ways.items():
            wall, cpu = time.perf_counter(), time.process_time()
            way()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            scan = time.perf_counter()
            pl.scan_parquet(out).select(pl.all().max()).collect()
            scan = time.perf_counter() - scan
            size = out.stat().st_size / 1e6
            print(f"| {name} | {wall:.2f} | {cpu:.2f} | {size:.0f} | {scan:.2f} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
