"""The transform applied in the extract's pass (``tripflow run``) stages what the transform stage
stages from ``raw/``: the same clean and quarantined rows, the same reasons, the same repeats."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import tasks.sources.synthetic as synthetic
from tasks import streamed_transform
from tasks.config import load_settings
from tasks.contract import CLEAN_SCHEMA, QUARANTINE_SCHEMA, RAW_SCHEMA
from tasks.stages import RunContext, TransformOutput, extract, transform

DAY = date(2025, 11, 15)


def staged_day(
    tmp: Path, name: str, *, in_pass: bool, keep_raw: bool = False
) -> tuple[TransformOutput, pl.DataFrame, pl.DataFrame, list[str]]:
    settings = load_settings(
        {
            "rows": 40_000,
            "staging": str(tmp / name),
            "warehouse": f"duckdb:{tmp / name}.duckdb",
            "pii_key_file": str(tmp / "pii.key"),
            "keep_raw": keep_raw,
        },
        environ={},
    )
    ctx = RunContext.create("run0001", DAY, settings)
    extracted = extract(ctx, transform_in_pass=in_pass)
    assert extracted.rows == 40_000 and extracted.checksums["rows"] == 40_000
    out = transform(ctx)
    lineage = ["_source_file", "_source_row"]
    clean = ctx.staging.read("clean", DAY).scan(CLEAN_SCHEMA).sort(lineage).collect()
    quarantine = ctx.staging.read("quarantine", DAY).scan(QUARANTINE_SCHEMA).sort(lineage).collect()
    scratch = tmp / name / streamed_transform.SCRATCH
    assert not scratch.exists() or not any(scratch.iterdir())  # removed once staged
    return (
        out,
        clean,
        quarantine,
        sorted(p.name for p in (tmp / name).iterdir() if p.name[0] != "."),
    )


@pytest.mark.parametrize("bloom_bits", [streamed_transform.BLOOM_BITS, 8])
def test_the_transform_in_the_extracts_pass_stages_what_the_stage_stages_from_raw(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bloom_bits: int
) -> None:
    """Parts of 3,000 rows, each repeating ten trip_ids of the part before (the generator's own
    repeats stay within a part); with an 8-bit filter every valid row after the first few is held
    and settled at the end (the false positives' path)."""
    generate = synthetic.generate_chunk

    def repeating_the_part_before(run_date: date, *, start: int, **kw: int | str) -> pl.DataFrame:
        chunk = generate(run_date, start=start, **kw)  # type: ignore[arg-type]
        if not start:
            return chunk
        before = generate(run_date, start=start - 3_000, **kw)  # type: ignore[arg-type]
        ids = pl.concat([before["trip_id"].slice(100, 10), chunk["trip_id"].slice(10)])
        return chunk.with_columns(trip_id=ids)

    monkeypatch.setattr(synthetic, "CHUNK_ROWS", 3_000)
    monkeypatch.setattr(synthetic, "generate_chunk", repeating_the_part_before)
    monkeypatch.setattr(streamed_transform, "BLOOM_BITS", bloom_bits)
    staged, clean, quarantine, _ = staged_day(tmp_path, "staged", in_pass=False)
    passed, clean_p, quarantine_p, stages = staged_day(tmp_path, "passed", in_pass=True)
    assert stages == ["clean", "quarantine", "region_daily"]  # no raw/
    assert clean_p.equals(clean)
    assert quarantine_p.equals(quarantine)
    assert passed.reasons == staged.reasons and passed.warnings == staged.warnings
    assert passed.rows_clean == staged.rows_clean > 0
    repeats = quarantine.filter(pl.col("reasons").list.contains("duplicate_trip_id"))
    kept = clean.join(repeats.select("trip_id", repeat_file="_source_file"), on="trip_id")
    # some repeats sit in another part than the trip they repeat
    assert kept.filter(pl.col("_source_file") != pl.col("repeat_file")).height > 0


def test_keep_raw_stages_raw_even_in_one_process(tmp_path: Path) -> None:
    _, _, _, stages = staged_day(tmp_path, "kept", in_pass=True, keep_raw=True)
    assert stages == ["clean", "quarantine", "raw", "region_daily"]


def test_a_bloom_filter_never_forgets_a_hash() -> None:
    seen = streamed_transform.BloomFilter(1 << 16)
    rng = np.random.default_rng(7)
    first = rng.integers(0, 2**63, 1_000, dtype=np.uint64)
    assert not seen.seen_then_add(first).all()
    assert seen.seen_then_add(first).all()
    others = rng.integers(0, 2**63, 1_000, dtype=np.uint64)
    assert seen.seen_then_add(others).mean() < 0.05  # 2 bits a hash of 65,536: ~0.1% expected


def test_a_bloom_filter_keeps_every_bit_of_hashes_that_share_a_byte() -> None:
    """64 hashes whose both bit positions fall in the first 8 bytes, all 8 bits of each: one
    vectorised assignment keeps one bit a byte, so the rest must be set again."""
    seen = streamed_transform.BloomFilter(1 << 16)
    hashes = np.array([i | (i << 32) for i in range(64)], dtype=np.uint64)
    assert not seen.seen_then_add(hashes).any()
    assert seen.seen_then_add(hashes).all()
    for i in range(64):
        assert seen.seen_then_add(hashes[i : i + 1]).all(), i


def _raw_part(trip_ids: list[str], rows: list[int]) -> pl.LazyFrame:
    at = datetime(2025, 11, 15, 8, tzinfo=UTC)
    return pl.LazyFrame(
        {
            "trip_id": trip_ids,
            "trip_date": [DAY] * len(rows),
            "pickup_ts": [at] * len(rows),
            "dropoff_ts": [at] * len(rows),
            "distance_km": [1.0] * len(rows),
            "fare_usd": [5.0] * len(rows),
            "region": ["us-east"] * len(rows),
            "_source_file": ["f"] * len(rows),
            "_source_row": rows,
            "_pickup_given": [True] * len(rows),
        }
    ).with_columns(
        pl.lit(None, dtype=RAW_SCHEMA[c]).alias(c)
        for c in RAW_SCHEMA
        if c not in ("trip_id", "trip_date", "pickup_ts", "dropoff_ts", "distance_km")
        and c not in ("fare_usd", "region", "_source_file", "_source_row", "_pickup_given")
    )


def test_rows_out_of_lineage_order_are_refused_not_kept_twice(tmp_path: Path) -> None:
    """Part 1 repeats part 0's trip with a lower ``_source_row``: the row kept in part 0 would be
    the repeat. The settlement refuses rather than staging a repeated trip as clean."""
    streamed = streamed_transform.StreamedTransform("run0001", DAY, None)
    try:
        streamed.write_part(_raw_part(["A", "B"], [10, 11]), 0)
        streamed.write_part(_raw_part(["A"], [5]), 1)
        (tmp_path / "c").mkdir()
        (tmp_path / "q").mkdir()
        with pytest.raises(RuntimeError, match="lineage order"):
            streamed.finish(tmp_path / "c", tmp_path / "q")
    finally:
        streamed.discard()
    assert not streamed.scratch.exists()


def test_a_killed_runs_scratch_is_removed_by_the_days_next_run(tmp_path: Path) -> None:
    killed = streamed_transform.StreamedTransform("run0001", DAY, None, tmp_path / ".transform")
    killed.write_part(_raw_part(["A", "A"], [1, 2]), 0)  # a held row too
    other_day = streamed_transform.StreamedTransform(
        "run0002", date(2025, 11, 16), None, tmp_path / ".transform"
    )
    next_run = streamed_transform.StreamedTransform("run0003", DAY, None, tmp_path / ".transform")
    assert killed.scratch.parent == next_run.scratch.parent
    assert not killed.scratch.exists() and next_run.scratch.is_dir()
    assert other_day.scratch.is_dir()  # another day's run is left alone
