"""Warehouses, chosen by ``--warehouse SPEC``: ``duckdb:PATH`` (the embedded default)."""

from __future__ import annotations

from tasks.errors import UsageError
from tasks.warehouses.base import Figures, LedgerRow, LoadResult, StagedFiles, Warehouse
from tasks.warehouses.duckdb import DuckDBWarehouse

__all__ = ["Figures", "LedgerRow", "LoadResult", "StagedFiles", "Warehouse", "make_warehouse"]


def make_warehouse(spec: str) -> Warehouse:
    """The warehouse a spec names (the one place a spec is parsed)."""
    kind, _, rest = spec.partition(":")
    if kind == "duckdb" and rest:
        return DuckDBWarehouse(rest)
    raise UsageError(f"unknown --warehouse {spec!r}; use duckdb:PATH")
