"""``tripflow run --source kafka:TOPIC`` end to end, as a user runs it: a subprocess, the real
Prefect server of ``tests/conftest.py``, DuckDB, and Tansu (``tansu.py``) as a stand-in for a
managed Kafka (Amazon MSK, Confluent Cloud). Published, the offsets read in the run ledger, the
``tripflow.kafka.day-found`` event on the Prefect server, and no credential anywhere."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from helpers import tripflow
from tansu import TansuBroker
from test_kafka_source import DAY, NEXT, produce, trips

PASSWORD = "kafka-secret-do-not-leak"


def _events(api: str, name: str) -> list[dict[str, Any]]:
    body = json.dumps(
        {
            "filter": {
                "event": {"name": [name]},
                "occurred": {
                    "since": (date.today() - timedelta(days=2)).isoformat() + "T00:00:00Z",
                    "until": (date.today() + timedelta(days=2)).isoformat() + "T00:00:00Z",
                },
            },
            "limit": 50,
        }
    ).encode()
    request = urllib.request.Request(
        f"{api}/events/filter", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return list(json.loads(response.read())["events"])


def test_run_source_kafka_publishes_the_day(
    broker: TansuBroker, topic: str, workdir: Path, prefect_server: str
) -> None:
    produce(broker, topic, trips(DAY, 1200) + trips(NEXT, 300))
    env = {
        "TRIPFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
        "TRIPFLOW_SOURCE_TIMEZONE": "America/New_York",
        "TRIPFLOW_KAFKA_SASL_USERNAME": "svc-tripflow",
        "TRIPFLOW_KAFKA_SASL_PASSWORD": PASSWORD,
    }
    proc = tripflow(
        "run",
        "--source",
        f"kafka:{topic}",
        "--date",
        DAY.isoformat(),
        "--json",
        cwd=workdir,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "published"
    assert report["rows"]["extracted"] == 1200 and report["rows"]["loaded"] == 1200
    assert report["source"].startswith(f"kafka:{topic} ({broker.bootstrap}")
    # No credential in the output, staging or the warehouse.
    assert PASSWORD not in proc.stdout and PASSWORD not in proc.stderr
    for path in (workdir / ".tripflow").rglob("*"):
        if path.is_file() and path.suffix != ".duckdb":
            assert PASSWORD.encode() not in path.read_bytes(), path
    with duckdb.connect(str(workdir / ".tripflow" / "warehouse.duckdb"), read_only=True) as db:
        row = db.execute(
            "SELECT stages, source, source_fingerprint FROM analytics.runs "
            "WHERE status = 'published'"
        ).fetchone()
    assert row is not None and PASSWORD not in repr(row)
    stages = json.loads(row[0]) if isinstance(row[0], str) else row[0]
    read = stages["raw"]["source_read"]
    assert read["topic"] == topic and read["on_day"] == 1200
    assert sorted(read["partitions"]) == ["0", "1", "2"]
    # The run's own report says what was read, late events included.
    assert report["quality"]["source_read"] == read
    assert "late_events" in read
    # The day-found event reached the Prefect server (for event-driven triggers).
    deadline = time.monotonic() + 30
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        events = [
            e
            for e in _events(prefect_server, "tripflow.kafka.day-found")
            if e["payload"].get("topic") == topic
        ]
        if events:
            break
        time.sleep(1)
    assert events, "no tripflow.kafka.day-found event on the Prefect server"
    payload = events[0]["payload"]
    assert payload["run_date"] == DAY.isoformat() and payload["on_day"] == 1200
    assert events[0]["resource"]["prefect.resource.id"] == f"tripflow.kafka.topic.{topic}"


def test_sigkilled_before_publish_the_rerun_reads_the_same_offsets(
    broker: TansuBroker, topic: str, workdir: Path, prefect_server: str
) -> None:
    """A real SIGKILL after read, transform and load (``TRIPFLOW_KILL_AT=validate``, the fault
    tests' kill points), more events of the day, then the re-run: it publishes what the killed
    run read, offset for offset, and nothing that arrived after."""
    faults = pytest.importorskip("tasks.faults")
    produce(broker, topic, trips(DAY, 700) + trips(NEXT, 100))
    env = {
        "TRIPFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
        "TRIPFLOW_SOURCE_TIMEZONE": "America/New_York",
    }
    args = ("run", "--source", f"kafka:{topic}", "--date", DAY.isoformat(), "--json")
    killed = tripflow(*args, cwd=workdir, env={**env, faults.KILL_ENV: "validate"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    manifest = workdir / ".tripflow" / "staging" / "raw" / f"date={DAY}" / "_manifest.json"
    read_by_killed = json.loads(manifest.read_text())["checksums"]["source_read"]
    produce(broker, topic, trips(DAY, 40, prefix="AFTER"))
    proc = tripflow(*args, cwd=workdir, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "published" and report["rows"]["loaded"] == 700
    with duckdb.connect(str(workdir / ".tripflow" / "warehouse.duckdb"), read_only=True) as db:
        row = db.execute("SELECT stages FROM analytics.runs WHERE status = 'published'").fetchone()
        ids = {r[0] for r in db.execute("SELECT trip_id FROM analytics.trips").fetchall()}
    assert row is not None
    stages = json.loads(row[0]) if isinstance(row[0], str) else row[0]
    assert stages["raw"]["source_read"]["partitions"] == read_by_killed["partitions"]
    assert stages["raw"]["source_read"]["mode"] == "same"
    assert ids == {r["trip_id"] for r in trips(DAY, 700)}


def test_no_event_outside_prefect() -> None:
    from tasks.sources import kafka

    assert kafka.emit_in_prefect("tripflow.kafka.day-found", "t", {}) is False
