"""Fixtures for the governance tests: the project's throwaway PostgreSQL server (started once per
session, as ``tests/pg/conftest.py`` does) and the published tables with two days of data."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from governance_support import (
    PUBLISHED_DDL,
    SCHEMA,
    SEED,
    STAGING,
    USER_PASSWORD,
    USERS,
    ThrowawayPostgres,
    Warehouse,
)


@pytest.fixture(scope="session")
def pg() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def warehouse(pg: ThrowawayPostgres) -> Warehouse:
    """The published tables with two days of data, and a login user per declared role.

    The grants are NOT applied here: each test module applies them the way it tests.
    """
    wh = Warehouse(pg)
    with psycopg.connect(wh.owner_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE".encode())
        conn.execute(f"DROP SCHEMA IF EXISTS {STAGING} CASCADE".encode())
        conn.execute(PUBLISHED_DDL.encode())
        conn.execute(SEED.encode())
        for user in USERS.values():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
            if not exists:
                conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{USER_PASSWORD}'".encode())
    return wh
