"""Staging: where stages hand each other Parquet folders, each completed by a manifest.

The root is a local folder, ``s3://bucket/prefix`` or ``gs://bucket/prefix`` (``tasks.storage``).

Local layout: ``<root>/<stage>/date=YYYY-MM-DD/part-*.parquet`` plus ``_manifest.json`` (rows,
schema, per-file row counts, sizes and SHA-256, column checksums), written last. A folder without a
manifest, or whose files do not match it, is not done. A re-run writes into a temporary folder,
removes the old manifest first, then swaps the folders, so a reader never trusts a half-written or
half-replaced day.

Object storage has no atomic rename, so there the manifest is the commit point. Writers still
write into a local temporary folder (the pod's scratch); on success its parts are uploaded under a
prefix of their own, ``<stage>/date=D/run=<run_id>-<token>/part-*.parquet``, then
``<stage>/date=D/_manifest.json`` is written in one PUT (atomic: readers see the old manifest or the
new one) listing them, then the previous parts are deleted. A crash before the manifest's PUT
leaves the old day as it was (plus unlisted parts, removed by the next write; runs of one day take
turns, so no reader of the day is left reading deleted parts). A reader trusts only
the files its manifest lists, checks their sizes, and downloads them into local scratch (checking
their SHA-256) before Polars scans them: transform reads ``raw/`` several times, so one download
beats several remote scans (``bench/STORAGE.md``).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import polars as pl

from tasks.errors import InfrastructureError, UsageError
from tasks.storage import Location, filesystem, filesystem_for, is_remote, translated

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from tasks.config import Settings

MANIFEST: Final = "_manifest.json"
STAGES: Final = ("raw", "clean", "quarantine", "region_daily")
#: How every stage writes Parquet: zstd at level 1 (as small as level 3 on trips, ~25% faster).
PARQUET_WRITE: Final[dict[str, Any]] = {"compression": "zstd", "compression_level": 1}
#: How the synthetic and PostgreSQL sources write ``raw/``: uncompressed. Transform reads raw
#: several times, so zstd cost more CPU than it saved: 12.5-12.8 vs 14.1-14.7 CPU-s for extract
#: to validate on a 2M-trip synthetic day, for 2.2x the bytes (267 vs 119 MB; bench/README.md).
RAW_PARQUET_WRITE: Final[dict[str, Any]] = {"compression": "uncompressed"}
#: A source may leave this JSON file beside its parts (e.g. the Kafka offset ranges it read): it is
#: copied into the manifest's ``checksums`` as ``source_read``, so the run ledger keeps it too.
SOURCE_READ: Final = "_source_read.json"
#: Run records (small JSON a stage hands the next one): ``<root>/_runs/<run_id>/<name>.json``.
RUNS: Final = "_runs"
#: On object storage, a write's parts live under ``<stage>/date=D/run=<run_id>-<token>/``.
PARTS_PREFIX: Final = "run="
DOWNLOAD_CHUNK: Final = 8 << 20
#: How many parts a manifest hashes at once.
HASH_THREADS: Final = max(1, min(4, os.cpu_count() or 1))

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StagedDataset:
    """A completed staged folder, as its manifest describes it.

    ``files`` are local paths for a local root and ``s3://``/``gs://`` URLs for a remote one.
    """

    stage: str
    run_date: date
    folder: str
    files: tuple[str, ...]
    rows: int
    manifest: dict[str, Any]
    staging: Staging | None = field(default=None, compare=False, repr=False)

    def local_files(self) -> tuple[str, ...]:
        """Local paths of the files (remote ones downloaded into scratch first, once)."""
        if self.staging is None or not self.staging.remote:
            return self.files
        return self.staging.download(self)

    def scan(self, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
        """The staged rows (an empty frame of ``schema`` when the day has none)."""
        if not self.files:
            return pl.LazyFrame(schema=schema)
        return pl.scan_parquet(list(self.local_files()), hive_partitioning=False)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Staging:
    """A staging root: a local folder, or a bucket prefix on S3 or GCS behind the same methods."""

    def __init__(self, root: str, fs: AbstractFileSystem | None = None) -> None:
        self.remote = is_remote(root)
        self._root = Path(root)
        self.url = root
        self._location: Location | None = None
        self._fs: AbstractFileSystem | None = None
        if self.remote:
            self._location = Location.parse(root)
            self.url = self._location.url
            self._fs = fs if fs is not None else filesystem_for(root)

    @classmethod
    def from_settings(cls, settings: Settings) -> Staging:
        """The run's staging, with the filesystem and credentials its settings name."""
        if not is_remote(settings.staging):
            return cls(settings.staging)
        fs = filesystem(
            settings.staging, settings.staging_credentials_block, settings.staging_endpoint_url
        )
        return cls(settings.staging, fs)

    def __str__(self) -> str:
        return self.url

    @property
    def root(self) -> Path:
        """The local root folder (a local root only; a remote root is ``url``)."""
        if self.remote:
            raise UsageError(f"staging {self.url}: not a local folder")
        return self._root

    @property
    def location(self) -> Location:
        assert self._location is not None, "a local staging root has no location"
        return self._location

    @property
    def fs(self) -> AbstractFileSystem:
        assert self._fs is not None, "a local staging root has no filesystem"
        return self._fs

    def folder(self, stage: str, run_date: date) -> Path:
        """The day's local folder of ``stage`` (a local root only; see ``folder_url``)."""
        return self.root / stage / f"date={run_date.isoformat()}"

    def folder_url(self, stage: str, run_date: date) -> str:
        """Where the day's ``stage`` lives: a local path or an object-store URL."""
        if self.remote:
            return self.location.join(stage, f"date={run_date.isoformat()}")
        return str(self.folder(stage, run_date))

    @contextmanager
    def write(self, stage: str, run_date: date, run_id: str) -> Iterator[Path]:
        """Yield an empty local temporary folder; on success it replaces the day's folder.

        The caller writes ``part-*.parquet`` files there; the manifest is written here, last.
        On an exception the temporary folder is removed and the old day is left untouched.
        """
        if self.remote:
            with self._write_remote(stage, run_date, run_id) as tmp:
                yield tmp
            return
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
        manifest = _manifest(stage, run_date, run_id, tmp, "")
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

    @contextmanager
    def _write_remote(self, stage: str, run_date: date, run_id: str) -> Iterator[Path]:
        parts = f"{PARTS_PREFIX}{run_id}-{secrets.token_hex(4)}"
        cache = self._cache(stage, run_date)
        tmp = cache / f".tmp-{parts}"
        try:
            tmp.mkdir(parents=True)
        except OSError as exc:
            raise InfrastructureError(f"staging scratch {tmp}: cannot write: {exc}") from exc
        try:
            yield tmp
            self._commit(stage, run_date, run_id, tmp, parts)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # Keep the parts as the local copy of what was just staged: the next read needs no download.
        _prune(cache, keep=parts)
        try:
            tmp.rename(cache / parts)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # committed all the same: reads download

    def _commit(self, stage: str, run_date: date, run_id: str, tmp: Path, parts: str) -> None:
        """Upload the parts, PUT the manifest (the commit point), delete the previous parts."""
        folder = self.folder_url(stage, run_date)
        manifest = _manifest(stage, run_date, run_id, tmp, f"{parts}/")
        for entry in manifest["files"]:
            url = f"{folder}/{entry['name']}"
            with translated(url, "upload"):
                self.fs.put_file(str(tmp / Path(entry["name"]).name), url)
        body = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
        url = f"{folder}/{MANIFEST}"
        with translated(url, "write the manifest"):
            self.fs.pipe_file(url, body)
        # Committed. What is left is housekeeping: a failure here leaves unlisted parts only.
        try:
            with translated(folder, "list"):
                entries = self.fs.ls(folder, detail=False)
            for path in entries:
                name = str(path).rstrip("/").rsplit("/", 1)[-1]
                if name.startswith(PARTS_PREFIX) and name != parts:
                    with translated(f"{folder}/{name}", "delete"):
                        self.fs.rm(f"{folder}/{name}", recursive=True)
        except InfrastructureError as exc:
            log.warning("%s (the previous parts stay until the next write)", exc)

    def read(self, stage: str, run_date: date) -> StagedDataset:
        """The day's completed folder of ``stage``; raises when it is missing or incomplete."""
        if self.remote:
            return self._read_remote(stage, run_date)
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

    def _read_remote(self, stage: str, run_date: date) -> StagedDataset:
        folder = self.folder_url(stage, run_date)
        url = f"{folder}/{MANIFEST}"
        try:
            with translated(url, "read"):
                manifest = json.loads(self.fs.cat_file(url))
        except InfrastructureError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                raise InfrastructureError(
                    f"staging {folder}: no {MANIFEST}, "
                    f"so the {stage} stage of {run_date} is not complete"
                ) from exc
            raise
        with translated(folder, "list"):
            found = self.fs.find(folder, detail=True)
        sizes = {self.fs._strip_protocol(path): info["size"] for path, info in found.items()}
        files = []
        for entry in manifest["files"]:
            file = f"{folder}/{entry['name']}"
            if sizes.get(self.fs._strip_protocol(file)) != entry["bytes"]:
                raise InfrastructureError(
                    f"staging {file}: missing or not the size its manifest records"
                )
            files.append(file)
        return StagedDataset(
            stage, run_date, folder, tuple(files), int(manifest["rows"]), manifest, self
        )

    def download(self, dataset: StagedDataset) -> tuple[str, ...]:
        """Local copies of a remote dataset's files, checked against their manifest's SHA-256."""
        cache = self._cache(dataset.stage, dataset.run_date)
        local = []
        with _DOWNLOADING:
            for entry, url in zip(dataset.manifest["files"], dataset.files, strict=True):
                path = cache / entry["name"]
                if not (path.is_file() and path.stat().st_size == entry["bytes"]):
                    _prune(cache, keep=entry["name"].split("/", 1)[0])
                    self._download(url, path, entry["sha256"])
                local.append(str(path))
        return tuple(local)

    def _download(self, url: str, path: Path, sha256: str) -> None:
        partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        digest = hashlib.sha256()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with (
                translated(url, "download"),
                self.fs.open(url, "rb", block_size=DOWNLOAD_CHUNK) as remote,
                partial.open("wb") as handle,
            ):
                for block in iter(lambda: remote.read(DOWNLOAD_CHUNK), b""):
                    digest.update(block)
                    handle.write(block)
            if digest.hexdigest() != sha256:
                raise InfrastructureError(f"staging {url}: not the SHA-256 its manifest records")
            partial.rename(path)
        finally:
            partial.unlink(missing_ok=True)

    def sizes(self, run_date: date) -> int:
        """Bytes staged for a day, over every stage."""
        if self.remote:
            total = 0
            for stage in STAGES:
                folder = self.folder_url(stage, run_date)
                with translated(folder, "measure"):
                    total += sum(
                        int(info["size"])
                        for info in self.fs.find(folder, detail=True).values()
                        if info.get("type") == "file"
                    )
            return total
        return sum(
            p.stat().st_size
            for stage in STAGES
            for p in self.folder(stage, run_date).glob("*")
            if p.is_file()
        )

    def put_record(self, run_id: str, name: str, data: dict[str, Any]) -> None:
        """Store a small JSON record of the run (e.g. a stage's output for the next pod)."""
        body = json.dumps(data, indent=2, sort_keys=True, default=str).encode("utf-8")
        if self.remote:
            url = self._record_url(run_id, name)
            with translated(url, "write the record"):
                self.fs.pipe_file(url, body)
            return
        path = Path(self._record_url(run_id, name))
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(body)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise InfrastructureError(f"staging {path}: cannot write the record: {exc}") from exc

    def get_record(self, run_id: str, name: str) -> dict[str, Any]:
        """The run's record ``name``; raises ``InfrastructureError`` when there is none."""
        url = self._record_url(run_id, name)
        try:
            if self.remote:
                with translated(url, "read the record"):
                    body = self.fs.cat_file(url)
            else:
                body = Path(url).read_bytes()
        except (InfrastructureError, FileNotFoundError) as exc:
            cause = exc.__cause__ if isinstance(exc, InfrastructureError) else exc
            if isinstance(cause, FileNotFoundError):
                raise InfrastructureError(f"staging {url}: no such run record") from exc
            raise
        except OSError as exc:
            raise InfrastructureError(f"staging {url}: cannot read the record: {exc}") from exc
        data = json.loads(body)
        if not isinstance(data, dict):
            raise InfrastructureError(f"staging {url}: the record is not a JSON object")
        return data

    def _record_url(self, run_id: str, name: str) -> str:
        for part in (run_id, name):
            if not part or part.startswith(".") or any(c in part for c in "/\\"):
                raise UsageError(f"run record {run_id!r}/{name!r}: not a plain name")
        if self.remote:
            return self.location.join(RUNS, run_id, f"{name}.json")
        return str(self.root / RUNS / run_id / f"{name}.json")

    def _cache(self, stage: str, run_date: date) -> Path:
        """This root's local scratch copy of a staged day (a remote root only)."""
        key = hashlib.sha256(self.url.encode("utf-8")).hexdigest()[:12]
        return _scratch() / key / stage / f"date={run_date.isoformat()}"


