"""Kafka: one business day of JSON trip events, read as a bounded, re-readable range of offsets.

``--source kafka:TOPIC``. Brokers, consumer group, security protocol, SASL mechanism and extra
non-secret librdkafka options come from settings (``TRIPFLOW_KAFKA_*``); SASL credentials only
from ``TRIPFLOW_KAFKA_SASL_USERNAME``/``_PASSWORD`` (``tasks.config.kafka_credentials``). They are
never in the description, the fingerprint, a log line or the offset record.

How a day D is read
-------------------
- **Bounded.** Per partition, from ``offsets_for_times(start of D in the source timezone - the
  lateness margin)`` up to the high watermark taken when the read starts (exclusive). Partitions
  are read one after the other through explicitly *assigned* partitions (no group subscription,
  no rebalance, no committed offsets needed); a partition that delivers nothing for
  ``kafka_idle_timeout_s`` while offsets remain fails the read: it never waits forever.
- **Filtered by event time.** A message belongs to D when its ``pickup_ts`` (or ``date``) falls on D
  in the source timezone, exactly as for files: the decoded records become a frame that is typed
  and mapped by the ``trips`` format of ``tasks.formats``. The starting offset only narrows the
  scan: a broker whose ``offsets_for_times`` answers the earliest offset (the Tansu broker of the
  tests does) makes the read longer, never different.
- **Recorded.** The per-partition ranges read, and the counts, are written beside the parts
  (``tasks.staging.SOURCE_READ``); staging copies them into the raw manifest's ``checksums``
  (``source_read``), which the run ledger keeps. The fingerprint is a digest of those ranges.
- **Re-read the same.** When D has a completed raw read recorded in staging, a new run of D reads
  exactly the recorded ranges (``kafka_reread = "same"``, the default): a retry, a crash between
  read and publish, or a deliberate re-run gives the same rows. ``kafka_reread = "extend"`` keeps
  the recorded start and reads to the current high watermark: that picks up late events.
- **Late events.** An event of day X is *late* when it sits beyond (at or after) the end offset, in
  its partition, of X's last recorded read: it arrived after X was read (and so published). Every
  read counts them per day (a run of D+1 usually finds D's stragglers, since they carry recent
  broker timestamps); an ``extend`` re-run of X counts the ones it picks up. They are logged,
  recorded, and announced as a ``tripflow.kafka.late-events`` Prefect event.
- **Bad messages never stop the read.** A message that is not JSON, not an object, lacks a
  required key (``trip_id``, ``distance_km``, ``fare_usd``, ``region``, ``pickup_ts`` or ``date``),
  holds a value of the wrong JSON type (an object, a list, a boolean, a number for a timestamp) or
  a value that cannot be read as its kind becomes a raw row with ``_pickup_given`` null, which the
  transform quarantines as ``bad_record``, with its partition (``_source_file``) and offset
  (``_source_row``). It keeps the values that could be read (the e-mail hashed, as always, and an
  e-mail-shaped value in any other text field too: ``tasks.transforms.to_raw``); its day is its
  pickup day if that was readable, else the day of its broker timestamp. Nothing about a bad
  message is logged but counts: its content never reaches a log line or an error.
- **Bounded memory.** At most ``chunk_rows`` (100,000) decoded messages are held; each chunk is
  typed, hashed and written straight to a Parquet part (``part-PPPPP-NNNNN.parquet``).
- When the read finds events of D inside a Prefect run, a ``tripflow.kafka.day-found`` event names
  the day, the topic and the counts (for event-driven deployment triggers).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from time import monotonic
from typing import Any, Final
from zoneinfo import ZoneInfo

import orjson
import polars as pl
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from tasks.errors import InfrastructureError, UsageError
from tasks.formats import TRIPS, FormatContext, bad_value, type_columns, typed_expr
from tasks.sources.base import ExtractStats, HashEmail
from tasks.staging import PARQUET_WRITE, SOURCE_READ, Staging
from tasks.transforms import to_raw

log = logging.getLogger(__name__)

#: Decoded messages held before a chunk is typed and written as one Parquet part.
CHUNK_ROWS: Final = 100_000
#: Messages asked of the client per poll, and how long one poll may block.
POLL_MESSAGES: Final = 5_000
POLL_TIMEOUT_S: Final = 0.5
#: How long metadata, watermark and offset look-ups may take.
REQUEST_TIMEOUT_S: Final = 15.0
REREAD_MODES: Final = ("same", "extend")
#: librdkafka options that hold secrets: never accepted as settings (env only, see config).
SECRET_OPTIONS: Final = (
    "password",
    "secret",
    "sasl.username",
    "sasl.oauthbearer.config",
    "key.pem",
)
#: Settings-controlled options that ``kafka_options`` may not override.
OWN_OPTIONS: Final = (
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.partition.eof",
    "auto.offset.reset",
)
#: The kinds the ``trips`` format reads, by declared column name.
KINDS: Final = {spec.name: spec.kind for spec in TRIPS.columns}
STRING_SCHEMA: Final = {name: pl.String() for name in KINDS}


def parse_options(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` librdkafka options; secrets and the source's own options are refused."""
    options: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"kafka option {item!r}: expected KEY=VALUE (a librdkafka option)")
        if any(word in key.lower() for word in SECRET_OPTIONS):
            raise UsageError(
                f"kafka option {key!r} holds a secret: set TRIPFLOW_KAFKA_SASL_USERNAME and "
                "TRIPFLOW_KAFKA_SASL_PASSWORD in the environment instead"
            )
        if key in OWN_OPTIONS:
            raise UsageError(f"kafka option {key!r} is set by tripflow and cannot be overridden")
        options[key] = value.strip()
    return options


