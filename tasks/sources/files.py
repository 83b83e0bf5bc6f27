"""Files (CSV or Parquet, a path or a glob) read through a declared source format.

Each file is checked before anything is written: its required columns must be there and every
declared column must read as its kind; otherwise a ``SchemaError`` names the file, the column and
the first bad row (1-based, not counting the header) and describes the bad value without quoting it
(its length, shape and keyed fingerprint: ``tasks.errors.describe_value``).
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Callable
from datetime import date
from importlib import resources
from pathlib import Path

import polars as pl

from tasks.errors import SchemaError, UsageError, describe_value, library_message
from tasks.formats import TRIPS, FormatContext, SourceFormat, schema_probe, type_columns
from tasks.metrics import rows_done
from tasks.sources.base import EMPTY_STATS, ExtractStats, HashEmail
from tasks.staging import PARQUET_WRITE
from tasks.transforms import day_attribution, to_raw, value_fingerprint

DATA = resources.files("tasks") / "data"


def reference_table(name: str) -> pl.LazyFrame:
    """A package-data CSV (public reference data shipped with tripflow) as a LazyFrame."""
    return pl.read_csv(DATA.joinpath(name).read_bytes(), infer_schema=False).lazy()


def _scan(path: str) -> pl.LazyFrame:
    lower = path.lower()
    if os.path.getsize(path) == 0:
        raise SchemaError("the file is empty (0 bytes)", file=path)
    if lower.endswith(".parquet") or lower.endswith(".pq"):
        try:
            return pl.scan_parquet(path).with_row_index("_source_row", offset=1)
        except pl.exceptions.PolarsError as exc:
            raise SchemaError(
                f"not a readable Parquet file: {library_message(exc)}", file=path
            ) from exc
    return pl.scan_csv(
        path,
        infer_schema=False,
        encoding="utf8-lossy",
        raise_if_empty=True,
    ).with_row_index("_source_row", offset=1)


class FileSource:
    def __init__(
        self,
        pattern: str,
        fmt: SourceFormat,
        *,
        default_timezone: str,
        region_set: frozenset[str] | None,
        display: str | None = None,
    ) -> None:
        self.pattern = pattern
        self.format = fmt
        self.timezone = fmt.timezone or default_timezone
        self.region_set = fmt.region_set if fmt.region_set is not None else region_set
        self.description = display or f"file:{pattern} (format {fmt.name})"

    def paths(self) -> list[str]:
        matches = sorted(p for p in glob.glob(self.pattern) if os.path.isfile(p))
        if not matches:
            raise UsageError(f"--source file:{self.pattern}: no file matches")
        return matches

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.format.name.encode())
        for path in self.paths():
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        return digest.hexdigest()[:16]

    def contract_frame(
        self, path: str, fingerprint: Callable[[str], str] | None = None
    ) -> pl.LazyFrame:
        """Check one file against the format and map it onto the contract (lazily).

        A bad value is described, never quoted; ``fingerprint`` (the run's keyed hash) adds a
        fingerprint of it to the description.
        """
        try:
            lf = _scan(path)
            file_columns = [c for c in lf.collect_schema().names() if c != "_source_row"]
        except pl.exceptions.NoDataError as exc:
            raise SchemaError("the file is empty (0 bytes)", file=path) from exc
        except pl.exceptions.PolarsError as exc:
            raise SchemaError(f"cannot read the file: {library_message(exc)}", file=path) from exc
        renames = self.format.resolve(file_columns)
        missing = self.format.missing_required(set(renames.values()))
        if missing:
            raise SchemaError("a required column is missing", file=path, column=missing[0])
        lf = lf.select("_source_row", *renames).rename(renames)
        schema = lf.collect_schema()
        for name, dtype in schema.items():
            if dtype.is_nested() or dtype == pl.Object:  # a Parquet list or struct: no cell fits
                raise SchemaError(
                    f"the column holds {dtype.base_type()} values, not single values",
                    file=path,
                    column=_original(renames, name),
                )
        try:
            probe = schema_probe(lf, self.format, schema, self.timezone).collect()
        except pl.exceptions.PolarsError as exc:
            raise SchemaError(
                f"cannot read the file: {library_message(exc, keep=file_columns)}", file=path
            ) from exc
        if lf.select(pl.len()).collect().item() == 0:
            raise SchemaError("the file has a header but no rows", file=path)
        for spec in self.format.columns:
            row_col = f"{spec.name}__row"
            if row_col in probe.columns and probe[row_col][0] is not None:
                raise SchemaError(
                    f"a value cannot be read as {spec.kind}",
                    file=path,
                    column=_original(renames, spec.name),
                    row=int(probe[row_col][0]),
                    value=describe_value(probe[f"{spec.name}__value"][0], fingerprint),
                )
        typed = type_columns(lf, self.format, schema, self.timezone)
        refs = {name: reference_table(name) for name in self.format.references}
        return self.format.to_contract(typed, FormatContext(self.timezone, refs))

    def extract(self, run_date: date, out_dir: Path, hash_email: HashEmail) -> ExtractStats:
        # Check every file before writing any, so a bad file stages nothing.
        paths = self.paths()
        fingerprint = value_fingerprint(hash_email)
        frames = [(path, self.contract_frame(path, fingerprint)) for path in paths]
        stats = EMPTY_STATS
        for index, (path, contract) in enumerate(frames):
            counts = day_attribution(contract, run_date).collect().row(0, named=True)
            stats = stats + ExtractStats(
                counts["total"], counts["on_day"], counts["other_days"], counts["unattributed"], 1
            )
            if counts["on_day"]:
                try:
                    to_raw(contract, run_date, path, hash_email).sink_parquet(
                        out_dir / f"part-{index:05d}.parquet", **PARQUET_WRITE
                    )
                except pl.exceptions.PolarsError as exc:
                    raise _unreadable(path, exc) from exc
                rows_done("extract", counts["on_day"])
        return stats


def _unreadable(path: str, exc: pl.exceptions.PolarsError) -> SchemaError:
    """A file the reader refuses only once every column is read: a CSV row with more fields than
    the header (a misaligned row) passes the checks, which read fewer columns, and fails here.
    The reader names no row; its message quotes no value."""
    if "more fields than defined" in str(exc):
        return SchemaError("a row has more fields than the header (a misaligned row)", file=path)
    return SchemaError(f"cannot read the file: {library_message(exc)}", file=path)


def _original(renames: dict[str, str], name: str) -> str:
    return next((orig for orig, new in renames.items() if new == name), name)


def sample_source(region_set: frozenset[str] | None) -> FileSource:
    """Exactly the 10 trips of the seed's hands-on ConfigMap, all on 2025-11-15."""
    path = str(DATA.joinpath("sample_trips.csv"))
    return FileSource(
        path,
        TRIPS,
        default_timezone="UTC",
        region_set=region_set,
        display="sample (seed ConfigMap)",
    )
