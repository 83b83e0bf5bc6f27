"""The pure transforms, on tiny inline frames (no I/O, no Prefect, no mocks)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, date, datetime
from decimal import Decimal

import polars as pl
import pytest

from tasks.contract import CLEAN_SCHEMA, CONTRACT_COLUMNS, QUARANTINE_SCHEMA, RAW_SCHEMA, REASONS
from tasks.formats import with_missing
from tasks.transforms import (
    EmailHasher,
    classified_rows,
    classify,
    clean_trips,
    later_duplicates,
    passing_rules,
    quality_warnings,
    quarantined_trips,
    reason_counts,
    region_daily,
    region_daily_and_warnings,
    repeated_id_hashes,
    to_raw,
)

DAY = date(2025, 11, 15)


def ts(hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 11, 15, hour, minute, tzinfo=UTC)


def raw(rows: list[dict[str, object]]) -> pl.LazyFrame:
    """Raw rows: defaults for every column, overridden per row."""
    base: dict[str, object] = {
        "trip_id": "T1",
        "trip_date": DAY,
        "pickup_ts": ts(8),
        "dropoff_ts": ts(8, 20),
        "distance_km": 5.0,
        "fare_usd": 10.0,
        "region": "us-east",
        "rider_id": "R1",
        "rider_email_hash": None,
        "driver_id": "D1",
        "payment_type": "card",
        "status": "completed",
        "_source_file": "a.csv",
        "_source_row": 1,
        "_pickup_given": True,
    }
    filled = [{**base, "_source_row": i + 1, **row} for i, row in enumerate(rows)]
    return pl.LazyFrame(filled, schema=RAW_SCHEMA)


def clean_of(rows: list[dict[str, object]]) -> pl.LazyFrame:
    """The clean trips of ``raw(rows)`` (no region set: any non-blank region is known)."""
    return clean_trips(classify(raw(rows), None), "r")


def reasons_of(
    frame: pl.LazyFrame, region_set: frozenset[str] | None = None
) -> dict[str, list[str]]:
    q = quarantined_trips(classify(frame, region_set), "run").collect()
    return dict(zip(q["trip_id"].to_list(), q["reasons"].to_list(), strict=True))


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"trip_id": None}, "missing_key"),
        ({"distance_km": None}, "missing_key"),
        ({"fare_usd": None}, "missing_key"),
        ({"region": None}, "missing_key"),
        ({"trip_date": None}, "missing_key"),
        ({"pickup_ts": None, "_pickup_given": True}, "missing_key"),
        ({"distance_km": 0.0}, "non_positive_distance"),
        ({"distance_km": -1.5}, "non_positive_distance"),
        ({"fare_usd": -0.01}, "negative_fare"),
        ({"dropoff_ts": ts(7, 59)}, "dropoff_before_pickup"),
        ({"region": "   "}, "unknown_region"),
        ({"_pickup_given": None}, "bad_record"),
    ],
)
def test_each_rule_quarantines_with_its_reason(row: dict[str, object], reason: str) -> None:
    frame = raw([{"trip_id": "OK"}, {"trip_id": row.get("trip_id", "BAD"), **row}])
    q = quarantined_trips(classify(frame, None), "run").collect()
    assert q.height == 1
    assert q["reasons"].to_list() == [[reason]]
    clean = clean_trips(classify(frame, None), "run").collect()
    assert clean["trip_id"].to_list() == ["OK"]


def test_boundaries_pass() -> None:
    frame = raw([{"trip_id": "Z", "fare_usd": 0.0, "dropoff_ts": ts(8)}])
    assert clean_trips(classify(frame, None), "r").collect().height == 1


def test_date_only_source_needs_no_pickup() -> None:
    frame = raw([{"pickup_ts": None, "dropoff_ts": None, "_pickup_given": False}])
    assert clean_trips(classify(frame, None), "r").collect().height == 1


def test_a_row_lists_every_reason_it_breaks() -> None:
    frame = raw([{"trip_id": "X", "distance_km": 0.0, "fare_usd": -3.0, "region": "mars"}])
    assert reasons_of(frame, frozenset({"us-east"})) == {
        "X": ["non_positive_distance", "negative_fare", "unknown_region"]
    }


def test_unknown_region_uses_the_declared_set() -> None:
    frame = raw([{"trip_id": "A", "region": "us-east"}, {"trip_id": "B", "region": "mars"}])
    assert reasons_of(frame, frozenset({"us-east"})) == {"B": ["unknown_region"]}
    assert reasons_of(frame, None) == {}


def test_duplicates_keep_the_first_by_file_then_row() -> None:
    frame = raw(
        [
            {"trip_id": "D", "_source_file": "b.csv", "_source_row": 1, "fare_usd": 1.0},
            {"trip_id": "D", "_source_file": "a.csv", "_source_row": 9, "fare_usd": 2.0},
            {"trip_id": "D", "_source_file": "a.csv", "_source_row": 3, "fare_usd": 3.0},
        ]
    )
    classified = classify(frame, None)
    clean = clean_trips(classified, "r").collect()
    assert clean["fare_usd"].to_list() == [Decimal("3.00")]
    q = quarantined_trips(classified, "r").collect().sort("_source_file", "_source_row")
    assert q["reasons"].to_list() == [["duplicate_trip_id"], ["duplicate_trip_id"]]
    assert q["_source_file"].to_list() == ["a.csv", "b.csv"]


def test_a_duplicate_breaking_another_rule_lists_only_that_rule() -> None:
    frame = raw(
        [
            {"trip_id": "D", "_source_row": 1, "distance_km": 0.0},
            {"trip_id": "D", "_source_row": 2},
            {"trip_id": "D", "_source_row": 3},
        ]
    )
    q = quarantined_trips(classify(frame, None), "r").collect().sort("_source_row")
    assert q["_source_row"].to_list() == [1, 3]
    assert q["reasons"].to_list() == [["non_positive_distance"], ["duplicate_trip_id"]]


def test_quarantined_plus_clean_is_everything() -> None:
    rows = [{"trip_id": f"T{i % 7}", "distance_km": float(i % 5)} for i in range(40)]
    classified = classify(raw(rows), None)
    clean = clean_trips(classified, "r").collect()
    q = quarantined_trips(classified, "r").collect()
    assert clean.height + q.height == 40
    assert clean["trip_id"].is_unique().all()
    assert dict(clean.schema) == CLEAN_SCHEMA
    assert dict(q.schema) == QUARANTINE_SCHEMA


def test_reason_counts_count_a_row_under_each_reason() -> None:
    frame = raw([{"trip_id": "X", "distance_km": 0.0, "fare_usd": -1.0}, {"trip_id": "Y"}])
    counts = reason_counts(quarantined_trips(classify(frame, None), "r"), REASONS).collect()
    assert counts.row(0, named=True) == {
        "missing_key": 0,
        "non_positive_distance": 1,
        "negative_fare": 1,
        "dropoff_before_pickup": 0,
        "unknown_region": 0,
        "duplicate_trip_id": 0,
        "bad_record": 0,
    }


def test_clean_derives_duration_fare_per_km_money_and_lineage() -> None:
    frame = raw([{"trip_id": "A", "distance_km": 4.0, "fare_usd": 10.005}])
    row = clean_trips(classify(frame, None), "run-1").collect().row(0, named=True)
    assert row["duration_min"] == 20.0
    assert row["fare_per_km"] == pytest.approx(2.5013, abs=1e-4)
    assert row["fare_usd"] == Decimal("10.00") or row["fare_usd"] == Decimal("10.01")
    assert (row["_run_id"], row["_source_file"], row["_source_row"]) == ("run-1", "a.csv", 1)


def test_region_daily_fare_per_km_is_total_over_total() -> None:
    clean = clean_of(
        [
            {"trip_id": "A", "distance_km": 1.0, "fare_usd": 10.0},
            {"trip_id": "B", "distance_km": 9.0, "fare_usd": 10.0},
            {"trip_id": "C", "region": "eu-west", "distance_km": 2.0, "fare_usd": 3.0},
        ]
    )
    out = region_daily(clean).collect()
    east = out.filter(pl.col("region") == "us-east").row(0, named=True)
    # (10 + 10) / (1 + 9) = 2.00, not the mean of 10.0 and 1.11 per km
    assert east["avg_fare_per_km"] == 2.0
    assert (east["trip_count"], east["total_distance_km"], east["total_fare_usd"]) == (
        2,
        10.0,
        Decimal("20.00"),
    )
    assert out["region"].to_list() == ["eu-west", "us-east"]


def test_region_daily_and_warnings_is_both_in_one_pass() -> None:
    """The stage's one pass gives ``region_daily``'s rows and ``quality_warnings``' day counts."""
    clean = clean_of(
        [
            {"trip_id": "A", "distance_km": 250.0, "fare_usd": 600.0},
            {"trip_id": "B", "distance_km": 9.0, "fare_usd": 501.0},
            {"trip_id": "C", "region": "eu-west", "distance_km": 201.0},
            {"trip_id": "D", "region": "eu-west", "distance_km": 2.0, "fare_usd": 3.0},
        ]
    )
    both = region_daily_and_warnings(clean).collect()
    assert both.drop("long_trips", "expensive_trips").equals(region_daily(clean).collect())
    assert both.select(pl.col("long_trips", "expensive_trips").sum()).row(0) == (2, 2)
    assert quality_warnings(clean).collect().row(0) == (2, 2)


