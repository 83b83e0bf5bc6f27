"""What the staging tests need of an object store's stand-in (``s3stand.S3``, ``gcsstand.GCS``),
so one test runs against both."""

from __future__ import annotations

from typing import Any, Protocol


class Store(Protocol):
    endpoint: str
    scheme: str  # "s3" or "gs"
    secret: str | None  # a credential that must never appear in outputs, if the store has one

    def stop(self) -> None: ...
    def env(self) -> dict[str, str]: ...  # what a tripflow subprocess needs to stage on it
    def fs(self) -> Any: ...  # an fsspec filesystem of its own (what another pod would build)
    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]: ...
    def make_bucket(self, bucket: str) -> None: ...
    def put_object(self, bucket: str, key: str, body: bytes) -> None: ...
    def get_object(self, bucket: str, key: str) -> bytes: ...
    def delete_bucket(self, bucket: str) -> None: ...
