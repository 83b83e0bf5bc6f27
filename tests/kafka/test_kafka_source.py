"""The Kafka source against a real Kafka-protocol broker: Tansu (``tansu.py``), a stand-in for a
managed Kafka (Amazon MSK, Confluent Cloud). Each test produces trips on its own three-partition
topic across business days and reads one day, through the source alone or through the pipeline's
real stages (staging on disk, DuckDB as the warehouse)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import polars as pl
import pytest
from tansu import TansuBroker

from tasks import stages
from tasks.config import Settings
from tasks.contract import QUARANTINE_SCHEMA, RAW_SCHEMA
from tasks.errors import InfrastructureError, UsageError
from tasks.sources import make_source
from tasks.sources.base import ExtractStats
from tasks.sources.kafka import KafkaSource, decode, parse_options, source_file
from tasks.staging import StagedDataset, Staging
from tasks.transforms import EmailHasher

TZ = "America/New_York"
DAY = date(2025, 11, 15)
NEXT = DAY + timedelta(days=1)
PREV = DAY - timedelta(days=1)


def ms(instant: datetime) -> int:
    return int(instant.timestamp() * 1000)


def trips(day: date, count: int, *, prefix: str = "K") -> list[dict[str, Any]]:
    """``count`` trips, pickups spread over ``day`` (local time in ``TZ``), in contract names."""
    midnight = datetime.combine(day, time(), ZoneInfo(TZ))
    out = []
    for i in range(count):
        pickup = midnight + timedelta(seconds=int(i * 86_399 / max(1, count - 1)))
        out.append(
            {
                "trip_id": f"{prefix}{day:%Y%m%d}-{i:06d}",
                "pickup_ts": pickup.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                "dropoff_ts": (pickup + timedelta(minutes=15)).astimezone(UTC).isoformat(),
                "distance_km": round(1.5 + (i % 17) * 0.7, 2),
                "fare_usd": round(5.0 + (i % 23) * 1.15, 2),
                "region": ("us-east", "us-west", "eu-west")[i % 3],
                "rider_id": f"R{i % 97:05d}",
                "rider_email": f"Rider{i % 97}@Example.com",
                "driver_id": f"D{i % 13:04d}",
                "payment_type": "card",
                "status": "completed",
            }
        )
    return out


def produce(
    broker: TansuBroker,
    topic: str,
    records: list[dict[str, Any]],
    *,
    delay: timedelta | None = None,
) -> dict[str, tuple[int, int]]:
    """Produce trips (partition by index, broker time = pickup + ``delay``); trip_id -> offset."""
    delay = delay if delay is not None else timedelta(minutes=20)
    messages = []
    for i, record in enumerate(records):
        pickup = datetime.fromisoformat(record["pickup_ts"].replace("Z", "+00:00"))
        messages.append((i % 3, json.dumps(record).encode(), ms(pickup + delay)))
    delivered = broker.produce(topic, [(p, v, t) for p, v, t in messages])
    # Deliveries are reported in order within each partition.
    by_partition: dict[int, list[int]] = {}
    for partition, offset in delivered:
        by_partition.setdefault(partition, []).append(offset)
    where: dict[str, tuple[int, int]] = {}
    cursor = dict.fromkeys(by_partition, 0)
    for i, record in enumerate(records):
        partition = i % 3
        where[record["trip_id"]] = (partition, by_partition[partition][cursor[partition]])
        cursor[partition] += 1
    return where


def source(broker: TansuBroker, topic: str, root: Path, **kwargs: Any) -> KafkaSource:
    return KafkaSource(
        topic,
        bootstrap=broker.bootstrap,
        group="tripflow-tests",
        timezone=TZ,
        region_set=None,
        staging_root=str(root),
        idle_timeout_s=kwargs.pop("idle_timeout_s", 10),
        chunk_rows=kwargs.pop("chunk_rows", 400),
        **kwargs,
    )


def extract(
    src: KafkaSource, day: date, root: Path, run_id: str
) -> tuple[StagedDataset, ExtractStats, pl.DataFrame]:
    staging = Staging(str(root))
    with staging.write("raw", day, run_id) as folder:
        stats = src.extract(day, folder, EmailHasher(b"test-key"))
    raw = staging.read("raw", day)
    frame = raw.scan(RAW_SCHEMA).collect().sort("_source_file", "_source_row")
    return raw, stats, frame


def watermarks(broker: TansuBroker, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "probe"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(3)
        }
    finally:
        consumer.close()


# --- the day's rows, exactly --------------------------------------------------------------------


def test_reads_exactly_the_day(broker: TansuBroker, topic: str, tmp_path: Path) -> None:
    days = {d: trips(d, 1000) for d in (PREV, DAY, NEXT)}
    where: dict[str, tuple[int, int]] = {}
    for records in days.values():
        where |= produce(broker, topic, records)
    src = source(broker, topic, tmp_path)
    before = src.fingerprint()
    raw, stats, frame = extract(src, DAY, tmp_path, "run-1")

    expected = sorted(r["trip_id"] for r in days[DAY])
    assert sorted(frame["trip_id"].to_list()) == expected
    assert dict(frame.schema) == RAW_SCHEMA
    assert frame["trip_date"].unique().to_list() == [DAY]
    # Lineage: each row names its partition and offset.
    for row in frame.select("trip_id", "_source_file", "_source_row").iter_rows():
        partition, offset = where[row[0]]
        assert (row[1], row[2]) == (source_file(topic, partition), offset)
    # PII hashed; the first trip of the day starts at local midnight (05:00 UTC).
    assert frame["rider_email_hash"].str.contains("@").sum() == 0
    assert frame["rider_email_hash"].str.len_chars().unique().to_list() == [32]
    first = frame.sort("pickup_ts").row(0, named=True)
    assert first["pickup_ts"] == datetime(2025, 11, 15, 5, 0, tzinfo=UTC)
    # Tansu's offsets_for_times answers the earliest offset: every message was scanned.
    assert stats == ExtractStats(3000, 1000, 2000, 0, 3)
    # The range read, per partition, is in the manifest (and so in the run ledger).
    record = raw.manifest["checksums"]["source_read"]
    high = watermarks(broker, topic)
    assert record["mode"] == "fresh" and record["topic"] == topic
    assert {int(p): (r["start"], r["end"]) for p, r in record["partitions"].items()} == {
        p: (0, high[p]) for p in range(3)
    }
    assert record["on_day"] == 1000 and record["late_events"] == {}
    # Bounded memory: chunks of 400 messages, each written as its own part.
    assert len(raw.files) > 3
    assert src.fingerprint() != before


# --- re-runs: the same range, the same rows ------------------------------------------------------


def test_rerun_reads_the_same_range(broker: TansuBroker, topic: str, tmp_path: Path) -> None:
    produce(broker, topic, trips(DAY, 600) + trips(NEXT, 300))
    src1 = source(broker, topic, tmp_path)
    first_raw, first_stats, first = extract(src1, DAY, tmp_path, "r1")
    # New events of the day arrive after the first read: a re-run still reads the recorded range.
    produce(broker, topic, trips(DAY, 45, prefix="NEW"))
    src = source(broker, topic, tmp_path)
    second_raw, second_stats, second = extract(src, DAY, tmp_path, "r2")
    assert second.equals(first)
    assert second_stats == first_stats
    read1 = first_raw.manifest["checksums"]["source_read"]
    read2 = second_raw.manifest["checksums"]["source_read"]
    assert read2["mode"] == "same"
    assert read2["partitions"] == read1["partitions"]
    assert (
        second_raw.manifest["checksums"]["fare_usd_sum"]
        == (first_raw.manifest["checksums"]["fare_usd_sum"])
    )
    assert src.fingerprint() == src1.fingerprint()
    # ``extend`` keeps the recorded start, reads to the new watermark and counts the late events.
    ext = source(broker, topic, tmp_path, reread="extend")
    raw, _, third = extract(ext, DAY, tmp_path, "r3")
    assert third.height == 645
    assert set(third["trip_id"]) - set(first["trip_id"]) == {
        r["trip_id"] for r in trips(DAY, 45, prefix="NEW")
    }
    record = raw.manifest["checksums"]["source_read"]
    assert record["mode"] == "extend"
    assert record["late_events"] == {DAY.isoformat(): 45}
    assert sum(p["late_picked_up"] for p in record["partitions"].values()) == 45
    for p, r in record["partitions"].items():
        assert r["start"] == read1["partitions"][p]["start"]


# --- through the pipeline's stages: crash before publish, quarantine ---------------------------


def settings(broker: TansuBroker, topic: str, root: Path) -> Settings:
    return Settings(
        source=f"kafka:{topic}",
        staging=str(root / "staging"),
        warehouse=f"duckdb:{root / 'warehouse.duckdb'}",
        source_timezone=TZ,
        pii_key="test-pii-key",
        pii_key_file=str(root / "pii.key"),
        kafka_bootstrap=broker.bootstrap,
        kafka_group="tripflow-tests",
        kafka_idle_timeout_s=10,
    )


def publish_day(ctx: stages.RunContext) -> tuple[stages.ExtractOutput, int]:
    """Run every stage of a day, as the daily flow does, up to publish."""
    from tasks.report import RunReport

    report = RunReport(ctx)
    report.extracted = stages.extract(ctx)
    report.transformed = stages.transform(ctx)
    report.loaded = stages.load(ctx)
    report.checks = stages.validate(
        ctx, report.rows["extracted"], report.rows["quarantined"], report.loaded
    )
    assert all(c.passed for c in report.checks), [c.as_dict() for c in report.checks]
    return report.extracted, stages.publish(ctx, report.loaded, report.ledger("published"))


def test_crash_between_read_and_publish_rereads_the_range(
    broker: TansuBroker, topic: str, tmp_path: Path
) -> None:
    produce(broker, topic, trips(DAY, 900) + trips(NEXT, 200))
    cfg = settings(broker, topic, tmp_path)
    # Run 1 reads, transforms and loads the day, then dies before publishing.
    crashed = stages.RunContext.create("run-crashed", DAY, cfg)
    read1 = stages.extract(crashed)
    stages.transform(crashed)
    stages.load(crashed)
    # More of the day arrives before the retry.
    produce(broker, topic, trips(DAY, 30, prefix="AFTER"))
    ctx = stages.RunContext.create("run-retry", DAY, cfg)
    read2, published = publish_day(ctx)
    assert (
        read2.checksums["source_read"]["partitions"]
        == (read1.checksums["source_read"]["partitions"])
    )
    assert read2.rows == read1.rows == 900
    assert read2.source_fingerprint == read1.source_fingerprint
    assert published == 900
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as db:
        ids = {r[0] for r in db.execute("SELECT trip_id FROM analytics.trips").fetchall()}
        ledger = db.execute(
            "SELECT stages FROM analytics.runs WHERE run_id = 'run-retry' AND status = 'published'"
        ).fetchone()
    assert ids == {r["trip_id"] for r in trips(DAY, 900)}
    assert ledger is not None
    stages_json = json.loads(ledger[0]) if isinstance(ledger[0], str) else ledger[0]
    ranges = stages_json["raw"]["source_read"]["partitions"]
    assert ranges == read1.checksums["source_read"]["partitions"]


def test_bad_messages_are_quarantined_with_their_offsets(
    broker: TansuBroker, topic: str, tmp_path: Path
) -> None:
    good = trips(DAY, 300)
    produce(broker, topic, good)
    noon = ms(datetime.combine(DAY, time(12), ZoneInfo(TZ)))
    base = dict(good[0])
    bad_values = [
        b"not json at all",
        b"\xff\xfe\x00garbage",
        json.dumps([1, 2, 3]).encode(),
        json.dumps({**base, "trip_id": "BAD-distance", "distance_km": "twelve"}).encode(),
        json.dumps({**base, "trip_id": "BAD-epoch", "pickup_ts": 1763208000}).encode(),
        json.dumps({**base, "trip_id": "BAD-region", "region": {"name": "x"}}).encode(),
        json.dumps({**base, "trip_id": "BAD-time", "pickup_ts": "2025-11-15 25:61"}).encode(),
        json.dumps(
            {k: v for k, v in base.items() if k != "region"} | {"trip_id": "BAD-key"}
        ).encode(),
    ]
    delivered = broker.produce(topic, [(i % 3, v, noon) for i, v in enumerate(bad_values)])
    ctx = stages.RunContext.create("run-bad", DAY, settings(broker, topic, tmp_path))
    extracted, published = publish_day(ctx)
    assert extracted.rows == 308 and published == 300
    quarantine = (
        Staging(ctx.settings.staging).read("quarantine", DAY).scan(QUARANTINE_SCHEMA).collect()
    )
    bad = quarantine.filter(pl.col("reasons").list.contains("bad_record"))
    assert bad.height == 8
    assert sorted(zip(bad["_source_file"], bad["_source_row"], strict=True)) == sorted(
        (source_file(topic, p), o) for p, o in delivered
    )
    # What could be read is kept (the e-mail hashed); the day is the broker time's.
    assert set(bad["trip_id"].drop_nulls()) == {
        "BAD-distance",
        "BAD-epoch",
        "BAD-region",
        "BAD-time",
        "BAD-key",
    }
    assert bad["trip_date"].unique().to_list() == [DAY]
    assert bad["rider_email_hash"].drop_nulls().str.contains("@").sum() == 0
    assert extracted.checksums["source_read"]["bad_records"] == 8
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as db:
        rows = db.execute(
            "SELECT _source_file, _source_row FROM analytics.trips_quarantine "
            "WHERE list_contains(reasons, 'bad_record')"
        ).fetchall()
    assert sorted(rows) == sorted((source_file(topic, p), o) for p, o in delivered)


# --- late events ------------------------------------------------------------------------------


def test_late_events_are_counted_and_picked_up(
    broker: TansuBroker, topic: str, tmp_path: Path
) -> None:
    produce(broker, topic, trips(DAY, 300) + trips(NEXT, 300))
    extract(source(broker, topic, tmp_path), DAY, tmp_path, "day-1")
    # 25 events of DAY arrive the next afternoon (after DAY was read), with more of NEXT.
    stragglers = trips(DAY, 25, prefix="LATE")
    produce(broker, topic, stragglers, delay=timedelta(hours=30))
    produce(broker, topic, trips(NEXT, 50, prefix="MORE"))
    # The run of the next day finds them beyond DAY's recorded watermark, and says so.
    nxt = source(broker, topic, tmp_path)
    raw, stats, frame = extract(nxt, NEXT, tmp_path, "next-1")
    assert frame.height == 350
    assert stats == ExtractStats(675, 350, 325, 0, 3)
    record = raw.manifest["checksums"]["source_read"]
    assert record["late_events"] == {DAY.isoformat(): 25}
    assert nxt.last_read is not None and nxt.last_read.late_events == {DAY.isoformat(): 25}
    # Re-running DAY with ``extend`` picks them up and reports them.
    raw, _, frame = extract(
        source(broker, topic, tmp_path, reread="extend"), DAY, tmp_path, "day-2"
    )
    assert frame.height == 325
    assert raw.manifest["checksums"]["source_read"]["late_events"] == {DAY.isoformat(): 25}
    # A re-read of NEXT now finds none: DAY's recorded read covers them.
    raw, _, _ = extract(source(broker, topic, tmp_path), NEXT, tmp_path, "next-2")
    assert raw.manifest["checksums"]["source_read"]["late_events"] == {}


# --- configuration, decoding, no secret anywhere ----------------------------------------------


def test_decode_keeps_values_as_text_and_flags_wrong_types() -> None:
    full = {"trip_id": "a", "distance_km": 3, "fare_usd": 2.5, "region": None, "date": "2025-11-15"}
    row, bad = decode(json.dumps({**full, "Trip_ID": "b", "extra": [1]}).encode())
    assert not bad
    assert row == {
        "trip_id": "b",
        "distance_km": "3",
        "fare_usd": "2.5",
        "region": None,
        "date": "2025-11-15",
    }
    wrong = [{"distance_km": True}, {"date": 17}, {"region": ["x"]}]
    for payload in [b"{", b"3", b'"x"', None] + [json.dumps(full | w).encode() for w in wrong]:
        assert decode(payload)[1], payload
    # A required key missing altogether is a bad record; present as null, a missing value.
    without_region = {k: v for k, v in full.items() if k != "region"}
    assert decode(json.dumps(without_region).encode())[1]
    assert not decode(json.dumps(full).encode())[1]


def test_make_source_and_no_secret_in_description(
    broker: TansuBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIPFLOW_KAFKA_SASL_USERNAME", "svc-user")
    monkeypatch.setenv("TRIPFLOW_KAFKA_SASL_PASSWORD", "hunter2-secret")
    cfg = replace(
        Settings(),
        source="kafka:trips",
        kafka_bootstrap=broker.bootstrap,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
    )
    src = make_source(cfg)
    assert isinstance(src, KafkaSource)
    shown = f"{src.description} {src.fingerprint()} {src!r}"
    assert "hunter2" not in shown and "svc-user" not in shown
    assert src.description == f"kafka:trips ({broker.bootstrap}, group tripflow)"
    with pytest.raises(UsageError, match="secret"):
        parse_options(["sasl.password=x"])
    with pytest.raises(UsageError, match="overridden"):
        parse_options(["group.id=other"])
    assert parse_options(["ssl.ca.location=/etc/ca.pem"]) == {"ssl.ca.location": "/etc/ca.pem"}
    with pytest.raises(UsageError):
        make_source(replace(cfg, kafka_reread="sometimes"))


def test_a_broker_that_goes_away_fails_the_read_never_hangs(tmp_path: Path) -> None:
    """A private broker, stopped after the read is planned: the read fails within the idle
    timeout, naming the topic and offset, and stages nothing."""
    private = TansuBroker().start()
    try:
        private.create_topic("vanishing", partitions=3)
        produce(private, "vanishing", trips(DAY, 30))
        src = source(private, "vanishing", tmp_path, idle_timeout_s=2)
        plan = src.plan

        def plan_then_lose_the_broker(*args: Any) -> Any:
            found = plan(*args)
            private.stop()
            return found

        src.plan = plan_then_lose_the_broker  # type: ignore[method-assign]
        started = datetime.now(UTC)
        with pytest.raises(InfrastructureError, match=r"vanishing.*no message for 2 s"):
            extract(src, DAY, tmp_path, "lost")
        assert datetime.now(UTC) - started < timedelta(seconds=30)
        assert not Staging(str(tmp_path)).folder("raw", DAY).exists()
    finally:
        private.stop()
