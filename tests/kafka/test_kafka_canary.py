"""A Kafka message with a rider's e-mail in the wrong field, read by ``tripflow run --source
kafka:TOPIC`` as a user runs it (a subprocess, the real Prefect server of ``tests/conftest.py``,
DuckDB, and Tansu (``tansu.py``) as a stand-in for a managed Kafka): the e-mail appears nowhere
(``tests/canary.py`` says where it looks); where it landed in a text field it is stored as its
keyed hash, and a message with it in ``fare_usd`` is a ``bad_record``."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
from canary import assert_nowhere
from helpers import tripflow
from tansu import TansuBroker
from test_kafka_source import DAY, produce, trips

from tasks.transforms import EmailHasher

KEY = "canary-hmac-key-kafka-91d3"
EMAIL = "canary.kafka-field@rider.example"


def test_an_email_in_the_wrong_field_reaches_nothing_in_clear(
    broker: TansuBroker, topic: str, workdir: Path, prefect_server: str
) -> None:
    records = trips(DAY, 60)
    records[5]["region"] = EMAIL  # a valid trip: any non-empty region is one by default
    records[6]["rider_id"] = f"  {EMAIL.upper()} "
    records[7]["fare_usd"] = EMAIL  # cannot be read as a number: a bad_record
    produce(broker, topic, records)
    proc = tripflow(
        "run",
        "--source",
        f"kafka:{topic}",
        "--date",
        DAY.isoformat(),
        "--json",
        cwd=workdir,
        env={
            "TRIPFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
            "TRIPFLOW_SOURCE_TIMEZONE": "America/New_York",
            "TRIPFLOW_PII_KEY": KEY,
            "PREFECT_LOGGING_LEVEL": "DEBUG",
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_nowhere([EMAIL, KEY], proc, workdir)
    report = json.loads(proc.stdout)
    assert report["rows"] == {"extracted": 60, "quarantined": 1, "loaded": 59}
    assert report["quarantine_reasons"]["bad_record"] == 1
    shaped = report["quality"]["email_shaped_values"]
    assert (shaped["region"], shaped["rider_id"], sum(shaped.values())) == (1, 1, 2)
    hashed = EmailHasher(KEY.encode())(pl.Series([EMAIL]))[0]
    ids = [records[i]["trip_id"] for i in (5, 6)]
    with duckdb.connect(str(workdir / ".tripflow" / "warehouse.duckdb"), read_only=True) as con:
        stored = con.execute(
            "SELECT trip_id, region, rider_id FROM analytics.trips WHERE trip_id IN (?, ?) "
            "ORDER BY trip_id",
            ids,
        ).fetchall()
    assert stored == [
        (ids[0], hashed, records[5]["rider_id"]),
        (ids[1], records[6]["region"], hashed),
    ]
