"""A warehouse client in a process of its own, for the tests that kill it mid-publish.

``python publish_client.py CONFIG_JSON`` builds the Redshift (Data API) or BigQuery warehouse that
``CONFIG_JSON`` points at a test's stand-in, and publishes one day of a run already loaded there.
Run with ``TRIPFLOW_KILL_AT=publish-submitted`` (``tasks.faults.SUBMITTED``), it is SIGKILLed
right after the server has the publish batch or job: the server then commits it with no client
waiting. Test-only; tripflow never imports it.
"""

from __future__ import annotations

import json
import sys
from datetime import date
from typing import Any

from tasks.warehouses.base import LedgerRow, LoadResult


def warehouse(config: dict[str, Any]) -> Any:
    if config["target"] == "redshift":
        import boto3

        from tasks.warehouses.redshift import CopyManifests, DataApi, RedshiftWarehouse

        aws = {
            "endpoint_url": config["endpoint"],
            "region_name": config["region"],
            "aws_access_key_id": config["access_key_id"],
            "aws_secret_access_key": config["secret_access_key"],
        }
        api = DataApi(
            boto3.client("redshift-data", **aws),
            database="dev",
            workgroup_name="tripflow-wg",
            timeout_s=60,
            poll_first_s=0.01,
            poll_max_s=0.05,
        )
        return RedshiftWarehouse(
            api,
            manifests=CopyManifests(boto3.client("s3", **aws)),
            iam_role=config["iam_role"],
            schema=config["schema"],
            statement_timeout_s=60,
        )
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery

    from tasks.warehouses.bigquery import BigQueryWarehouse

    client = bigquery.Client(
        project=config["project"],
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        location="US",
        client_options=ClientOptions(api_endpoint=config["endpoint"]),
    )
    return BigQueryWarehouse(
        client,
        project=config["project"],
        dataset=config["dataset"],
        maximum_bytes_billed=config["maximum_bytes_billed"],
        statement_timeout_s=120,
    )


def main() -> None:
    config = json.loads(sys.argv[1])
    run_date = date.fromisoformat(config["run_date"])
    ledger = LedgerRow(**{**config["ledger"], "run_date": run_date})
    warehouse(config).publish(run_date, LoadResult(**config["load"]), ledger)
    print("published")  # only reached without the kill point


if __name__ == "__main__":
    main()