def test_email_hash_is_keyed_normalized_and_never_clear() -> None:
    key = b"k" * 32
    hasher = EmailHasher(key)
    out = hasher(pl.Series(["Rider@Example.com", " rider@example.com", None, "other@x.org"]))
    expected = hmac.new(key, b"rider@example.com", hashlib.sha256).hexdigest()[:32]
    assert out.to_list()[:3] == [expected, expected, None]
    assert out[3] != expected
    assert EmailHasher(b"another key")(pl.Series(["rider@example.com"]))[0] != expected


def test_to_raw_takes_only_the_day_and_hashes_pii() -> None:
    contract = pl.LazyFrame(
        {
            "trip_id": ["A", "B", "C"],
            "trip_date": [DAY, date(2025, 11, 14), None],
            "rider_email": ["a@x.org", "b@x.org", "c@x.org"],
            "_source_row": [1, 2, 3],
            "_pickup_given": [True, True, True],
        }
    )
    contract = with_missing(contract, CONTRACT_COLUMNS)
    out = to_raw(contract, DAY, "f.csv", EmailHasher(b"key")).collect()
    assert out["trip_id"].to_list() == ["A"]
    assert "rider_email" not in out.columns
    assert out["rider_email_hash"][0] not in ("a@x.org", None)
    assert out["_source_file"].to_list() == ["f.csv"]
    assert list(out.columns) == list(RAW_SCHEMA)


