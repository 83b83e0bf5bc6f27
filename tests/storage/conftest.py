"""Fixtures for the storage tests: moto's S3 server (a stand-in for Amazon S3, ``s3stand``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from s3stand import DUMMY_KEYS, S3, start


@pytest.fixture(scope="module")
def s3(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[S3]:
    """moto's S3 server for the module (dummy keys in this process's environment)."""
    for name, value in DUMMY_KEYS.items():
        monkeypatch_module.setenv(name, value)
    monkeypatch_module.setenv("AWS_EC2_METADATA_DISABLED", "true")
    server = start()
    yield server
    server.stop()


@pytest.fixture
def s3_alone(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3]:
    """A moto S3 server of the test's own (which the test may stop)."""
    for name, value in DUMMY_KEYS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    server = start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp
