"""``TripWarehouse``: the Prefect block that names a warehouse target, where its tables live, the
credentials block it authenticates with, and its cost limits.

``--warehouse block:NAME`` loads the block saved as NAME and builds that target's warehouse.
Credentials are nested blocks of the official collections (prefect-gcp ``GcpCredentials``,
prefect-aws ``AwsCredentials``, prefect-snowflake ``SnowflakeConnector``); left empty, the ambient
workload identity is used (Workload Identity on GKE, IRSA on EKS: no key files). No secret is a
field of this block itself.

Register it once: ``prefect block register -m tasks.warehouses.blocks``.
"""

from __future__ import annotations

from typing import Literal

from prefect.blocks.core import Block
from prefect_aws import AwsCredentials
from prefect_gcp import GcpCredentials
from prefect_snowflake import SnowflakeConnector
from pydantic import Field

Target = Literal["duckdb", "bigquery", "redshift", "snowflake"]

#: 10 GB: a day of the seed's 8M trips is ~1 GB in BigQuery; a query above this is a mistake.
DEFAULT_MAXIMUM_BYTES_BILLED = 10 * 10**9


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
        default="XSMALL", description="Snowflake: the virtual warehouse size to run at."
    )

    # Credentials (nested blocks; empty means the ambient workload identity).
    gcp_credentials: GcpCredentials | None = None
    aws_credentials: AwsCredentials | None = None
    snowflake_connector: SnowflakeConnector | None = None