def source_file(topic: str, partition: int) -> str:
    """A partition's lineage name (zero-padded, so partitions sort in order)."""
    return f"kafka:{topic}/partition={partition:05d}"


@dataclass
class PartitionRead:
    """What was read of one partition: offsets ``start`` (inclusive) to ``end`` (exclusive)."""

    start: int
    end: int
    messages: int = 0
    on_day: int = 0
    bad_records: int = 0
    late_picked_up: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "start": self.start,
            "end": self.end,
            "messages": self.messages,
            "on_day": self.on_day,
            "bad_records": self.bad_records,
            "late_picked_up": self.late_picked_up,
        }


@dataclass
class DayRead:
    """The offset record of one day's read (what ``SOURCE_READ`` holds)."""

    topic: str
    run_date: date
    mode: str
    lateness_minutes: int
    partitions: dict[int, PartitionRead] = field(default_factory=dict)
    #: Late events found in this read, per day they belong to (ISO date -> count).
    late_events: dict[str, int] = field(default_factory=dict)

    def ranges(self) -> dict[int, tuple[int, int]]:
        return {p: (r.start, r.end) for p, r in sorted(self.partitions.items())}

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": "kafka",
            "topic": self.topic,
            "run_date": self.run_date.isoformat(),
            "mode": self.mode,
            "lateness_minutes": self.lateness_minutes,
            "partitions": {str(p): r.as_dict() for p, r in sorted(self.partitions.items())},
            "late_events": dict(sorted(self.late_events.items())),
            "messages": sum(r.messages for r in self.partitions.values()),
            "on_day": sum(r.on_day for r in self.partitions.values()),
            "bad_records": sum(r.bad_records for r in self.partitions.values()),
        }


def recorded_ranges(record: Mapping[str, Any] | None, topic: str) -> dict[int, tuple[int, int]]:
    """The partition ranges of a recorded read of ``topic`` (empty when there is none)."""
    if not record or record.get("kind") != "kafka" or record.get("topic") != topic:
        return {}
    return {int(p): (int(r["start"]), int(r["end"])) for p, r in record["partitions"].items()}


