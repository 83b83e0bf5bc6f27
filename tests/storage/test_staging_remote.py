"""Staging on object storage, against moto's S3 server (a stand-in for Amazon S3, see conftest).

The staging code talks to the stand-in through s3fs exactly as it would to Amazon S3; the tests
look at the bucket through an independent boto3 client. One fault is injected on purpose: a
filesystem wrapper (``FailingManifest``) that refuses the manifest's PUT, standing in for a crash
between the parts' upload and the commit point.
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
import s3fs
from s3stand import DUMMY_KEYS, S3

from tasks.errors import InfrastructureError, UsageError
from tasks.staging import MANIFEST, Staging, _scratch
from tasks.storage import Location, filesystem, filesystem_for, redact

DAY = date(2025, 11, 15)


class Recording:
    """The real s3fs filesystem, with the order of its writes noted down."""

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
def bucket(s3: S3, request: pytest.FixtureRequest) -> str:
    name = "t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:50].strip("-")
    s3.make_bucket(name)
    return name


def fresh_fs(s3: S3) -> Any:
    return s3fs.S3FileSystem(endpoint_url=s3.endpoint, use_listings_cache=False)


def another_pod(s3: S3, root: str) -> Staging:
    """A reader sharing nothing with the writer: its own filesystem and an empty local scratch
    (this process keeps the local copy of what it staged, which a reader in it would reuse)."""
    shutil.rmtree(_scratch())
    return Staging(root, fresh_fs(s3))


def write_day(
    staging: Staging, run_id: str, frames: list[pl.DataFrame], stage: str = "raw"
) -> None:
    with staging.write(stage, DAY, run_id) as folder:
        for i, frame in enumerate(frames):
            frame.write_parquet(folder / f"part-{i:05d}.parquet")


def test_round_trip_uploads_parts_then_the_manifest_last(s3: S3, bucket: str) -> None:
    fs = Recording(fresh_fs(s3))
    staging = Staging(f"s3://{bucket}/prefix", fs)  # type: ignore[arg-type]
    frames = [pl.DataFrame({"a": [1, 2, 3]}), pl.DataFrame({"a": [4, 5]})]
    write_day(staging, "run-1", frames)

    folder = f"s3://{bucket}/prefix/raw/date=2025-11-15"
    assert fs.writes[-1] == f"{folder}/{MANIFEST}"
    assert len(fs.writes) == 3 and all(w.endswith(".parquet") for w in fs.writes[:-1])

    raw = another_pod(s3, f"s3://{bucket}/prefix").read("raw", DAY)
    assert raw.rows == 5 and raw.manifest["run_id"] == "run-1"
    assert raw.folder == folder
    assert all(f.startswith(f"{folder}/run=run-1-") for f in raw.files)
    assert raw.scan({"a": pl.Int64}).collect()["a"].to_list() == [1, 2, 3, 4, 5]
    keys = s3.keys(bucket, "prefix/raw/")
    assert f"prefix/raw/date=2025-11-15/{MANIFEST}" in keys
    assert {k.rsplit("/", 1)[-1] for k in keys} == {
        MANIFEST,
        "part-00000.parquet",
        "part-00001.parquet",
    }
    for entry in raw.manifest["files"]:
        assert keys[f"prefix/raw/date=2025-11-15/{entry['name']}"] == entry["bytes"]


def test_a_rerun_replaces_the_day_exactly_once(s3: S3, bucket: str) -> None:
    staging = Staging(f"s3://{bucket}/p", fresh_fs(s3))
    write_day(staging, "run-1", [pl.DataFrame({"a": [1, 2]})])
    write_day(staging, "run-2", [pl.DataFrame({"a": [7, 8, 9]})])

    raw = another_pod(s3, f"s3://{bucket}/p").read("raw", DAY)
    assert (raw.rows, raw.manifest["run_id"]) == (3, "run-2")
    assert raw.scan({"a": pl.Int64}).collect()["a"].to_list() == [7, 8, 9]
    # The first run's parts are gone: one manifest and one run's parts remain.
    keys = s3.keys(bucket, "p/raw/date=2025-11-15/")
    runs = {k.split("/")[3] for k in keys if k.endswith(".parquet")}
    assert len(runs) == 1 and runs.pop().startswith("run=run-2-")
    assert len(keys) == 2


def test_an_exception_before_the_manifest_leaves_the_old_day(s3: S3, bucket: str) -> None:
    staging = Staging(f"s3://{bucket}/p", fresh_fs(s3))
    write_day(staging, "run-1", [pl.DataFrame({"a": [1, 2]})])
    before = s3.keys(bucket)

    with pytest.raises(RuntimeError), staging.write("raw", DAY, "run-2") as folder:
        pl.DataFrame({"a": [9]}).write_parquet(folder / "part-00000.parquet")
        raise RuntimeError("killed mid-write")
    assert s3.keys(bucket) == before  # nothing of run-2 reached the bucket
    assert not folder.exists()  # and its local temporary folder is gone

    # Parts uploaded, then the process dies right before the manifest's PUT.
    dying = Staging(f"s3://{bucket}/p", Recording(fresh_fs(s3), fail_on=MANIFEST))  # type: ignore[arg-type]
    with pytest.raises(InfrastructureError, match=f"s3://{bucket}/p/raw/date=2025-11-15/"):
        write_day(dying, "run-3", [pl.DataFrame({"a": [5, 5, 5]})])
    orphans = set(s3.keys(bucket)) - set(before)
    assert orphans and all("/run=run-3-" in k for k in orphans)

    kept = another_pod(s3, f"s3://{bucket}/p").read("raw", DAY)
    assert (kept.rows, kept.manifest["run_id"]) == (2, "run-1")
    assert kept.scan({"a": pl.Int64}).collect()["a"].to_list() == [1, 2]

    # The next complete write removes both the old day and the unlisted orphans.
    write_day(staging, "run-4", [pl.DataFrame({"a": [4]})])
    parts = {k.split("/")[3] for k in s3.keys(bucket, "p/raw/") if k.endswith(".parquet")}
    assert len(parts) == 1 and parts.pop().startswith("run=run-4-")


def test_a_folder_without_a_manifest_is_refused(s3: S3, bucket: str, tmp_path: Path) -> None:
    path = tmp_path / "part-00000.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(path)
    client = s3.client()
    key = "p/clean/date=2025-11-15/run=x-1/part-00000.parquet"
    client.upload_file(str(path), bucket, key)  # type: ignore[attr-defined]
    staging = Staging(f"s3://{bucket}/p", fresh_fs(s3))
    with pytest.raises(InfrastructureError, match=r"no _manifest\.json.*not complete"):
        staging.read("clean", DAY)


def test_a_part_that_does_not_match_its_manifest_is_refused(s3: S3, bucket: str) -> None:
    staging = Staging(f"s3://{bucket}/p", fresh_fs(s3))
    write_day(staging, "run-1", [pl.DataFrame({"a": list(range(100))})])
    raw = staging.read("raw", DAY)
    key = raw.files[0].removeprefix(f"s3://{bucket}/")
    s3.client().put_object(Bucket=bucket, Key=key, Body=b"truncated")  # type: ignore[attr-defined]
    with pytest.raises(InfrastructureError, match="not the size its manifest records"):
        Staging(f"s3://{bucket}/p", fresh_fs(s3)).read("raw", DAY)


def test_a_download_is_checked_against_the_manifest_sha256(s3: S3, bucket: str) -> None:
    staging = Staging(f"s3://{bucket}/p", fresh_fs(s3))
    write_day(staging, "run-1", [pl.DataFrame({"a": [1, 2, 3]})])
    raw = staging.read("raw", DAY)
    key = raw.files[0].removeprefix(f"s3://{bucket}/")
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()  # type: ignore[attr-defined]
    flipped = body[:-20] + bytes([body[-20] ^ 0xFF]) + body[-19:]  # same size, other bytes
    s3.client().put_object(Bucket=bucket, Key=key, Body=flipped)  # type: ignore[attr-defined]
    reader = another_pod(s3, f"s3://{bucket}/p")
    with pytest.raises(InfrastructureError, match="SHA-256"):
        reader.read("raw", DAY).scan({"a": pl.Int64}).collect()


def test_sizes_counts_every_staged_object_of_the_day(s3: S3, bucket: str) -> None:
    staging = Staging(f"s3://{bucket}/p", fresh_fs(s3))
    write_day(staging, "r", [pl.DataFrame({"a": list(range(1000))})], stage="raw")
    write_day(staging, "r", [pl.DataFrame({"b": ["x"] * 10})], stage="clean")
    with staging.write("raw", date(2025, 11, 16), "r") as folder:  # another day: not counted
        pl.DataFrame({"a": [1]}).write_parquet(folder / "part-00000.parquet")
    day = {k: v for k, v in s3.keys(bucket, "p/").items() if "date=2025-11-15" in k}
    assert len(day) == 4
    assert staging.sizes(DAY) == sum(day.values())
    assert staging.sizes(date(2025, 1, 1)) == 0


@pytest.mark.parametrize("where", ["local", "s3"])
def test_run_records_round_trip(s3: S3, bucket: str, tmp_path: Path, where: str) -> None:
    root = str(tmp_path / "st") if where == "local" else f"s3://{bucket}/p"
    staging = Staging(root, fresh_fs(s3) if where == "s3" else None)
    summary = {"rows": 10, "raw": f"{root}/raw/date=2025-11-15", "checksums": {"fare": "1.50"}}
    staging.put_record("run-1", "extract", summary)
    staging.put_record("run-1", "extract", summary | {"rows": 11})  # replaced, not appended
    again = Staging(root, fresh_fs(s3) if where == "s3" else None)
    assert again.get_record("run-1", "extract") == summary | {"rows": 11}
    if where == "s3":
        assert set(s3.keys(bucket, "p/_runs/")) == {"p/_runs/run-1/extract.json"}
    else:
        assert [p.name for p in (tmp_path / "st" / "_runs" / "run-1").iterdir()] == ["extract.json"]
    with pytest.raises(InfrastructureError, match="no such run record"):
        again.get_record("run-1", "transform")
    with pytest.raises(UsageError):
        again.put_record("run-1", "../escape", {})


def test_a_missing_bucket_is_an_infrastructure_error_naming_the_url(s3: S3) -> None:
    staging = Staging("s3://no-such-bucket/p", fresh_fs(s3))
    with pytest.raises(InfrastructureError) as caught:
        write_day(staging, "run-1", [pl.DataFrame({"a": [1]})])
    message = str(caught.value)
    assert "s3://no-such-bucket/p/raw/date=2025-11-15/" in message
    assert DUMMY_KEYS["AWS_SECRET_ACCESS_KEY"] not in message
    with pytest.raises(
        InfrastructureError, match=re.escape("s3://no-such-bucket/p/_runs/r/x.json")
    ):
        staging.put_record("r", "x", {})


def test_a_bucket_deleted_mid_run_refuses_the_write(s3: S3, bucket: str) -> None:
    staging = Staging(f"s3://{bucket}/p", fresh_fs(s3))
    write_day(staging, "run-1", [pl.DataFrame({"a": [1]})])
    client = s3.client()
    for key in s3.keys(bucket):
        client.delete_object(Bucket=bucket, Key=key)  # type: ignore[attr-defined]
    client.delete_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    with pytest.raises(InfrastructureError, match=f"staging s3://{bucket}/p/raw/date=2025-11-15/"):
        write_day(staging, "run-2", [pl.DataFrame({"a": [2]})])


def test_a_stopped_server_is_an_infrastructure_error(s3_alone: S3) -> None:
    s3_alone.make_bucket("gone")
    staging = Staging("s3://gone/p", fresh_fs(s3_alone))
    write_day(staging, "run-1", [pl.DataFrame({"a": [1]})])
    s3_alone.stop()
    with pytest.raises(
        InfrastructureError, match=re.escape("s3://gone/p/raw/date=2025-11-15/_manifest.json")
    ):
        staging.read("raw", DAY)
    with pytest.raises(InfrastructureError, match="s3://gone/p/raw/date=2025-11-15/"):
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


def test_the_settings_filesystem_serves_urls_under_its_root(s3: S3) -> None:
    fs = filesystem("s3://served-bucket/root", "", s3.endpoint)
    assert filesystem_for("s3://served-bucket/root/raw/date=2025-11-15/x.parquet") is fs
    assert fs.endpoint_url == s3.endpoint  # type: ignore[attr-defined]
    # A URL under no known root gets the ambient identity's filesystem (no custom endpoint).
    other = filesystem_for("s3://elsewhere/x.parquet")
    assert other is not fs and other.endpoint_url is None  # type: ignore[attr-defined]


def test_the_local_layout_is_unchanged(tmp_path: Path) -> None:
    staging = Staging(str(tmp_path / "st"))
    write_day(staging, "run-1", [pl.DataFrame({"a": [1, 2]})])
    folder = tmp_path / "st" / "raw" / "date=2025-11-15"
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "part-00000.parquet"]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert [f["name"] for f in manifest["files"]] == ["part-00000.parquet"]
    assert staging.read("raw", DAY).files == (str(folder / "part-00000.parquet"),)
