"""Warehouses, chosen by ``--warehouse SPEC`` (the one place a spec is parsed):

- ``duckdb:PATH``: the embedded default;
- ``block:NAME``: the ``TripWarehouse`` block saved as NAME (DuckDB, BigQuery, Redshift or
  Snowflake, with its credentials block and cost limits).

Each target is one module (``tasks.warehouses.<target>``) exposing ``from_block(block)``; cloud
modules are imported only when their target is chosen.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, cast

from tasks.errors import InfrastructureError, UsageError
from tasks.warehouses.base import (
    Figures,
    LedgerRow,
    LoadResult,
    StagedFiles,
    Usage,
    Warehouse,
    identifier,
)
from tasks.warehouses.duckdb import DuckDBWarehouse

if TYPE_CHECKING:
    from tasks.warehouses.blocks import TripWarehouse

__all__ = [
    "Figures",
    "LedgerRow",
    "LoadResult",
    "StagedFiles",
    "Usage",
    "Warehouse",
    "make_warehouse",
    "warehouse_from_block",
]

TARGETS = ("duckdb", "bigquery", "redshift", "snowflake")


def make_warehouse(spec: str) -> Warehouse:
    """The warehouse a spec names."""
    kind, _, rest = spec.partition(":")
    if kind == "duckdb" and rest:
        return DuckDBWarehouse(rest)
    if kind == "block" and rest:
        return warehouse_from_block(load_block(rest))
    raise UsageError(f"unknown --warehouse {spec!r}; use duckdb:PATH or block:NAME")


def load_block(name: str) -> TripWarehouse:
    """The ``TripWarehouse`` block saved as ``name``."""
    from tasks.warehouses.blocks import TripWarehouse

    identifier(name.replace("-", "_"))
    try:
        return cast("TripWarehouse", TripWarehouse.load(name))
    except ValueError as exc:
        raise UsageError(
            f"no TripWarehouse block named {name!r}: create it (README, 'Warehouses') "
            "after `prefect block register -m tasks.warehouses.blocks`"
        ) from exc
    except Exception as exc:  # the Prefect API unreachable
        raise InfrastructureError(f"TripWarehouse block {name!r}: cannot load: {exc}") from exc


def warehouse_from_block(block: TripWarehouse) -> Warehouse:
    """Build the block's target warehouse (its module's ``from_block``)."""
    if block.target not in TARGETS:
        raise UsageError(f"TripWarehouse target {block.target!r}: use one of {', '.join(TARGETS)}")
    module = importlib.import_module(f"tasks.warehouses.{block.target}")
    return cast(Warehouse, module.from_block(block))
