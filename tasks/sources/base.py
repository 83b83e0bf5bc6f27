"""The one small interface every source implements.

A source writes the run's day of trips into a folder as raw Parquet parts (contract columns, PII
already hashed, lineage) and says what it read. It never sees the warehouse or Prefect.

A ``StreamingSource`` also hands its parts, one at a time and in lineage order, to any
``PartWriter``: where the extract and the transform share a process, the transform takes each part
as it comes (``tasks.streamed_transform``) instead of reading ``raw/`` back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Protocol, runtime_checkable

import polars as pl

from tasks.staging import RAW_PARQUET_WRITE

HashEmail = Callable[[pl.Series], pl.Series]
#: Takes part number ``part`` of the day's raw rows (a frame of ``RAW_SCHEMA``).
PartWriter = Callable[[pl.LazyFrame, int], None]


def raw_part_writer(out_dir: Path) -> PartWriter:
    """Writes each part into ``out_dir`` as ``part-NNNNN.parquet``: how ``raw/`` is staged."""

    def write(raw: pl.LazyFrame, part: int) -> None:
        raw.sink_parquet(out_dir / f"part-{part:05d}.parquet", **RAW_PARQUET_WRITE)

    return write


@dataclass(frozen=True)
class ExtractStats:
    """What a source read: all rows, the run's day, other days, rows whose day is unknown."""

    total: int
    on_day: int
    other_days: int
    unattributed: int
    files: int

    def __add__(self, other: ExtractStats) -> ExtractStats:
        return ExtractStats(
            self.total + other.total,
            self.on_day + other.on_day,
            self.other_days + other.other_days,
            self.unattributed + other.unattributed,
            self.files + other.files,
        )


EMPTY_STATS = ExtractStats(0, 0, 0, 0, 0)


class Source(Protocol):
    #: Shown in logs and the run ledger; never holds a secret.
    description: str
    #: The timezone a trip's business day is read in.
    timezone: str
    #: Regions the source can produce; None means any non-empty region.
    region_set: frozenset[str] | None

    def fingerprint(self) -> str:
        """Identifies what was read (file names, sizes and times; generator parameters)."""
        ...

    def extract(self, run_date: date, out_dir: Path, hash_email: HashEmail) -> ExtractStats:
        """Write the day's raw Parquet parts (``part-*.parquet``) into ``out_dir``."""
        ...


@runtime_checkable
class StreamingSource(Source, Protocol):
    """A source whose parts come one at a time, their rows in lineage order (``_source_file``,
    then ``_source_row``, rising): the order ``later_duplicates`` decides which repeat is first."""

    def extract_parts(
        self, run_date: date, hash_email: HashEmail, write_part: PartWriter
    ) -> ExtractStats:
        """Hand the day's raw parts to ``write_part``, numbered from 0, in lineage order."""
        ...
