"""The one small interface every warehouse implements: write, audit, publish.

1. ``ensure_tables`` creates the published tables and the run ledger if missing.
2. ``load`` bulk-loads the day's staged Parquet into staging tables of this run's own.
3. ``figures`` measures those staging tables (and the published history) for the checks.
4. ``publish`` replaces the day in every published table and writes the ledger row, atomically.
5. ``record_run`` writes a ledger row for a run that did not publish.
6. ``recent_runs`` reads the ledger back (for ``tripflow report``).
7. ``usage`` reports the bytes this object's queries processed and were billed for.

``StagedFiles`` holds URIs: local paths, ``s3://`` or ``gs://``. A cloud warehouse reads them with
its own bulk path (BigQuery load job, Redshift COPY, Snowflake COPY INTO), never row by row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Protocol

from tasks.errors import UsageError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def identifier(name: str) -> str:
    """A validated SQL identifier (configuration never reaches SQL unchecked)."""
    if not _IDENTIFIER.match(name):
        raise UsageError(f"not a safe SQL identifier: {name!r}")
    return name


def staging_suffix(run_date: date, run_id: str) -> str:
    """``YYYYMMDD_<run>``: every run gets its own staging tables."""
    suffix = f"{run_date:%Y%m%d}_{run_id.replace('-', '')[:12]}"
    identifier("t_" + suffix)
    return suffix


@dataclass(frozen=True)
class StagedFiles:
    """The staged Parquet files a load reads (one list per published table)."""

    trips: Sequence[str]
    quarantine: Sequence[str]
    region_daily: Sequence[str]


@dataclass(frozen=True)
class LoadResult:
    """Names of this run's staging tables and what was loaded into them."""

    suffix: str
    rows: int
    quarantine_rows: int
    region_rows: int


@dataclass(frozen=True)
class Figures:
    """What the checks need to know, measured in the warehouse."""

    rows: int
    fare_usd_sum: Decimal
    duplicate_trip_ids: int
    region_mismatches: list[str]
    #: Rows published on each of the days D-7 .. D-1 that have a published run.
    history: Mapping[date, int] = field(default_factory=dict)


@dataclass(frozen=True)
class LedgerRow:
    run_id: str
    run_date: date
    status: str
    source: str
    source_fingerprint: str
    format: str
    code_version: str
    pii_key_fingerprint: str
    rows_extracted: int
    rows_quarantined: int
    rows_loaded: int
    stages: dict[str, Any]
    checks: list[dict[str, Any]]
    error: str | None
    started_at: str
    finished_at: str

    def finished_now(self) -> LedgerRow:
        """This row stamped finished now. A publish stamps its row once it is about to commit
        (DuckDB: holding the file's writer lock), so the day's latest ``finished_at`` is the run
        whose version of the day the tables hold, even when two runs' publishes queue up."""
        return replace(self, finished_at=datetime.now(UTC).isoformat())


@dataclass
class Usage:
    """Bytes processed and billed by a warehouse's queries (None where it reports none)."""

    bytes_processed: int | None = None
    bytes_billed: int | None = None

    def add(self, processed: int | None, billed: int | None) -> None:
        if processed is not None:
            self.bytes_processed = (self.bytes_processed or 0) + processed
        if billed is not None:
            self.bytes_billed = (self.bytes_billed or 0) + billed


class Warehouse(Protocol):
    description: str

    def ensure_tables(self) -> None: ...

    def load(self, run_date: date, run_id: str, files: StagedFiles) -> LoadResult: ...

    def figures(self, run_date: date, load: LoadResult) -> Figures: ...

    def publish(self, run_date: date, load: LoadResult, ledger: LedgerRow) -> None: ...

    def record_run(self, ledger: LedgerRow) -> None: ...

    def published_rows(self, run_date: date) -> int: ...

    def recent_runs(self, limit: int) -> list[dict[str, Any]]:
        """The ledger's latest ``limit`` runs, newest first (stages and checks decoded)."""
        ...

    def usage(self) -> Usage:
        """What this object's queries processed and were billed for so far."""
        ...
