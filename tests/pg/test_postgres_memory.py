"""Peak memory of an extract does not grow with the day: measured in fresh subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path

from pgserver import ThrowawayPostgres

from tasks.sources.postgres import seed

DAY = date(2025, 11, 15)

PROBE = """
import json, re, sys
from datetime import date
from pathlib import Path
from tasks.sources.postgres import PostgresSource
from tasks.transforms import EmailHasher
dsn, table, out, chunk_rows = sys.argv[1:5]
src = PostgresSource(dsn, table=table, timezone="UTC", region_set=None,
                     chunk_rows=int(chunk_rows), batch_bytes=1 << 20)
# The pipeline's own hasher: it keeps nothing between batches, so the day's riders cannot grow it.
stats = src.extract(date(2025, 11, 15), Path(out), EmailHasher(b"memory-probe-key"))
# VmHWM, not ru_maxrss: on Linux ru_maxrss keeps the forking parent's high-water mark.
status = Path("/proc/self/status").read_text()
peak = int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1)) / 1024
print(json.dumps({"rows": stats.on_day, "peak_mb": peak}))
"""


def peak(
    pg: ThrowawayPostgres, table: str, out: Path, chunk_rows: int = 20_000
) -> dict[str, float]:
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, pg.dsn(), table, str(out), str(chunk_rows)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout)
    return result


def test_peak_rss_does_not_grow_with_the_days_rows(pg: ThrowawayPostgres, tmp_path: Path) -> None:
    """8x the rows, about the same peak; the same day read as one part would grow by far more.

    The bound is generous (40 MB of slack for allocator noise); the control run shows the
    measurement would catch a source that held the day in memory.
    """
    seed(pg.dsn(), DAY, 75_000, table="public.mem_small")
    seed(pg.dsn(), DAY, 600_000, table="public.mem_large")
    small = peak(pg, "public.mem_small", tmp_path / "small")
    large = peak(pg, "public.mem_large", tmp_path / "large")
    assert (small["rows"], large["rows"]) == (75_000, 600_000)
    growth = large["peak_mb"] - small["peak_mb"]
    print(f"peak RSS: {small['peak_mb']:.0f} MB at 75k rows, {large['peak_mb']:.0f} MB at 600k")
    assert growth < 40, (small, large)
    whole_day = peak(pg, "public.mem_large", tmp_path / "whole", chunk_rows=10**9)
    print(f"control, the day as one part: {whole_day['peak_mb']:.0f} MB")
    assert whole_day["peak_mb"] - large["peak_mb"] > 100, (large, whole_day)
    # The parts were written as they came: many files, none holding the day.
    assert len(list((tmp_path / "large").glob("part-*.parquet"))) >= 20
