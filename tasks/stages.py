"""The pipeline's stages as plain functions: each takes the run's context and staging paths.

extract -> ``raw/``; transform ``raw/`` -> ``clean/``, ``quarantine/``, ``region_daily/``;
load those into the run's own warehouse staging tables; validate there; publish the day.
Each stage reads what the one before staged (never an in-memory frame), so any stage can run in
its own process or pod and be retried alone. The one exception is asked for by a caller that runs
every stage in one process (``extract(ctx, transform_in_pass=True)``, ``tripflow run``): then the
extract applies the transform to each part as it reads it and ``raw/`` is not staged
(``tasks.streamed_transform``). Prefect wrappers live in ``tasks.stage_tasks``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import polars as pl

from tasks import streamed_transform
from tasks.checks import CheckResult, run_checks
from tasks.config import Settings, key_fingerprint, pii_key
from tasks.contract import (
    CLEAN_SCHEMA,
    QUARANTINE_SCHEMA,
    RAW_SCHEMA,
    REASONS,
    REGION_DAILY_SCHEMA,
)
from tasks.errors import InfrastructureError
from tasks.faults import barrier_point, kill_point
from tasks.metrics import rows_done
from tasks.sources import make_source
from tasks.sources.base import StreamingSource
from tasks.staging import PARQUET_WRITE, StagedDataset, Staging
from tasks.transforms import (
    WARNINGS,
    CountingHasher,
    EmailHasher,
    classified_rows,
    clean_trips,
    later_duplicates,
    passing_rules,
    quarantined_trips,
    reason_counts,
    region_daily_and_warnings,
    repeated_id_hashes,
)
from tasks.warehouses import LedgerRow, LoadResult, StagedFiles, Usage, Warehouse, make_warehouse

QUARANTINE_EXAMPLES = 5
#: The most rows whose trip_id hashes are sorted at once to find repeats (~8 bytes each): a larger
#: day is done in buckets of about this many, so the transform's peak does not grow with the day.
REPEATED_ID_BUCKET_ROWS = 8_000_000


@dataclass(frozen=True)
class RunContext:
    """Who the run is: its id, its day and its settings (with no secret in them)."""

    run_id: str
    run_date: date
    settings: Settings

    @classmethod
    def create(cls, run_id: str, run_date: date, settings: Settings) -> RunContext:
        return cls(run_id, run_date, replace(settings, pii_key=None))

    @property
    def staging(self) -> Staging:
        return Staging.from_settings(self.settings)


@dataclass(frozen=True)
class ExtractOutput:
    #: The staged ``raw/`` folder; empty when the transform ran in the extract's pass.
    raw: str
    rows: int
    total_read: int
    other_days: int
    unattributed: int
    files_read: int
    source: str
    source_fingerprint: str
    pii_key_fingerprint: str
    checksums: dict[str, Any]
    #: What a record-oriented source says it read (e.g. Kafka offset ranges, late events).
    source_read: dict[str, Any] = field(default_factory=dict)
    #: E-mail-shaped values found (and hashed) in text columns other than ``rider_email``.
    email_shaped_values: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TransformOutput:
    clean: str
    quarantine: str
    region_daily: str
    rows_clean: int
    rows_quarantined: int
    reasons: dict[str, int]
    examples: list[dict[str, Any]]
    warnings: dict[str, int]
    checksums: dict[str, dict[str, Any]] = field(default_factory=dict)


def extract(ctx: RunContext, *, transform_in_pass: bool = False) -> ExtractOutput:
    """Read the day from the source into ``raw/`` (PII hashed before anything is written).

    ``transform_in_pass``: the caller runs the transform stage next, in this process; a
    ``StreamingSource`` then hands each part to the transform as it is read, and ``raw/`` is not
    staged unless the ``keep_raw`` setting asks for it.
    """
    source = make_source(ctx.settings)
    key = pii_key(ctx.settings)
    hasher = CountingHasher(EmailHasher(key))
    if transform_in_pass and not ctx.settings.keep_raw and isinstance(source, StreamingSource):
        staging = ctx.staging
        scratch_in = None if staging.remote else staging.root / streamed_transform.SCRATCH
        streamed = streamed_transform.StreamedTransform(
            ctx.run_id, ctx.run_date, source.region_set, scratch_in
        )
        try:
            stats = source.extract_parts(ctx.run_date, hasher, streamed.write_part)
            kill_point("extract")  # parts transformed into scratch, nothing staged yet
            barrier_point("extract")
        except BaseException:
            streamed.discard()
            raise
        streamed_transform.hand_over(streamed)
        folder, rows, checksums = "", streamed.rows, streamed.raw_checksums()
    else:
        with ctx.staging.write("raw", ctx.run_date, ctx.run_id) as out_dir:
            stats = source.extract(ctx.run_date, out_dir, hasher)
            kill_point("extract")  # parts written, manifest not yet
            barrier_point("extract")  # tests/cluster/test_fault_deadlines.py holds the stage here
        raw = ctx.staging.read("raw", ctx.run_date)
        folder, rows, checksums = raw.folder, raw.rows, raw.manifest["checksums"]
    return ExtractOutput(
        raw=folder,
        rows=rows,
        total_read=stats.total,
        other_days=stats.other_days,
        unattributed=stats.unattributed,
        files_read=stats.files,
        source=source.description,
        source_fingerprint=source.fingerprint(),
        pii_key_fingerprint=key_fingerprint(key),
        checksums=checksums,
        source_read=checksums.get("source_read") or {},
        email_shaped_values=dict(hasher.email_shaped),
    )


def transform(ctx: RunContext) -> TransformOutput:
    """Apply the contract's rules to ``raw/``; stage clean trips, quarantine and region totals.

    When this run's extract applied them in its pass (``extract(ctx, transform_in_pass=True)``),
    its parts are staged instead, with its held rows settled.
    """
    staging = ctx.staging
    streamed = streamed_transform.handed_over(ctx.run_id, ctx.run_date)
    if streamed is None:
        _transform_raw(ctx)
    else:
        with (
            staging.write("clean", ctx.run_date, ctx.run_id) as clean_dir,
            staging.write("quarantine", ctx.run_date, ctx.run_id) as quarantine_dir,
        ):
            streamed.finish(clean_dir, quarantine_dir)
        streamed_transform.done(ctx.run_id)
    clean = staging.read("clean", ctx.run_date)
    quarantine = staging.read("quarantine", ctx.run_date)
    rows_done("transform", clean.rows + quarantine.rows)
    kill_point("transform")  # clean and quarantine replaced, region_daily not yet
    barrier_point("transform")  # tests/cluster/test_fault_daily_killed.py holds the stage here
    per_region = region_daily_and_warnings(clean.scan(CLEAN_SCHEMA)).collect()  # a row a region
    with staging.write("region_daily", ctx.run_date, ctx.run_id) as region_dir:
        per_region.select(REGION_DAILY_SCHEMA.keys()).write_parquet(
            region_dir / "part-00000.parquet", **PARQUET_WRITE
        )
    regions = staging.read("region_daily", ctx.run_date)
    q = quarantine.scan(QUARANTINE_SCHEMA)
    counts = reason_counts(q, REASONS).collect().row(0, named=True)
    examples = q.head(QUARANTINE_EXAMPLES).collect().to_dicts()
    warnings = per_region.select(pl.col(WARNINGS).sum()).row(0, named=True)
    return TransformOutput(
        clean=clean.folder,
        quarantine=quarantine.folder,
        region_daily=regions.folder,
        rows_clean=clean.rows,
        rows_quarantined=quarantine.rows,
        reasons={reason: int(counts[reason] or 0) for reason in REASONS},
        examples=[_jsonable(e) for e in examples],
        warnings={k: int(v or 0) for k, v in warnings.items()},
        checksums={d.stage: d.manifest["checksums"] for d in (clean, quarantine, regions)},
    )


def _transform_raw(ctx: RunContext) -> None:
    """Stage ``clean/`` and ``quarantine/`` from the run's staged ``raw/``."""
    staging = ctx.staging
    raw = staging.read("raw", ctx.run_date)
    region_set = make_source(ctx.settings).region_set
    rows = raw.scan(RAW_SCHEMA)
    # The repeated trip_ids are few: find them in small passes over the rows that pass the rules,
    # then stream every row past them, writing clean and quarantine one after the other (one
    # pass each keeps memory flat; one scan feeding both sinks through ``pl.collect_all`` peaked
    # 300 MB higher and ran slower).
    passing = passing_rules(rows, region_set)
    buckets = max(1, -(-raw.rows // REPEATED_ID_BUCKET_ROWS))
    repeated = pl.concat([repeated_id_hashes(rows, buckets, b).collect() for b in range(buckets)])
    later = later_duplicates(passing, repeated).collect()
    with (
        staging.write("clean", ctx.run_date, ctx.run_id) as clean_dir,
        staging.write("quarantine", ctx.run_date, ctx.run_id) as quarantine_dir,
    ):
        clean_trips(classified_rows(rows, region_set, later, valid=True), ctx.run_id).sink_parquet(
            clean_dir / "part-00000.parquet", **PARQUET_WRITE
        )
        quarantined_trips(
            classified_rows(rows, region_set, later, valid=False), ctx.run_id
        ).sink_parquet(quarantine_dir / "part-00000.parquet", **PARQUET_WRITE)


def _transformed(ctx: RunContext) -> tuple[StagedDataset, StagedDataset, StagedDataset]:
    """The day's three transform outputs, which must come from one transform run."""
    staged = tuple(
        ctx.staging.read(stage, ctx.run_date) for stage in ("clean", "quarantine", "region_daily")
    )
    run_ids = {d.manifest["run_id"] for d in staged}
    if len(run_ids) != 1:
        raise InfrastructureError(
            f"staging for {ctx.run_date}: clean, quarantine and region_daily come from different "
            "transform runs; run the transform stage again"
        )
    clean, quarantine, regions = staged
    return clean, quarantine, regions


@contextmanager
def _warehouse(ctx: RunContext, usage: Usage | None) -> Iterator[Warehouse]:
    """The run's warehouse; what its queries processed and billed is added to ``usage``."""
    warehouse = make_warehouse(ctx.settings.warehouse)
    try:
        yield warehouse
    finally:
        if usage is not None:
            spent = warehouse.usage()
            usage.add(spent.bytes_processed, spent.bytes_billed)


def load(ctx: RunContext, usage: Usage | None = None) -> LoadResult:
    """Bulk-load the staged day into this run's own warehouse staging tables."""
    clean, quarantine, regions = _transformed(ctx)
    with _warehouse(ctx, usage) as warehouse:
        loaded = warehouse.load(
            ctx.run_date,
            ctx.run_id,
            StagedFiles(trips=clean.files, quarantine=quarantine.files, region_daily=regions.files),
        )
    rows_done("load", loaded.rows + loaded.quarantine_rows)
    return loaded


def validate(
    ctx: RunContext,
    extracted: int,
    quarantined: int,
    loaded: LoadResult,
    usage: Usage | None = None,
) -> list[CheckResult]:
    """Run every check against this run's staging tables (nothing is published here)."""
    clean, _, _ = _transformed(ctx)
    with _warehouse(ctx, usage) as warehouse:
        figures = warehouse.figures(ctx.run_date, loaded)
    kill_point("validate")
    staged_sum = clean.manifest["checksums"].get("fare_usd_sum") or "0"
    return run_checks(
        figures,
        min_rows=ctx.settings.min_rows,
        extracted=extracted,
        quarantined=quarantined,
        threshold=ctx.settings.quarantine_threshold,
        staged_rows=clean.rows,
        staged_fare_usd_sum=Decimal(staged_sum),
    )


def publish(
    ctx: RunContext, loaded: LoadResult, ledger: LedgerRow, usage: Usage | None = None
) -> int:
    """Replace the day in the published tables and write the ledger row, in one transaction."""
    barrier_point("publish")
    with _warehouse(ctx, usage) as warehouse:
        warehouse.publish(ctx.run_date, loaded, ledger)
        return warehouse.published_rows(ctx.run_date)


def record_run(ctx: RunContext, ledger: LedgerRow) -> None:
    """Write the ledger row of a run that did not publish."""
    make_warehouse(ctx.settings.warehouse).record_run(ledger)


def code_version() -> str:
    try:
        return f"tripflow {version('tripflow')}"
    except PackageNotFoundError:
        return "tripflow (not installed)"


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        elif isinstance(value, list):
            out[key] = [str(v) for v in value]
        else:
            out[key] = str(value)
    return out