@pytest.mark.parametrize(
    "key",
    [
        b"k" * 32,
        b"long key " * 10,  # longer than a SHA-256 block: hashed first, as HMAC does
        "clé-ключ-鍵".encode(),  # UTF-8 beyond ASCII, as TRIPFLOW_PII_KEY may be
        bytes(range(256)),  # not UTF-8 (a hand-written key file): the standard library's path
    ],
    ids=["32-bytes", "longer-than-a-block", "utf8-text", "not-utf8"],
)
def test_email_hasher_is_hmac_sha256_for_any_key(key: bytes) -> None:
    hasher = EmailHasher(key)
    assert hasher.native == (key != bytes(range(256)))
    values = [f"u{i}@x.org" for i in range(40)] + ["  Élan@Exämple.COM ", "", None, "u3@x.org"]
    got = hasher(pl.Series("rider_email", values, dtype=pl.String))
    want = [
        None if v is None else hmac.new(key, v.strip().lower().encode(), "sha256").hexdigest()[:32]
        for v in values
    ]
    assert got.name == "rider_email"
    assert got.to_list() == want


def test_repeated_trip_ids_found_bucket_by_bucket_are_the_same_as_in_one_pass() -> None:
    ids = [f"t{i % 37}" if i % 5 == 0 else f"u{i}" for i in range(400)]
    frame = pl.LazyFrame({"trip_id": ids, "_reason_bits": [0] * 400}).with_columns(
        pl.col("_reason_bits").cast(pl.UInt8)
    )
    whole = set(repeated_id_hashes(frame).collect()["_h"])
    assert len(whole) == 37  # t0 .. t36, each more than once
    buckets = [set(repeated_id_hashes(frame, 3, b).collect()["_h"]) for b in range(3)]
    assert all(buckets), "every bucket has some of the 37 repeated ids"
    assert set().union(*buckets) == whole
    assert sum(len(b) for b in buckets) == len(whole)


def test_the_stage_filters_on_the_scan_and_gets_what_classify_gets() -> None:
    """The transform stage filters raw rows on the scan itself (``classified_rows``), with the
    repeated trip_ids looked for among every raw row: the same clean and quarantined rows, with
    the same reasons, as ``classify`` (candidates among valid rows only) then a filter."""
    rows = [
        {
            "trip_id": f"T{i % 9}",
            "_source_file": "ab"[i % 2] + ".csv",
            "_source_row": i,
            "distance_km": float(i % 5),
            "fare_usd": -1.0 if i % 11 == 0 else 2.0,
            "region": "mars" if i % 13 == 0 else "us-east",
        }
        for i in range(60)
    ]
    frame = raw(rows)
    regions = frozenset({"us-east"})
    passing = passing_rules(frame, regions)
    later = later_duplicates(passing, repeated_id_hashes(frame).collect()).collect()
    assert later.height > 0
    order = ("_source_file", "_source_row")
    for valid, pick in ((True, clean_trips), (False, quarantined_trips)):
        expected = pick(classify(frame, regions), "r").collect().sort(order)
        got = pick(classified_rows(frame, regions, later, valid=valid), "r").collect().sort(order)
        assert got.height > 0
        assert got.equals(expected)