@dataclass
class _Chunk:
    """Decoded messages of one partition: one dict of text values (or None) per message."""

    rows: list[dict[str, str | None]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int | None] = field(default_factory=list)
    unreadable: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.offsets)

    def add(self, offset: int, timestamp: int | None, payload: bytes | None) -> None:
        row, bad = decode(payload)
        self.rows.append(row)
        self.offsets.append(offset)
        self.timestamps.append(timestamp)
        self.unreadable.append(bad)

    def frame(self) -> pl.DataFrame:
        values = pl.from_dicts(self.rows, schema=STRING_SCHEMA)
        return values.with_columns(
            pl.Series("_source_row", self.offsets, dtype=pl.Int64()),
            pl.Series("_broker_ms", self.timestamps, dtype=pl.Int64()),
            pl.Series("_unreadable", self.unreadable, dtype=pl.Boolean()),
        )


_ALIASES: Final = {name.lower(): name for name in KINDS}
#: Columns whose value may be a JSON number (read as its text, then typed like a CSV value).
_NUMBER_OK: Final = frozenset(name for name, kind in KINDS.items() if kind in ("string", "float"))
_REQUIRED: Final = tuple(tuple(group) for group in TRIPS.required)


def decode(payload: bytes | None) -> tuple[dict[str, str | None], bool]:
    """A message as text values of the declared columns, and whether it is unreadable.

    Keys match the contract's names case-insensitively; other keys are ignored. Unreadable: not
    JSON, not an object, without a required key (the format's required columns: a message is a
    file of one row, and a file without one is a schema error), or a value of the wrong JSON type
    (objects, lists and booleans anywhere; numbers for timestamps and dates). A key present with
    ``null`` is a missing value, not a missing key. Readable values are typed later.
    """
    if payload is None:
        return {}, True
    try:
        record = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return {}, True
    if type(record) is not dict:
        return {}, True
    row: dict[str, str | None] = {}
    bad = False
    for key, value in record.items():
        name = _ALIASES.get(key) or _ALIASES.get(key.strip().lower())
        if name is None:
            continue
        kind = type(value)
        if kind is str or value is None:
            row[name] = value
        elif (kind is int or kind is float) and name in _NUMBER_OK:
            row[name] = str(value)
        else:
            bad = True
    if not bad:
        bad = not all(any(name in row for name in group) for group in _REQUIRED)
    return row, bad


def contract_chunk(chunk: pl.DataFrame, timezone: str) -> pl.DataFrame:
    """Type and map decoded messages onto the contract; unreadable rows get ``_pickup_given`` null.

    Uses the ``trips`` format's own typing (``tasks.formats``), so a value reads the same from a
    Kafka message as from a CSV file. A row's day is its pickup day, else its ``date``; an
    unreadable row without either takes the day of its broker timestamp.
    """
    lf = chunk.lazy()
    schema = pl.Schema(STRING_SCHEMA)
    typed_checks = [
        e.name.suffix("__typed")
        for name, kind in KINDS.items()
        for e in typed_expr(name, kind, pl.String(), timezone)
    ]
    bad_any = pl.any_horizontal(
        [pl.col("_unreadable")]
        + [bad_value(name, kind, pl.String()) for name, kind in KINDS.items() if kind != "string"]
    )
    flags = lf.with_columns(typed_checks).select(
        _bad=bad_any,
        _broker_day=pl.from_epoch(pl.col("_broker_ms"), time_unit="ms")
        .dt.replace_time_zone("UTC")
        .dt.convert_time_zone(timezone)
        .dt.date(),
    )
    typed = type_columns(lf, TRIPS, schema, timezone)
    contract = TRIPS.to_contract(typed, FormatContext(timezone)).collect()
    flag_frame = flags.collect()
    bad = flag_frame.get_column("_bad")
    return contract.with_columns(
        _pickup_given=pl.when(bad).then(None).otherwise(pl.col("_pickup_given")),
        trip_date=pl.when(bad & pl.col("trip_date").is_null())
        .then(flag_frame.get_column("_broker_day"))
        .otherwise(pl.col("trip_date")),
    ).with_columns(_bad=bad)


