"""A real, throwaway PostgreSQL server for the PostgreSQL source's tests (no mocks).

Started once per session from the machine's PostgreSQL binaries (``tests/pg/pgserver.py``: as
root through ``runuser -u postgres``), on 127.0.0.1 at a free port with a password login, and
stopped at the end. Each test gets its own table name.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgserver import ThrowawayPostgres


@pytest.fixture(scope="session")
def pg() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def table() -> str:
    """A fresh table name (``public.t_…``) for one test."""
    return f"public.t_{uuid.uuid4().hex[:12]}"
