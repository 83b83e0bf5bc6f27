"""moto's S3 server, a stand-in for Amazon S3, started on 127.0.0.1 for the storage tests.

moto's ``ThreadedMotoServer`` serves the real S3 REST API (the same HTTP requests s3fs, boto3,
DuckDB-through-fsspec send to Amazon S3) from memory in this process. It models buckets, objects,
listings, PUT/GET/DELETE and their error answers (NoSuchBucket, NoSuchKey); it does not model
IAM/bucket-policy enforcement, signatures checked against real keys, throttling or latency.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import boto3
from moto.server import ThreadedMotoServer

#: moto's dummy keys: any non-empty key pair is accepted by the stand-in.
DUMMY_KEYS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret"}
#: No keys in the environment and no shared files: only what a test passes gives credentials.
NO_AMBIENT_AWS = {
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_CONFIG_FILE": "/nonexistent/config",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3:
    endpoint: str
    server: ThreadedMotoServer
    running: bool = True
    scheme: str = "s3"
    #: The secret a test looks for in outputs (it must never appear).
    secret: str | None = DUMMY_KEYS["AWS_SECRET_ACCESS_KEY"]

    def stop(self) -> None:
        if self.running:
            self.server.stop()
            self.running = False

    def env(self) -> dict[str, str]:
        """What a ``tripflow`` subprocess needs to stage on this server."""
        return NO_AMBIENT_AWS | DUMMY_KEYS | {"TRIPFLOW_STAGING_ENDPOINT_URL": self.endpoint}

    def fs(self) -> Any:
        """An s3fs filesystem of its own on the server (what another pod would build)."""
        import s3fs

        return s3fs.S3FileSystem(
            endpoint_url=self.endpoint,
            key=DUMMY_KEYS["AWS_ACCESS_KEY_ID"],
            secret=DUMMY_KEYS["AWS_SECRET_ACCESS_KEY"],
            use_listings_cache=False,
            skip_instance_cache=True,
        )

    def client(self) -> Any:
        """An independent boto3 client, to look at the bucket without going through tripflow."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=DUMMY_KEYS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_KEYS["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object under ``prefix``: key -> size."""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}

    def make_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)

    def put_object(self, bucket: str, key: str, body: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=body)

    def get_object(self, bucket: str, key: str) -> bytes:
        return bytes(self.client().get_object(Bucket=bucket, Key=key)["Body"].read())

    def delete_bucket(self, bucket: str) -> None:
        """Delete every object, then the bucket."""
        client = self.client()
        for key in self.keys(bucket):
            client.delete_object(Bucket=bucket, Key=key)
        client.delete_bucket(Bucket=bucket)


def start() -> S3:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return S3(f"http://127.0.0.1:{port}", server)
