"""``TripWarehouse``: the Prefect block that names a warehouse target, where its tables live, the
credentials block it authenticates with, and its cost limits.

``--warehouse block:NAME`` loads the block saved as NAME and builds that target's warehouse.
Credentials are nested blocks of the official collections (prefect-gcp ``GcpCredentials``,
prefect-aws ``AwsCredentials``, prefect-snowflake ``SnowflakeConnector``); left empty, the ambient
workload identity is used (Workload Identity on GKE, IRSA on EKS: no key files). No secret is a
field of this block itself.

Register it once: ``prefect block register -m tasks.warehouses.blocks``.

``warehouse_size`` defaults to none (the Snowflake warehouse is left at whatever size it has). Until
this change it defaulted to ``XSMALL``, so every run shrank a shared warehouse. Prefect stores a
block document with every field's value and a reference to the block schema it was saved under
(whose JSON schema holds each field's default): a document saved under a schema whose
``warehouse_size`` default was ``XSMALL``, still holding ``XSMALL``, cannot tell an inherited
default from a choice, so ``inherited_warehouse_size()`` names it and the run warns (README,
"Snowflake", says how to clear it: save the block again).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.blocks.core import Block
from prefect.client.schemas.objects import BlockDocument
from prefect_aws import AwsCredentials
from prefect_gcp import GcpCredentials
from prefect_snowflake import SnowflakeConnector
from pydantic import Field, PrivateAttr

Target = Literal["duckdb", "bigquery", "redshift", "snowflake"]

#: 10 GB: a day of the seed's 8M trips is ~1 GB in BigQuery; a query above this is a mistake.
DEFAULT_MAXIMUM_BYTES_BILLED = 10 * 10**9

#: ``warehouse_size``'s default before it became none: every run resized the warehouse to it.
OLD_DEFAULT_WAREHOUSE_SIZE = "XSMALL"


class TripWarehouse(Block):
    """Where tripflow publishes, with the credentials and cost limits to do it."""

    _block_type_name = "Trip Warehouse"
    _block_type_slug = "trip-warehouse"
    _description = (
        "tripflow's warehouse target (DuckDB, BigQuery, Redshift or Snowflake), its dataset or "
        "schema, a credentials block, and cost limits (maximum bytes billed, statement timeout, "
        "warehouse size)."
    )

    target: Target = Field(default="duckdb", description="Which warehouse publishes the trips.")

    # Where the tables live.
    path: str = Field(default=".tripflow/warehouse.duckdb", description="DuckDB: the file.")
    project: str | None = Field(default=None, description="BigQuery: the project.")
    location: str = Field(default="US", description="BigQuery: the dataset's location.")
    dataset: str = Field(
        default="analytics",
        description="BigQuery dataset, or Redshift/Snowflake schema, of the published tables.",
    )
    database: str | None = Field(default=None, description="Redshift/Snowflake: the database.")
    workgroup_name: str | None = Field(default=None, description="Redshift Serverless workgroup.")
    cluster_identifier: str | None = Field(
        default=None, description="Redshift provisioned cluster (instead of a workgroup)."
    )
    db_user: str | None = Field(
        default=None, description="Redshift cluster: the database user (temporary credentials)."
    )
    iam_role_arn: str | None = Field(
        default=None, description="Redshift: the IAM role COPY reads the S3 staging with."
    )
    region_name: str | None = Field(default=None, description="AWS region of Redshift.")
    stage_name: str | None = Field(
        default=None,
        description="Snowflake: the external stage over the staging bucket (e.g. TRIPFLOW_STAGE).",
    )
    stage_url: str | None = Field(
        default=None,
        description="Snowflake: the URL that external stage points at (s3://… or gcs://…).",
    )
    endpoint_url: str | None = Field(
        default=None,
        description="A private or stand-in API endpoint (VPC endpoint; tests' local stand-ins).",
    )

    # Cost limits.
    maximum_bytes_billed: int | None = Field(
        default=DEFAULT_MAXIMUM_BYTES_BILLED,
        description="BigQuery: every job carries it, and a query whose dry-run estimate exceeds "
        "it is refused before it runs.",
    )
    statement_timeout_s: int = Field(
        default=3600, description="Statement timeout (Redshift, Snowflake; BigQuery job timeout)."
    )
    warehouse_size: str | None = Field(
        default=None,
        description="Snowflake: resize the virtual warehouse to this (e.g. XSMALL) before the "
        "run; empty leaves its size alone.",
    )

    # Credentials (nested blocks; empty means the ambient workload identity).
    gcp_credentials: GcpCredentials | None = None
    aws_credentials: AwsCredentials | None = None
    snowflake_connector: SnowflakeConnector | None = None

    #: The defaults of the block schema the loaded document was saved under (empty if not loaded).
    _saved_defaults: dict[str, Any] = PrivateAttr(default_factory=dict)

    @classmethod
    def _from_block_document(cls, block_document: BlockDocument) -> TripWarehouse:
        block = super()._from_block_document(block_document)
        schema = block_document.block_schema
        properties = (schema.fields if schema is not None else {}).get("properties") or {}
        block._saved_defaults = {
            name: spec["default"]
            for name, spec in properties.items()
            if isinstance(spec, dict) and "default" in spec
        }
        return block

    def inherited_warehouse_size(self) -> bool:
        """Whether ``warehouse_size`` may be the old default rather than a choice: the document
        was saved when the default was ``XSMALL`` and still holds ``XSMALL``."""
        return (
            self.warehouse_size == OLD_DEFAULT_WAREHOUSE_SIZE
            and self._saved_defaults.get("warehouse_size") == OLD_DEFAULT_WAREHOUSE_SIZE
        )
