"""A real Kafka-protocol broker for the Kafka source's tests: Tansu (``tests/kafka/tansu.py``), a
stand-in for a managed Kafka (Amazon MSK, Confluent Cloud), started once per session on a free
loopback port with in-memory storage and stopped at the end. Each test gets its own topic."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tansu import TansuBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[TansuBroker]:
    server = TansuBroker().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def topic(broker: TansuBroker) -> str:
    """A fresh topic of three partitions for one test."""
    name = f"trips-{uuid.uuid4().hex[:10]}"
    broker.create_topic(name, partitions=3)
    return name
