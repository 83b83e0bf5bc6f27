"""Fixtures for the storage tests: object-store stand-ins started by the tests themselves.

- moto's S3 server, a stand-in for Amazon S3 (``s3stand``), in this process;
- fake-gcs-server, a stand-in for Google Cloud Storage (``gcsstand``), a process of its own on a
  free loopback port, started once for the session and killed after it.

``store`` runs a test once against each.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gcsstand
import s3stand
from gcsstand import GCS
from s3stand import DUMMY_KEYS, S3
from stores import Store

STORES = ("s3", "gcs")


@pytest.fixture(scope="module")
def s3(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[S3]:
    """moto's S3 server for the module (dummy keys in this process's environment)."""
    for name, value in DUMMY_KEYS.items():
        monkeypatch_module.setenv(name, value)
    monkeypatch_module.setenv("AWS_EC2_METADATA_DISABLED", "true")
    server = s3stand.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs() -> Iterator[GCS]:
    """fake-gcs-server for the session (its own process, killed at the end)."""
    server = gcsstand.start()
    yield server
    server.stop()


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> Store:
    """Each object-store stand-in in turn."""
    server: Store = request.getfixturevalue(request.param)
    return server


@pytest.fixture(params=STORES)
def store_alone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """A stand-in server of the test's own (which the test may stop)."""
    server: Store
    if request.param == "s3":
        for name, value in DUMMY_KEYS.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        server = s3stand.start()
    else:
        server = gcsstand.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp
