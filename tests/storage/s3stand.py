"""moto's S3 server, a stand-in for Amazon S3, started on 127.0.0.1 for the storage tests.

moto's ``ThreadedMotoServer`` serves the real S3 REST API (the same HTTP requests s3fs, boto3,
DuckDB-through-fsspec send to Amazon S3) from memory in this process. It models buckets, objects,
listings, PUT/GET/DELETE and their error answers (NoSuchBucket, NoSuchKey); it does not model
IAM/bucket-policy enforcement, signatures checked against real keys, throttling or latency.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import boto3
from moto.server import ThreadedMotoServer

#: moto's dummy keys: any non-empty key pair is accepted by the stand-in.
DUMMY_KEYS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3:
    endpoint: str
    server: ThreadedMotoServer
    running: bool = True

    def stop(self) -> None:
        if self.running:
            self.server.stop()
            self.running = False

    def client(self) -> object:
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
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(  # type: ignore[attr-defined]
                Bucket=bucket, Prefix=prefix
            )
        )
        return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}

    def make_bucket(self, bucket: str) -> None:
        self.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]


def start() -> S3:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return S3(f"http://127.0.0.1:{port}", server)
