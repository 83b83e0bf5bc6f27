"""The one small interface every source implements.

A source writes the run's day of trips into a folder as raw Parquet parts (contract columns, PII
already hashed, lineage) and says what it read. It never sees the warehouse or Prefect.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Protocol

import polars as pl

HashEmail = Callable[[pl.Series], pl.Series]


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
