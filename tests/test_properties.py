"""Property-based tests of the transforms (hypothesis): nothing is lost, totals reconcile, and the
same input always gives the same output."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.contract import RAW_SCHEMA
from tasks.transforms import classify, clean_trips, quarantined_trips, region_daily

DAY = date(2025, 11, 15)
START = datetime(2025, 11, 15, tzinfo=UTC)

rows = st.lists(
    st.fixed_dictionaries(
        {
            "trip_id": st.one_of(st.none(), st.sampled_from([f"T{i}" for i in range(12)])),
            "distance_km": st.one_of(st.none(), st.floats(-5, 500, allow_nan=False)),
            "fare_usd": st.one_of(st.none(), st.floats(-50, 1000, allow_nan=False)),
            "region": st.one_of(st.none(), st.sampled_from(["us-east", "eu-west", "", "mars"])),
            "minutes": st.integers(-30, 600),
            "file": st.sampled_from(["a.csv", "b.csv"]),
        }
    ),
    max_size=40,
)


def frame(data: list[dict[str, object]]) -> pl.LazyFrame:
    records = [
        {
            "trip_id": r["trip_id"],
            "trip_date": DAY,
            "pickup_ts": START + timedelta(hours=1),
            "dropoff_ts": START + timedelta(hours=1, minutes=int(r["minutes"])),  # type: ignore[call-overload]
            "distance_km": r["distance_km"],
            "fare_usd": r["fare_usd"],
            "region": r["region"],
            "rider_id": None,
            "rider_email_hash": None,
            "driver_id": None,
            "payment_type": None,
            "status": None,
            "_source_file": r["file"],
            "_source_row": i + 1,
            "_pickup_given": True,
        }
        for i, r in enumerate(data)
    ]
    return pl.LazyFrame(records, schema=RAW_SCHEMA)


@settings(max_examples=60, deadline=None)
@given(rows)
def test_quarantined_plus_loaded_is_extracted_and_totals_reconcile(
    data: list[dict[str, object]],
) -> None:
    lf = frame(data)
    classified = classify(lf, frozenset({"us-east", "eu-west"}))
    clean = clean_trips(classified, "r").collect()
    quarantine = quarantined_trips(classified, "r").collect()
    assert clean.height + quarantine.height == len(data)
    assert clean["trip_id"].is_unique().all()
    assert all(quarantine["reasons"].list.len() > 0) if quarantine.height else True
    regions = region_daily(clean.lazy()).collect()
    assert regions["trip_count"].sum() == clean.height
    fares = sum(clean["fare_usd"].to_list(), Decimal("0"))
    assert sum(regions["total_fare_usd"].to_list(), Decimal("0")) == fares


@settings(max_examples=30, deadline=None)
@given(rows)
def test_transforms_are_deterministic(data: list[dict[str, object]]) -> None:
    outs = []
    for _ in range(2):
        classified = classify(frame(data), None)
        outs.append(
            (
                clean_trips(classified, "r").collect().sort("_source_file", "_source_row"),
                quarantined_trips(classified, "r").collect().sort("_source_file", "_source_row"),
            )
        )
    assert outs[0][0].equals(outs[1][0]) and outs[0][1].equals(outs[1][1])
