"""The trip contract: the columns every source is mapped onto, and the schemas of each stage.

One place names the columns, their types, which are required, and the quarantine reasons, so the
sources, transforms, staging manifests and warehouses agree.
"""

from __future__ import annotations

from typing import Final

import polars as pl

UTC_TS: Final = pl.Datetime("us", "UTC")
MONEY: Final = pl.Decimal(18, 2)

#: The contract's columns as a source delivers them (after its format mapping).
CONTRACT_COLUMNS: Final[dict[str, pl.DataType]] = {
    "trip_id": pl.String(),
    "pickup_ts": UTC_TS,
    "dropoff_ts": UTC_TS,
    "distance_km": pl.Float64(),
    "fare_usd": pl.Float64(),
    "region": pl.String(),
    "rider_id": pl.String(),
    "rider_email": pl.String(),
    "driver_id": pl.String(),
    "payment_type": pl.String(),
    "status": pl.String(),
}

#: Required values; a row without one of them is quarantined as ``missing_key``.
#: ``trip_date`` stands for "pickup_ts or a date column".
REQUIRED: Final = ("trip_id", "distance_km", "fare_usd", "region", "trip_date")

#: Lineage columns carried from extract to the warehouse.
LINEAGE: Final = ("_source_file", "_source_row")

#: What extract stages under ``raw/``: the contract with PII hashed, the business day, lineage.
RAW_SCHEMA: Final[dict[str, pl.DataType]] = {
    "trip_id": pl.String(),
    "trip_date": pl.Date(),
    "pickup_ts": UTC_TS,
    "dropoff_ts": UTC_TS,
    "distance_km": pl.Float64(),
    "fare_usd": pl.Float64(),
    "region": pl.String(),
    "rider_id": pl.String(),
    "rider_email_hash": pl.String(),
    "driver_id": pl.String(),
    "payment_type": pl.String(),
    "status": pl.String(),
    "_source_file": pl.String(),
    "_source_row": pl.Int64(),
    #: The source gave a pickup wall clock (a null ``pickup_ts`` beside it is a ``missing_key``).
    #: Null: the source could not read the record at all (a ``bad_record``, e.g. a Kafka message
    #: that is not JSON); such a row keeps what could be read, and its lineage.
    "_pickup_given": pl.Boolean(),
}

#: What transform stages under ``clean/`` and the warehouse holds in ``analytics.trips``.
CLEAN_SCHEMA: Final[dict[str, pl.DataType]] = {
    "trip_id": pl.String(),
    "trip_date": pl.Date(),
    "pickup_ts": UTC_TS,
    "dropoff_ts": UTC_TS,
    "distance_km": pl.Float64(),
    "fare_usd": MONEY,
    "region": pl.String(),
    "rider_id": pl.String(),
    "rider_email_hash": pl.String(),
    "driver_id": pl.String(),
    "payment_type": pl.String(),
    "status": pl.String(),
    "duration_min": pl.Float64(),
    "fare_per_km": pl.Float64(),
    "_run_id": pl.String(),
    "_source_file": pl.String(),
    "_source_row": pl.Int64(),
}

#: What transform stages under ``quarantine/``: the raw row (PII hashed) with every reason.
QUARANTINE_SCHEMA: Final[dict[str, pl.DataType]] = {
    **RAW_SCHEMA,
    "reasons": pl.List(pl.String()),
    "_run_id": pl.String(),
}

#: What transform stages under ``region_daily/``.
REGION_DAILY_SCHEMA: Final[dict[str, pl.DataType]] = {
    "trip_date": pl.Date(),
    "region": pl.String(),
    "trip_count": pl.Int64(),
    "total_distance_km": pl.Float64(),
    "total_fare_usd": MONEY,
    "avg_fare_per_km": pl.Float64(),
}

#: Quarantine reasons, in the order they are listed on a row.
REASONS: Final = (
    "missing_key",
    "non_positive_distance",
    "negative_fare",
    "dropoff_before_pickup",
    "unknown_region",
    "duplicate_trip_id",
    "bad_record",
)

#: Oddities that are warnings in the quality report, not quarantine.
WARN_DISTANCE_KM: Final = 200.0
WARN_FARE_USD: Final = 500.0