class KafkaSource:
    def __init__(
        self,
        topic: str,
        *,
        bootstrap: str,
        group: str,
        timezone: str,
        region_set: frozenset[str] | None,
        staging_root: str | None = None,
        security_protocol: str = "PLAINTEXT",
        sasl_mechanism: str = "",
        options: Sequence[str] = (),
        credentials: Mapping[str, str] | None = None,
        lateness_minutes: int = 60,
        reread: str = "same",
        idle_timeout_s: float = 30.0,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        if not topic.strip():
            raise UsageError("--source kafka:TOPIC needs a topic")
        if reread not in REREAD_MODES:
            raise UsageError(f"kafka_reread must be one of {', '.join(REREAD_MODES)}: {reread!r}")
        if lateness_minutes < 0 or idle_timeout_s <= 0 or chunk_rows <= 0:
            raise UsageError("kafka: lateness must be >= 0, idle timeout and chunk rows > 0")
        self.topic = topic.strip()
        self.bootstrap = bootstrap
        self.group = group
        self.timezone = timezone
        self.region_set = region_set
        self.staging_root = staging_root
        self.lateness = timedelta(minutes=lateness_minutes)
        self.reread = reread
        self.idle_timeout_s = idle_timeout_s
        self.chunk_rows = chunk_rows
        self._config: dict[str, str] = {
            "security.protocol": security_protocol,
            **({"sasl.mechanism": sasl_mechanism} if sasl_mechanism else {}),
            **parse_options(options),
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "client.id": "tripflow",
            "enable.auto.commit": "false",
            "enable.auto.offset.store": "false",
            "enable.partition.eof": "true",
            # A recorded start that retention has deleted is an error, never a silent jump.
            "auto.offset.reset": "error",
            "isolation.level": "read_committed",
        }
        self._credentials = dict(credentials or {})
        self.description = f"kafka:{self.topic} ({bootstrap}, group {group})"
        #: The last read's record (None before ``extract``).
        self.last_read: DayRead | None = None
        self._recorded: dict[date, dict[int, tuple[int, int]]] = {}

    def __repr__(self) -> str:
        return f"KafkaSource({self.description})"

    # --- identity -----------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """The topic, brokers and, after a read, the offset ranges read (no credential)."""
        digest = hashlib.sha256(f"kafka\0{self.bootstrap}\0{self.topic}\0{self.timezone}".encode())
        if self.last_read is not None:
            digest.update(json.dumps(self.last_read.ranges(), sort_keys=True).encode())
        return digest.hexdigest()[:16]

    # --- state --------------------------------------------------------------------------------

    def recorded(self, day: date) -> dict[int, tuple[int, int]]:
        """The ranges of the last completed raw read of ``day`` (empty when there is none)."""
        if day not in self._recorded:
            self._recorded[day] = self._read_record(day)
        return self._recorded[day]

    def _read_record(self, day: date) -> dict[int, tuple[int, int]]:
        if self.staging_root is None:
            return {}
        try:
            manifest = Staging(self.staging_root).read("raw", day).manifest
        except InfrastructureError:
            return {}
        return recorded_ranges(manifest.get("checksums", {}).get("source_read"), self.topic)

    # --- the read -----------------------------------------------------------------------------

    def _consumer(self) -> Consumer:
        try:
            return Consumer({**self._config, **self._credentials})
        except (KafkaException, ValueError, TypeError):
            # The message may quote the configuration: name only the source.
            raise UsageError(f"{self.description}: invalid Kafka client configuration") from None

    def plan(self, consumer: Consumer, run_date: date) -> tuple[dict[int, tuple[int, int]], str]:
        """Per partition, the offsets to read, and the mode (``fresh``, ``same``, ``extend``)."""
        try:
            metadata = consumer.list_topics(self.topic, timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise InfrastructureError(
                f"{self.description}: cannot reach the brokers: {exc}"
            ) from exc
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            reason = topic.error if topic is not None and topic.error is not None else "not found"
            raise InfrastructureError(f"{self.description}: topic {self.topic!r}: {reason}")
        partitions = sorted(topic.partitions)
        recorded = self.recorded(run_date)
        if recorded and self.reread == "same":
            return recorded, "same"
        watermarks = {p: self._watermarks(consumer, p) for p in partitions}
        start_at = datetime.combine(run_date, time(), ZoneInfo(self.timezone)) - self.lateness
        wanted = [
            TopicPartition(self.topic, p, int(start_at.astimezone(UTC).timestamp() * 1000))
            for p in partitions
        ]
        try:
            found = consumer.offsets_for_times(wanted, timeout=REQUEST_TIMEOUT_S)
        except KafkaException as exc:
            raise InfrastructureError(f"{self.description}: offsets_for_times: {exc}") from exc
        plan: dict[int, tuple[int, int]] = {}
        for tp in found:
            low, high = watermarks[tp.partition]
            # -1 (OFFSET_END): no message at or after the time, so nothing of the day yet.
            start = high if tp.offset < 0 else min(max(tp.offset, low), high)
            if tp.partition in recorded:  # extend: keep the recorded start
                start = min(start, recorded[tp.partition][0])
            plan[tp.partition] = (start, high)
        return plan, "extend" if recorded else "fresh"

    def _watermarks(self, consumer: Consumer, partition: int) -> tuple[int, int]:
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=REQUEST_TIMEOUT_S, cached=False
            )
        except KafkaException as exc:
            raise InfrastructureError(
                f"{self.description}: partition {partition}: cannot read watermarks: {exc}"
            ) from exc
        return int(low), int(high)

    def extract(self, run_date: date, out_dir: Path, hash_email: HashEmail) -> ExtractStats:
        self._recorded.clear()
        consumer = self._consumer()
        try:
            plan, mode = self.plan(consumer, run_date)
            previous = self.recorded(run_date) if mode == "extend" else {}
            read = DayRead(self.topic, run_date, mode, int(self.lateness.total_seconds() // 60))
            counts = {"total": 0, "on_day": 0, "other_days": 0, "unattributed": 0}
            late: dict[date, int] = {}
            for partition, (start, end) in sorted(plan.items()):
                part = PartitionRead(start, end)
                read.partitions[partition] = part
                if start >= end:
                    continue
                for index, chunk in enumerate(self._chunks(consumer, partition, start, end)):
                    contract = contract_chunk(chunk.frame(), self.timezone)
                    self._count(contract, run_date, partition, part, previous, counts, late)
                    if (contract.get_column("trip_date") == run_date).any():
                        to_raw(
                            contract.drop("_bad").lazy(),
                            run_date,
                            source_file(self.topic, partition),
                            hash_email,
                        ).sink_parquet(
                            out_dir / f"part-{partition:05d}-{index:05d}.parquet", **PARQUET_WRITE
                        )
            read.late_events = {d.isoformat(): n for d, n in sorted(late.items())}
        finally:
            consumer.close()
        (out_dir / SOURCE_READ).write_text(
            json.dumps(read.as_dict(), indent=2, sort_keys=True), encoding="utf-8"
        )
        self.last_read = read
        self._report(read)
        return ExtractStats(
            counts["total"],
            counts["on_day"],
            counts["other_days"],
            counts["unattributed"],
            sum(1 for r in read.partitions.values() if r.end > r.start),
        )

    def _chunks(self, consumer: Consumer, partition: int, start: int, end: int) -> Iterator[_Chunk]:
        """The partition's messages in ``[start, end)``, as chunks of at most ``chunk_rows``."""
        consumer.assign([TopicPartition(self.topic, partition, start)])
        chunk = _Chunk()
        next_offset = start
        last_message = monotonic()
        try:
            while next_offset < end:
                messages = consumer.consume(
                    min(POLL_MESSAGES, self.chunk_rows - len(chunk), end - next_offset),
                    timeout=POLL_TIMEOUT_S,
                )
                if not messages:
                    if monotonic() - last_message >= self.idle_timeout_s:
                        raise InfrastructureError(
                            f"{self.description}: partition {partition}: no message for "
                            f"{self.idle_timeout_s:g} s at offset {next_offset} (reading up to "
                            f"{end}); the broker is unreachable or the offsets are gone"
                        )
                    continue
                last_message = monotonic()
                eof = False
                for message in messages:
                    if self._at_end(message, partition):
                        eof = True
                        continue
                    offset = int(message.offset() or 0)
                    if offset >= end:
                        eof = True
                        continue
                    kind, ms = message.timestamp()
                    chunk.add(offset, ms if kind else None, message.value())
                    next_offset = offset + 1
                if len(chunk) >= self.chunk_rows:
                    yield chunk
                    chunk = _Chunk()
                if eof:
                    if next_offset < end:
                        _logger().warning(
                            "%s: partition %d ended at offset %d, before its watermark %d "
                            "(transaction markers or compaction)",
                            self.description,
                            partition,
                            next_offset,
                            end,
                        )
                    break
            if len(chunk):
                yield chunk
        finally:
            consumer.unassign()

    def _at_end(self, message: Message, partition: int) -> bool:
        error = message.error()
        if error is None:
            return False
        if error.code() == KafkaError._PARTITION_EOF:
            return True
        raise InfrastructureError(
            f"{self.description}: partition {partition}: {error.name()}: {error.str()}"
        )

    def _count(
        self,
        contract: pl.DataFrame,
        run_date: date,
        partition: int,
        part: PartitionRead,
        previous: dict[int, tuple[int, int]],
        counts: dict[str, int],
        late: dict[date, int],
    ) -> None:
        days = contract.get_column("trip_date")
        on_day = days == run_date
        n_on_day = int(on_day.sum())
        part.messages += contract.height
        part.on_day += n_on_day
        part.bad_records += int((contract.get_column("_bad") & on_day).sum())
        counts["total"] += contract.height
        counts["on_day"] += n_on_day
        counts["unattributed"] += days.null_count()
        counts["other_days"] += int((days != run_date).sum())
        offsets = contract.get_column("_source_row")
        if partition in previous:
            picked = int((on_day & (offsets >= previous[partition][1])).sum())
            part.late_picked_up += picked
            if picked:
                late[run_date] = late.get(run_date, 0) + picked
        other = contract.filter(
            pl.col("trip_date").is_not_null() & (pl.col("trip_date") != run_date)
        )
        for day in other.get_column("trip_date").unique().sort().to_list():
            ranges = self.recorded(day)
            if partition not in ranges:
                continue
            n = other.filter(
                (pl.col("trip_date") == day) & (pl.col("_source_row") >= ranges[partition][1])
            ).height
            if n:
                late[day] = late.get(day, 0) + n

    # --- reporting ----------------------------------------------------------------------------

    def _report(self, read: DayRead) -> None:
        summary = read.as_dict()
        _logger().info(
            "%s: %s read of %s: %d messages, %d on the day, %d bad records, late events %s",
            self.description,
            read.mode,
            read.run_date,
            summary["messages"],
            summary["on_day"],
            summary["bad_records"],
            summary["late_events"] or "none",
        )
        if summary["on_day"]:
            emit_in_prefect(
                "tripflow.kafka.day-found",
                self.topic,
                {
                    "run_date": read.run_date.isoformat(),
                    "topic": self.topic,
                    "mode": read.mode,
                    "messages": summary["messages"],
                    "on_day": summary["on_day"],
                    "bad_records": summary["bad_records"],
                    "partitions": summary["partitions"],
                },
            )
        for day, count in summary["late_events"].items():
            emit_in_prefect(
                "tripflow.kafka.late-events",
                self.topic,
                {
                    "day": day,
                    "topic": self.topic,
                    "late_events": count,
                    "found_by_run_of": read.run_date.isoformat(),
                },
            )


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The Prefect run logger inside a Prefect run (so the line reaches the UI), else ours."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging import get_run_logger

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return log
    return get_run_logger()


def emit_in_prefect(event: str, topic: str, payload: dict[str, Any]) -> bool:
    """Emit a Prefect event about ``topic``, only inside a Prefect flow or task run."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.events import emit_event

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return False
    emit_event(
        event=event,
        resource={
            "prefect.resource.id": f"tripflow.kafka.topic.{topic}",
            "prefect.resource.name": topic,
        },
        payload=payload,
    )
    return True
