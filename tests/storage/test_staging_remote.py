"""Staging on object storage, against each stand-in: moto's S3 server (for Amazon S3) and
fake-gcs-server (for Google Cloud Storage), see ``conftest``, ``s3stand`` and ``gcsstand``.

The staging code talks to the stand-ins through s3fs and gcsfs exactly as it would to the clouds;
the tests look at the buckets through independent clients (boto3, google-cloud-storage). One fault
is injected on purpose: a filesystem wrapper (``Recording(fail_on=...)``) that refuses the
manifest's PUT, standing in for a crash between the parts' upload and the commit point.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from gcsstand import GCS
from stores import Store

from tasks.errors import InfrastructureError, UsageError
from tasks.staging import MANIFEST, Staging, _scratch
from tasks.storage import Location, filesystem, filesystem_for, redact

DAY = date(2025, 11, 15)


class Recording:
    """The real s3fs/gcsfs filesystem, with the order of its writes noted down."""

    def __init__(self, fs: Any, fail_on: str | None = None) -> None:
        self._fs = fs
        self.writes: list[str] = []
        self.fail_on = fail_on

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fs, name)

    def put_file(self, local: str, url: str, **kwargs: Any) -> None:
        self.writes.append(url)
        self._fs.put_file(local, url, **kwargs)

    def pipe_file(self, url: str, body: bytes, **kwargs: Any) -> None:
        if self.fail_on and url.endswith(self.fail_on):
            raise OSError("injected: the process died before this PUT")
        self.writes.append(url)
        self._fs.pipe_file(url, body, **kwargs)


@pytest.fixture
def bucket(store: Store, request: pytest.FixtureRequest) -> str:
    name = "t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:50].strip("-")
    store.make_bucket(name)
    return name


def another_pod(store: Store, root: str) -> Staging:
    """A reader sharing nothing with the writer: its own filesystem and an empty local scratch
    (this process keeps the local copy of what it staged, which a reader in it would reuse)."""
    shutil.rmtree(_scratch())
    return Staging(root, store.fs())


def write_day(
    staging: Staging, run_id: str, frames: list[pl.DataFrame], stage: str = "raw"
) -> None:
    with staging.write(stage, DAY, run_id) as folder:
        for i, frame in enumerate(frames):
            frame.write_parquet(folder / f"part-{i:05d}.parquet")


def test_round_trip_uploads_parts_then_the_manifest_last(store: Store, bucket: str) -> None:
    fs = Recording(store.fs())
    root = f"{store.scheme}://{bucket}/prefix"
    staging = Staging(root, fs)  # type: ignore[arg-type]
    frames = [pl.DataFrame({"a": [1, 2, 3]}), pl.DataFrame({"a": [4, 5]})]
    write_day(staging, "run-1", frames)

    folder = f"{root}/raw/date=2025-11-15"
    assert fs.writes[-1] == f"{folder}/{MANIFEST}"
    assert len(fs.writes) == 3 and all(w.endswith(".parquet") for w in fs.writes[:-1])

    raw = another_pod(store, root).read("raw", DAY)
    assert raw.rows == 5 and raw.manifest["run_id"] == "run-1"
    assert raw.folder == folder
    assert all(f.startswith(f"{folder}/run=run-1-") for f in raw.files)
    assert raw.scan({"a": pl.Int64}).collect()["a"].to_list() == [1, 2, 3, 4, 5]
    keys = store.keys(bucket, "prefix/raw/")
    assert f"prefix/raw/date=2025-11-15/{MANIFEST}" in keys
    assert {k.rsplit("/", 1)[-1] for k in keys} == {
        MANIFEST,
        "part-00000.parquet",
        "part-00001.parquet",
    }
    for entry in raw.manifest["files"]:
        assert keys[f"prefix/raw/date=2025-11-15/{entry['name']}"] == entry["bytes"]


def test_a_rerun_replaces_the_day_exactly_once(store: Store, bucket: str) -> None:
    root = f"{store.scheme}://{bucket}/p"
    staging = Staging(root, store.fs())
    write_day(staging, "run-1", [pl.DataFrame({"a": [1, 2]})])
    write_day(staging, "run-2", [pl.DataFrame({"a": [7, 8, 9]})])

    raw = another_pod(store, root).read("raw", DAY)
    assert (raw.rows, raw.manifest["run_id"]) == (3, "run-2")
    assert raw.scan({"a": pl.Int64}).collect()["a"].to_list() == [7, 8, 9]
    # The first run's parts are gone: one manifest and one run's parts remain.
    keys = store.keys(bucket, "p/raw/date=2025-11-15/")
    runs = {k.split("/")[3] for k in keys if k.endswith(".parquet")}
    assert len(runs) == 1 and runs.pop().startswith("run=run-2-")
    assert len(keys) == 2


def test_an_exception_before_the_manifest_leaves_the_old_day(store: Store, bucket: str) -> None:
    root = f"{store.scheme}://{bucket}/p"
    staging = Staging(root, store.fs())
    write_day(staging, "run-1", [pl.DataFrame({"a": [1, 2]})])
    before = store.keys(bucket)

    with pytest.raises(RuntimeError), staging.write("raw", DAY, "run-2") as folder:
        pl.DataFrame({"a": [9]}).write_parquet(folder / "part-00000.parquet")
        raise RuntimeError("killed mid-write")
    assert store.keys(bucket) == before  # nothing of run-2 reached the bucket
    assert not folder.exists()  # and its local temporary folder is gone

    # Parts uploaded, then the process dies right before the manifest's PUT.
    dying = Staging(root, Recording(store.fs(), fail_on=MANIFEST))  # type: ignore[arg-type]
    with pytest.raises(InfrastructureError, match=f"{root}/raw/date=2025-11-15/"):
        write_day(dying, "run-3", [pl.DataFrame({"a": [5, 5, 5]})])
    orphans = set(store.keys(bucket)) - set(before)
    assert orphans and all("/run=run-3-" in k for k in orphans)

    kept = another_pod(store, root).read("raw", DAY)
    assert (kept.rows, kept.manifest["run_id"]) == (2, "run-1")
    assert kept.scan({"a": pl.Int64}).collect()["a"].to_list() == [1, 2]

    # The next complete write removes both the old day and the unlisted orphans.
    write_day(staging, "run-4", [pl.DataFrame({"a": [4]})])
    parts = {k.split("/")[3] for k in store.keys(bucket, "p/raw/") if k.endswith(".parquet")}
    assert len(parts) == 1 and parts.pop().startswith("run=run-4-")


def test_a_folder_without_a_manifest_is_refused(store: Store, bucket: str, tmp_path: Path) -> None:
    path = tmp_path / "part-00000.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(path)
    key = "p/clean/date=2025-11-15/run=x-1/part-00000.parquet"
    store.put_object(bucket, key, path.read_bytes())
    staging = Staging(f"{store.scheme}://{bucket}/p", store.fs())
    with pytest.raises(InfrastructureError, match=r"no _manifest\.json.*not complete"):
        staging.read("clean", DAY)


def test_a_part_that_does_not_match_its_manifest_is_refused(store: Store, bucket: str) -> None:
    root = f"{store.scheme}://{bucket}/p"
    staging = Staging(root, store.fs())
    write_day(staging, "run-1", [pl.DataFrame({"a": list(range(100))})])
    raw = staging.read("raw", DAY)
    key = raw.files[0].removeprefix(f"{store.scheme}://{bucket}/")
    store.put_object(bucket, key, b"truncated")
    with pytest.raises(InfrastructureError, match="not the size its manifest records"):
        Staging(root, store.fs()).read("raw", DAY)


def test_a_download_is_checked_against_the_manifest_sha256(store: Store, bucket: str) -> None:
    root = f"{store.scheme}://{bucket}/p"
    staging = Staging(root, store.fs())
    write_day(staging, "run-1", [pl.DataFrame({"a": [1, 2, 3]})])
    raw = staging.read("raw", DAY)
    key = raw.files[0].removeprefix(f"{store.scheme}://{bucket}/")
    body = store.get_object(bucket, key)
    flipped = body[:-20] + bytes([body[-20] ^ 0xFF]) + body[-19:]  # same size, other bytes
    store.put_object(bucket, key, flipped)
    reader = another_pod(store, root)
    with pytest.raises(InfrastructureError, match="SHA-256"):
        reader.read("raw", DAY).scan({"a": pl.Int64}).collect()


def test_sizes_counts_every_staged_object_of_the_day(store: Store, bucket: str) -> None:
    staging = Staging(f"{store.scheme}://{bucket}/p", store.fs())
    write_day(staging, "r", [pl.DataFrame({"a": list(range(1000))})], stage="raw")
    write_day(staging, "r", [pl.DataFrame({"b": ["x"] * 10})], stage="clean")
    with staging.write("raw", date(2025, 11, 16), "r") as folder:  # another day: not counted
        pl.DataFrame({"a": [1]}).write_parquet(folder / "part-00000.parquet")
    day = {k: v for k, v in store.keys(bucket, "p/").items() if "date=2025-11-15" in k}
    assert len(day) == 4
    assert staging.sizes(DAY) == sum(day.values())
    assert staging.sizes(date(2025, 1, 1)) == 0


def check_run_records(root: str, fs: Any) -> None:
    """Run records round-trip under ``root`` (``fs``: a new filesystem each call, or None)."""
    staging = Staging(root, fs())
    summary = {"rows": 10, "raw": f"{root}/raw/date=2025-11-15", "checksums": {"fare": "1.50"}}
    staging.put_record("run-1", "extract", summary)
    staging.put_record("run-1", "extract", summary | {"rows": 11})  # replaced, not appended
    again = Staging(root, fs())
    assert again.get_record("run-1", "extract") == summary | {"rows": 11}
    with pytest.raises(InfrastructureError, match="no such run record"):
        again.get_record("run-1", "transform")
    with pytest.raises(UsageError):
        again.put_record("run-1", "../escape", {})


def test_run_records_round_trip(store: Store, bucket: str) -> None:
    check_run_records(f"{store.scheme}://{bucket}/p", store.fs)
    assert set(store.keys(bucket, "p/_runs/")) == {"p/_runs/run-1/extract.json"}


def test_run_records_round_trip_locally(tmp_path: Path) -> None:
    check_run_records(str(tmp_path / "st"), lambda: None)
    assert [p.name for p in (tmp_path / "st" / "_runs" / "run-1").iterdir()] == ["extract.json"]


def test_a_missing_bucket_is_an_infrastructure_error_naming_the_url(store: Store) -> None:
    root = f"{store.scheme}://no-such-bucket/p"
    staging = Staging(root, store.fs())
    with pytest.raises(InfrastructureError) as caught:
        write_day(staging, "run-1", [pl.DataFrame({"a": [1]})])
    message = str(caught.value)
    assert f"{root}/raw/date=2025-11-15/" in message
    if store.secret is not None:
        assert store.secret not in message
    with pytest.raises(InfrastructureError, match=re.escape(f"{root}/_runs/r/x.json")):
        staging.put_record("r", "x", {})


def test_a_bucket_deleted_mid_run_refuses_the_write(store: Store, bucket: str) -> None:
    root = f"{store.scheme}://{bucket}/p"
    staging = Staging(root, store.fs())
    write_day(staging, "run-1", [pl.DataFrame({"a": [1]})])
    store.delete_bucket(bucket)
    with pytest.raises(InfrastructureError, match=f"staging {root}/raw/date=2025-11-15/"):
        write_day(staging, "run-2", [pl.DataFrame({"a": [2]})])


def test_a_stopped_server_is_an_infrastructure_error(store_alone: Store) -> None:
    store_alone.make_bucket("gone")
    root = f"{store_alone.scheme}://gone/p"
    staging = Staging(root, store_alone.fs())
    write_day(staging, "run-1", [pl.DataFrame({"a": [1]})])
    store_alone.stop()
    with pytest.raises(
        InfrastructureError, match=re.escape(f"{root}/raw/date=2025-11-15/_manifest.json")
    ):
        staging.read("raw", DAY)
    with pytest.raises(InfrastructureError, match=f"{root}/raw/date=2025-11-15/"):
        write_day(staging, "run-2", [pl.DataFrame({"a": [2]})])


def test_locations_and_redaction() -> None:
    loc = Location.parse("s3://bucket/a/b/")
    assert (loc.scheme, loc.bucket, loc.prefix, loc.url) == (
        "s3",
        "bucket",
        "a/b",
        "s3://bucket/a/b",
    )
    assert Location.parse("gcs://b").url == "gs://b"
    assert loc.join("raw", "date=2025-11-15") == "s3://bucket/a/b/raw/date=2025-11-15"
    for bad in ("s3://", "s3:///prefix", "s3://key:secret@bucket/p", "file:///tmp/x"):
        with pytest.raises(UsageError) as caught:
            Location.parse(bad)
        assert "secret" not in str(caught.value)
    assert redact("http://user:pw@minio:9000/x") == "http://minio:9000/x"


def endpoint_of(fs: Any) -> str | None:
    """The endpoint a filesystem was built for (None: the cloud's own)."""
    return fs.endpoint_url if fs.protocol[0] == "s3" else fs._endpoint  # type: ignore[no-any-return]


def test_the_settings_filesystem_serves_urls_under_its_root(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    if isinstance(store, GCS):  # the ambient identity on the emulator: anonymous (gcsstand)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", store.endpoint)
    root = f"{store.scheme}://served-bucket/root"
    fs = filesystem(root, "", store.endpoint)
    assert filesystem_for(f"{root}/raw/date=2025-11-15/x.parquet") is fs
    assert endpoint_of(fs) == store.endpoint
    # A URL under no known root gets the ambient identity's filesystem (no custom endpoint).
    other = filesystem_for(f"{store.scheme}://elsewhere/x.parquet")
    assert other is not fs and endpoint_of(other) is None


def test_the_local_layout_is_unchanged(tmp_path: Path) -> None:
    staging = Staging(str(tmp_path / "st"))
    write_day(staging, "run-1", [pl.DataFrame({"a": [1, 2]})])
    folder = tmp_path / "st" / "raw" / "date=2025-11-15"
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "part-00000.parquet"]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert [f["name"] for f in manifest["files"]] == ["part-00000.parquet"]
    assert staging.read("raw", DAY).files == (str(folder / "part-00000.parquet"),)
