"""The transform stage applied part by part inside the extract's pass, where both share a process.

``tripflow run`` runs every stage in one process. There the extract hands each part of the day
(contract rows, PII already hashed, lineage) still in memory to a ``StreamedTransform``, which
applies the row rules and writes the part's clean and quarantined rows into a scratch folder at
once: the day is not staged as ``raw/`` and read back (``bench/fused_pass_bench.py`` measured both
ways). The transform stage then settles the held rows (below) and puts the parts into ``clean/``
and ``quarantine/`` exactly as it stages them from ``raw/`` (``tasks.stages.transform``). Per-stage
pods never use this: there ``raw/`` is what the extract hands the transform. ``keep_raw`` stages
``raw/`` in one process too.

Repeated trip_ids: as ``later_duplicates`` does, the valid row with the lowest (``_source_file``,
``_source_row``) keeps a trip_id and the later valid ones are quarantined; a ``StreamingSource``'s
rows arrive in that order, so the first seen is the one kept. A Bloom filter of the valid rows'
trip_id hashes, of a fixed size whatever the day (``BLOOM_BITS``), says which rows cannot have
come before; the others (the true repeats and the filter's false positives, a small share that
grows with the day) are held aside in scratch and settled on their real trip_ids at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from datetime import date
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl

from tasks.contract import LINEAGE
from tasks.staging import PARQUET_WRITE, RAW_PARQUET_WRITE
from tasks.transforms import (
    REASON_BITS,
    clean_trips,
    later_duplicates,
    quarantined_trips,
    rule_bits,
)

#: The Bloom filter's bits (64 MiB): fixed, never sized to a day. At 8M valid rows ~0.1% of them
#: are false positives, at 32M ~1.3%; each costs only a held row, settled exactly.
BLOOM_BITS: Final = 1 << 29
#: Under a local staging root, the runs' scratch folders: ``.transform/<day>-<run_id>/``.
SCRATCH: Final = ".transform"
_VALID: Final = pl.lit(0, dtype=pl.UInt8).alias("_reason_bits")
_REPEAT: Final = pl.lit(REASON_BITS["duplicate_trip_id"], dtype=pl.UInt8).alias("_reason_bits")


class BloomFilter:
    """A set of 64-bit hashes that may say "seen" wrongly, never "not seen" wrongly."""

    def __init__(self, bits: int) -> None:
        if bits < 8 or bits & (bits - 1):
            raise ValueError(f"a Bloom filter needs a power of two of at least 8 bits, not {bits}")
        self._bytes = np.zeros(bits // 8, dtype=np.uint8)
        self._mask = np.uint64(bits - 1)

    def seen_then_add(self, hashes: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, Any]:
        """Whether each hash may have been added before this call; then add them all."""
        seen = np.ones(len(hashes), dtype=bool)
        for index in (hashes & self._mask, (hashes >> np.uint64(32)) & self._mask):
            byte = index >> np.uint64(3)
            bit = np.left_shift(np.uint8(1), (index & np.uint64(7)).astype(np.uint8))
            seen &= (self._bytes[byte] & bit) > 0
            # Where a byte is named twice, the assignment keeps one of their bits: set the others
            # again until every bit is in (``np.bitwise_or.at`` does it in one go, at twice the
            # CPU: 1.8 against 0.9 CPU-s for 8M hashes).
            while len(byte):
                self._bytes[byte] |= bit
                lost = (self._bytes[byte] & bit) == 0
                byte, bit = byte[lost], bit[lost]
        return seen


class StreamedTransform:
    """One run's transform, fed the raw parts as the extract reads them (``write_part``)."""

    def __init__(
        self,
        run_id: str,
        run_date: date,
        region_set: frozenset[str] | None,
        scratch_in: Path | None = None,
    ) -> None:
        """``scratch_in``: the folder for the run's scratch (a local staging root's ``.transform``,
        so parts are hard-linked into the stage folders, and a killed run's scratch is removed by
        the day's next run); None: a temporary folder (a pod's scratch, for remote staging)."""
        self.run_id = run_id
        self.run_date = run_date
        self.region_set = region_set
        if scratch_in is None:
            self.scratch = Path(tempfile.mkdtemp(prefix="tripflow-transform-"))
        else:
            scratch_in.mkdir(parents=True, exist_ok=True)
            # A killed run's scratch (runs of a day take turns, so none of it is in use).
            for stale in scratch_in.glob(f"{run_date.isoformat()}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            self.scratch = scratch_in / f"{run_date.isoformat()}-{run_id}"
            self.scratch.mkdir()
        self._remove = weakref.finalize(self, shutil.rmtree, self.scratch, ignore_errors=True)
        for name in ("clean", "quarantine", "held"):
            (self.scratch / name).mkdir()
        self._seen = BloomFilter(BLOOM_BITS)
        self.parts = 0
        self.rows = 0
        self._fare_usd = 0.0
        self._distance_km = 0.0

    def write_part(self, raw: pl.LazyFrame, part: int) -> None:
        """Apply the row rules to one part; stage its clean, quarantined and held rows."""
        frame = raw.collect()
        name = f"part-{part:05d}.parquet"
        bits = frame.select(rule_bits(self.region_set)).to_series()
        valid = frame.filter(bits == 0)
        ids = valid.get_column("trip_id")
        held = self._seen.seen_then_add(ids.hash().to_numpy()) | ~ids.is_first_distinct().to_numpy()
        kept = pl.Series(~held)
        # Filtering the frames in memory measured faster than marking the part and letting each
        # sink filter it as it streams (24.2-26.8 against 27.0-29.2 s for an 8M day's two stages).
        clean_trips(valid.filter(kept).lazy().with_columns(_VALID), self.run_id).sink_parquet(
            self.scratch / "clean" / name, **PARQUET_WRITE
        )
        bad = frame.filter(bits > 0).with_columns(_reason_bits=bits.filter(bits > 0))
        quarantined_trips(bad.lazy(), self.run_id).sink_parquet(
            self.scratch / "quarantine" / name, **PARQUET_WRITE
        )
        if held.any():
            valid.filter(~kept).write_parquet(self.scratch / "held" / name, **RAW_PARQUET_WRITE)
        sums = frame.select(pl.col("fare_usd").sum(), pl.col("distance_km").sum()).row(0)
        self._fare_usd += sums[0] or 0.0
        self._distance_km += sums[1] or 0.0
        self.rows += frame.height
        self.parts = max(self.parts, part + 1)

    def raw_checksums(self) -> dict[str, Any]:
        """What ``raw/``'s manifest would say of the day's rows (rows, fare and distance sums)."""
        if not self.parts:
            return {"rows": 0}
        return {
            "rows": self.rows,
            "fare_usd_sum": self._fare_usd,
            "distance_km_sum": self._distance_km,
        }

    def finish(self, clean_dir: Path, quarantine_dir: Path) -> None:
        """Settle the held rows and put every part into the stage folders.

        The scratch folder is left as it was (parts are linked, or copied across filesystems), so
        a retried transform can finish again; ``discard`` removes it.
        """
        for stage, folder in (("clean", clean_dir), ("quarantine", quarantine_dir)):
            for part in sorted((self.scratch / stage).glob("part-*.parquet")):
                _link(part, folder / part.name)
        held_files = sorted((self.scratch / "held").glob("part-*.parquet"))
        if not held_files:
            return
        held = pl.scan_parquet(held_files)
        repeated = held.select(_h=pl.col("trip_id").hash()).unique().collect()
        clean = pl.scan_parquet(sorted((self.scratch / "clean").glob("part-*.parquet")))
        # The transform stage's own rule over the held rows and the staged clean rows.
        on = list(LINEAGE)
        rows = pl.concat([clean.select("trip_id", *on), held.select("trip_id", *on)])
        repeats = later_duplicates(rows.with_columns(_VALID), repeated).collect()
        held_repeats = held.join(repeats.lazy(), on=on, how="semi")
        if held_repeats.select(pl.len()).collect().item() != repeats.height:
            raise RuntimeError(
                "streamed transform: a staged clean row repeats an earlier trip_id; the source's "
                "rows did not arrive in lineage order"
            )
        name = f"part-{self.parts:05d}.parquet"
        first = held.join(repeats.lazy(), on=on, how="anti")
        if first.select(pl.len()).collect().item():
            clean_trips(first.with_columns(_VALID), self.run_id).sink_parquet(
                clean_dir / name, **PARQUET_WRITE
            )
        if repeats.height:
            quarantined_trips(held_repeats.with_columns(_REPEAT), self.run_id).sink_parquet(
                quarantine_dir / name, **PARQUET_WRITE
            )

    def discard(self) -> None:
        """Remove the scratch folder."""
        self._remove()


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


#: The runs whose extract ran the transform in its pass, until their transform stage is done.
_HANDED_OVER: dict[str, StreamedTransform] = {}


def hand_over(streamed: StreamedTransform) -> None:
    """The extract is done: keep the run's streamed transform for its transform stage."""
    previous = _HANDED_OVER.pop(streamed.run_id, None)
    if previous is not None:
        previous.discard()
    _HANDED_OVER[streamed.run_id] = streamed


def handed_over(run_id: str, run_date: date) -> StreamedTransform | None:
    """The streamed transform the run's extract left in this process for ``run_date``, if any."""
    streamed = _HANDED_OVER.get(run_id)
    return streamed if streamed is not None and streamed.run_date == run_date else None


def done(run_id: str) -> None:
    """The transform stage staged the run's parts: drop its scratch."""
    streamed = _HANDED_OVER.pop(run_id, None)
    if streamed is not None:
        streamed.discard()