def _manifest(stage: str, run_date: date, run_id: str, tmp: Path, prefix: str) -> dict[str, Any]:
    """The manifest of the parts in ``tmp`` (their names in it prefixed by ``prefix``)."""
    files = sorted(tmp.glob("*.parquet"))
    entries = []
    total = 0
    schema: dict[str, str] = {}
    # hashlib releases the GIL: the parts are hashed side by side (an 8M-trip raw day is ~1 GB,
    # ~0.7 s hashed one after the other here).
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        digests = list(pool.map(_sha256, files))
    for path, digest in zip(files, digests, strict=True):
        meta = pl.read_parquet_schema(path)
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
        schema = {name: str(dtype) for name, dtype in meta.items()}
        total += rows
        entries.append(
            {
                "name": prefix + path.name,
                "rows": rows,
                "bytes": path.stat().st_size,
                "sha256": digest,
            }
        )
    return {
        "stage": stage,
        "run_date": run_date.isoformat(),
        "run_id": run_id,
        "rows": total,
        "schema": schema,
        "files": entries,
        "checksums": _checksums(files) | _source_read(tmp),
        "written_at": datetime.now(UTC).isoformat(),
    }


_DOWNLOADING = threading.Lock()
_SCRATCH: list[Path] = []


def _scratch() -> Path:
    """This process's local scratch for remote staging (under ``TMPDIR``: a pod's emptyDir),
    removed when the process exits."""
    if not _SCRATCH:
        path = Path(tempfile.mkdtemp(prefix="tripflow-staging-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _SCRATCH.append(path)
    return _SCRATCH[0]


def _prune(cache: Path, keep: str) -> None:
    """Drop local copies of a staged day's other writes (one copy per stage and day)."""
    if not cache.is_dir():
        return
    for child in cache.iterdir():
        if child.name.startswith(PARTS_PREFIX) and child.name != keep:
            shutil.rmtree(child, ignore_errors=True)


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
