"""Staging: where stages hand each other Parquet folders, each completed by a manifest.

Layout: ``<root>/<stage>/date=YYYY-MM-DD/part-*.parquet`` plus ``_manifest.json`` (rows, schema,
per-file row counts, sizes and SHA-256, column checksums), written last. A folder without a
manifest, or whose files do not match it, is not done. A re-run writes into a temporary folder,
removes the old manifest first, then swaps the folders, so a reader never trusts a half-written or
half-replaced day.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import polars as pl

from tasks.errors import InfrastructureError

MANIFEST: Final = "_manifest.json"
STAGES: Final = ("raw", "clean", "quarantine", "region_daily")
#: How every stage writes Parquet: zstd at level 1 (as small as level 3 on trips, ~25% faster).
PARQUET_WRITE: Final[dict[str, Any]] = {"compression": "zstd", "compression_level": 1}
#: A source may leave this JSON file beside its parts (e.g. the Kafka offset ranges it read): it is
#: copied into the manifest's ``checksums`` as ``source_read``, so the run ledger keeps it too.
SOURCE_READ: Final = "_source_read.json"


@dataclass(frozen=True)
class StagedDataset:
    """A completed staged folder, as its manifest describes it."""

    stage: str
    run_date: date
    folder: str
    files: tuple[str, ...]
    rows: int
    manifest: dict[str, Any]

    def scan(self, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
        """The staged rows (an empty frame of ``schema`` when the day has none)."""
        if not self.files:
            return pl.LazyFrame(schema=schema)
        return pl.scan_parquet(list(self.files), hive_partitioning=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Staging:
    """A local staging folder (object stores plug in behind the same methods)."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def __str__(self) -> str:
        return str(self.root)

    def folder(self, stage: str, run_date: date) -> Path:
        return self.root / stage / f"date={run_date.isoformat()}"

    @contextmanager
    def write(self, stage: str, run_date: date, run_id: str) -> Iterator[Path]:
        """Yield an empty temporary folder; on success it replaces the day's folder atomically.

        The caller writes ``part-*.parquet`` files there; the manifest is written here, last.
        On an exception the temporary folder is removed and the old day is left untouched.
        """
        final = self.folder(stage, run_date)
        parent = final.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            for leftover in parent.glob(f".*-{final.name}-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            tmp = parent / f".tmp-{final.name}-{run_id}"
            tmp.mkdir()
        except OSError as exc:
            raise InfrastructureError(f"staging {parent}: cannot write: {exc}") from exc
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            self._finish(stage, run_date, run_id, tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise InfrastructureError(f"staging {final}: cannot complete: {exc}") from exc

    def _finish(self, stage: str, run_date: date, run_id: str, tmp: Path, final: Path) -> None:
        files = sorted(tmp.glob("*.parquet"))
        entries = []
        total = 0
        schema: dict[str, str] = {}
        for path in files:
            meta = pl.read_parquet_schema(path)
            rows = pl.scan_parquet(path).select(pl.len()).collect().item()
            schema = {name: str(dtype) for name, dtype in meta.items()}
            total += rows
            entries.append(
                {
                    "name": path.name,
                    "rows": rows,
                    "bytes": path.stat().st_size,
                    "sha256": _sha256(path),
                }
            )
        manifest = {
            "stage": stage,
            "run_date": run_date.isoformat(),
            "run_id": run_id,
            "rows": total,
            "schema": schema,
            "files": entries,
            "checksums": _checksums(files) | _source_read(tmp),
            "written_at": datetime.now(UTC).isoformat(),
        }
        with (tmp / MANIFEST).open("w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        old = final.parent / f".old-{final.name}-{run_id}"
        if final.exists():
            (final / MANIFEST).unlink(missing_ok=True)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def read(self, stage: str, run_date: date) -> StagedDataset:
        """The day's completed folder of ``stage``; raises when it is missing or incomplete."""
        folder = self.folder(stage, run_date)
        path = folder / MANIFEST
        if not path.is_file():
            raise InfrastructureError(
                f"staging {folder}: no {MANIFEST}, "
                f"so the {stage} stage of {run_date} is not complete"
            )
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = []
        for entry in manifest["files"]:
            file = folder / entry["name"]
            if not file.is_file() or file.stat().st_size != entry["bytes"]:
                raise InfrastructureError(
                    f"staging {file}: missing or not the size its manifest records"
                )
            files.append(str(file))
        return StagedDataset(
            stage, run_date, str(folder), tuple(files), int(manifest["rows"]), manifest
        )

    def sizes(self, run_date: date) -> int:
        """Bytes staged for a day, over every stage."""
        return sum(
            p.stat().st_size
            for stage in STAGES
            for p in self.folder(stage, run_date).glob("*")
            if p.is_file()
        )


def _source_read(folder: Path) -> dict[str, Any]:
    record = folder / SOURCE_READ
    if not record.is_file():
        return {}
    return {"source_read": json.loads(record.read_text(encoding="utf-8"))}


def _checksums(files: list[Path]) -> dict[str, Any]:
    """Row count and sums of money (exact, as text) and distance, to reconcile in the warehouse."""
    if not files:
        return {"rows": 0}
    lf = pl.scan_parquet([str(f) for f in files])
    schema = lf.collect_schema()
    exprs = [pl.len().alias("rows")]
    for col, alias in (
        ("fare_usd", "fare_usd_sum"),
        ("total_fare_usd", "fare_usd_sum"),
        ("distance_km", "distance_km_sum"),
        ("trip_count", "trip_count_sum"),
    ):
        if col not in schema:
            continue
        if isinstance(schema[col], pl.Decimal):
            exprs.append(pl.col(col).sum().cast(pl.String).alias(alias))
        else:
            exprs.append(pl.col(col).sum().alias(alias))
    return lf.select(exprs).collect().row(0, named=True)
