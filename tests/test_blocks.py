"""The ``TripWarehouse`` block on the session's real Prefect server: registered with ``prefect
block register``, saved, and chosen with ``--warehouse block:NAME`` by the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from helpers import prefect_cli, tripflow
from prefect.client.orchestration import get_client

from tasks.errors import UsageError
from tasks.warehouses import make_warehouse
from tasks.warehouses.blocks import TripWarehouse
from tasks.warehouses.duckdb import DuckDBWarehouse

pytestmark = pytest.mark.usefixtures("prefect_server")


def test_block_type_registers_with_its_fields_and_nested_credentials() -> None:
    done = prefect_cli("block", "register", "-m", "tasks.warehouses.blocks")
    assert "Trip Warehouse" in done.stdout
    with get_client(sync_client=True) as client:
        block_type = client.read_block_type_by_slug("trip-warehouse")
        schema = client.get_most_recent_block_schema_for_block_type(block_type.id)
    assert schema is not None
    fields = schema.fields["properties"]
    for name in ("target", "dataset", "maximum_bytes_billed", "statement_timeout_s"):
        assert name in fields, name
    # Credentials are references to the collections' blocks, not secrets of this block.
    refs = schema.fields["block_schema_references"]
    assert {"gcp_credentials", "aws_credentials", "snowflake_connector"} <= set(refs)
    assert not any(f.get("format") == "password" for f in fields.values())


def test_run_with_a_saved_duckdb_block(workdir: Path) -> None:
    path = workdir / "from-block.duckdb"
    TripWarehouse(target="duckdb", path=str(path)).save("local-duck", overwrite=True)
    warehouse = make_warehouse("block:local-duck")
    assert isinstance(warehouse, DuckDBWarehouse) and warehouse.path == path

    done = tripflow(
        "run",
        "--source",
        "sample",
        "--date",
        "2025-11-15",
        "--warehouse",
        "block:local-duck",
        "--json",
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["status"] == "published" and report["warehouse"] == "block:local-duck"
    with duckdb.connect(str(path), read_only=True) as con:
        row = con.execute("SELECT count(*) FROM analytics.trips").fetchone()
    assert row is not None and row[0] == 10


def test_a_missing_block_is_a_usage_error_naming_it(workdir: Path) -> None:
    with pytest.raises(UsageError, match="no TripWarehouse block named 'nowhere'"):
        make_warehouse("block:nowhere")
    done = tripflow("run", "--source", "sample", "--warehouse", "block:nowhere", cwd=workdir)
    assert done.returncode == 2
    assert "no TripWarehouse block named 'nowhere'" in done.stderr


def test_a_block_name_is_validated_before_any_lookup() -> None:
    with pytest.raises(UsageError, match="not a safe SQL identifier"):
        make_warehouse("block:x'; drop")
