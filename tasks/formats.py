"""Source formats: declared mappings from a file's columns onto the trip contract.

A format declares its source columns (with aliases, matched case-insensitively, and a kind), which
are required, its timezone and region set, and one pure ``LazyFrame -> LazyFrame`` function that
maps
the typed source columns onto the contract. Adding a format is adding one ``SourceFormat`` here.

Typing is shared: every declared column is read as its kind. A timestamp column ``c`` becomes ``c``
(UTC instant; naive values are read in the format's timezone, ambiguous ones take the earlier
instant, non-existent ones become null) and ``c__local`` (the wall clock in that timezone, whose
date is the business day).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

import polars as pl

from tasks.contract import CONTRACT_COLUMNS

Kind = Literal["string", "float", "timestamp", "date"]

#: Largest magnitude a numeric source value may have (money is DECIMAL(18,2) in the warehouse).
MAX_ABS_NUMBER: Final = 1e12

_TS_FORMATS: Final = ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%d")
_TS_AWARE_FORMATS: Final = ("%Y-%m-%d %H:%M:%S%.f%z", "%Y-%m-%d %H:%M%z")
_OFFSET: Final = r"[+-]\d{2}:?\d{2}$"


@dataclass(frozen=True)
class SourceColumn:
    name: str
    kind: Kind
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class FormatContext:
    """What a mapping may use besides the rows: the timezone and reference tables."""

    timezone: str
    references: Mapping[str, pl.LazyFrame] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceFormat:
    name: str
    columns: tuple[SourceColumn, ...]
    #: Each entry is satisfied when any of its columns is present.
    required: tuple[tuple[str, ...], ...]
    to_contract: Callable[[pl.LazyFrame, FormatContext], pl.LazyFrame]
    #: A fixed timezone (the TLC's is New York); None means the configured source timezone.
    timezone: str | None = None
    #: The regions this format can produce; None means configurable (any non-empty by default).
    region_set: frozenset[str] | None = None
    #: Package-data CSV files the mapping joins (name -> file in ``tasks/data``).
    references: tuple[str, ...] = ()

    def column(self, name: str) -> SourceColumn:
        return next(c for c in self.columns if c.name == name)

    def resolve(self, file_columns: list[str]) -> dict[str, str]:
        """Map a file's column names to declared names (case-insensitive; first match wins)."""
        by_lower: dict[str, str] = {}
        for col in file_columns:
            by_lower.setdefault(col.strip().lstrip("\ufeff").lower(), col)
        found: dict[str, str] = {}
        for spec in self.columns:
            for candidate in (spec.name, *spec.aliases):
                actual = by_lower.get(candidate.lower())
                if actual is not None:
                    found[actual] = spec.name
                    break
        return found

    def missing_required(self, present: set[str]) -> list[str]:
        return [" or ".join(group) for group in self.required if not present & set(group)]


# --- typing: shared by every format -------------------------------------------------------------


def _clean_text(col: str) -> pl.Expr:
    text = pl.col(col).cast(pl.String).str.strip_chars()
    return pl.when(text == "").then(None).otherwise(text)


def typed_expr(col: str, kind: Kind, dtype: pl.DataType, timezone: str) -> list[pl.Expr]:
    """Expressions that read ``col`` (of ``dtype`` in the file) as ``kind``."""
    if kind == "string":
        return [_clean_text(col).alias(col)]
    if kind == "float":
        if dtype.is_numeric():
            value = pl.col(col).cast(pl.Float64)
        else:
            value = _clean_text(col).cast(pl.Float64, strict=False)
        ok = value.is_finite() & (value.abs() < MAX_ABS_NUMBER)
        return [pl.when(ok).then(value).otherwise(None).alias(col)]
    if kind == "date":
        if dtype == pl.Date:
            value = pl.col(col)
        elif isinstance(dtype, pl.Datetime):
            value = pl.col(col).dt.date()
        else:
            value = _clean_text(col).str.to_date("%Y-%m-%d", strict=False)
        return [value.alias(col)]
    # timestamp
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            local = pl.col(col).cast(pl.Datetime("us"))
            utc = _localize(local, timezone)
        else:
            utc = pl.col(col).dt.convert_time_zone("UTC").cast(pl.Datetime("us", "UTC"))
            local = utc.dt.convert_time_zone(timezone).dt.replace_time_zone(None)
        return [utc.alias(col), local.alias(f"{col}__local")]
    if dtype == pl.Date:
        local = pl.col(col).cast(pl.Datetime("us"))
        return [_localize(local, timezone).alias(col), local.alias(f"{col}__local")]
    if dtype.is_numeric() or dtype == pl.Boolean:
        null = pl.lit(None, dtype=pl.Datetime("us"))
        return [null.dt.replace_time_zone("UTC").alias(col), null.alias(f"{col}__local")]
    text = _clean_text(col).str.replace("T", " ", literal=True).str.replace(r"[zZ]$", "+00:00")
    aware = text.str.contains(_OFFSET)
    aware_utc = pl.coalesce(
        [
            text.str.to_datetime(f, strict=False, time_unit="us", time_zone="UTC")
            for f in _TS_AWARE_FORMATS
        ]
    )
    naive = pl.coalesce(
        [text.str.to_datetime(f, strict=False, time_unit="us") for f in _TS_FORMATS]
    )
    utc = pl.when(aware).then(aware_utc).otherwise(_localize(naive, timezone))
    local = (
        pl.when(aware)
        .then(aware_utc.dt.convert_time_zone(timezone).dt.replace_time_zone(None))
        .otherwise(naive)
    )
    return [utc.alias(col), local.alias(f"{col}__local")]


def _localize(local: pl.Expr, timezone: str) -> pl.Expr:
    return (
        local.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null")
        .dt.convert_time_zone("UTC")
        .cast(pl.Datetime("us", "UTC"))
    )


def bad_value(col: str, kind: Kind, dtype: pl.DataType) -> pl.Expr:
    """True where the file holds a value in ``col`` that cannot be read as ``kind``.

    Evaluated on the untyped frame next to the typed one (``col`` untyped, ``col__typed`` typed).
    """
    if kind == "string":
        return pl.lit(False)
    present = _clean_text(col).is_not_null()
    if kind == "timestamp" and (dtype.is_numeric() or dtype == pl.Boolean):
        return pl.col(col).is_not_null()
    if kind == "timestamp":
        # A value is bad when it parses as no timestamp at all (a non-existent local time parses
        # and is then nulled on purpose: that is missing_key, not a schema error).
        return present & pl.col(f"{col}__local__typed").is_null()
    return present & pl.col(f"{col}__typed").is_null()


def type_columns(lf: pl.LazyFrame, fmt: SourceFormat, schema: pl.Schema, tz: str) -> pl.LazyFrame:
    """Read every declared column that is present as its kind (pure; keeps ``_source_row``)."""
    exprs: list[pl.Expr] = [pl.col("_source_row")]
    for spec in fmt.columns:
        if spec.name in schema:
            exprs.extend(typed_expr(spec.name, spec.kind, schema[spec.name], tz))
    return lf.select(exprs)


def schema_probe(lf: pl.LazyFrame, fmt: SourceFormat, schema: pl.Schema, tz: str) -> pl.LazyFrame:
    """One row: for each present column, the first bad row number and its value (or nulls).

    The value is only for ``tasks.errors.describe_value``: an error never quotes it."""
    typed = [
        e.name.suffix("__typed")
        for spec in fmt.columns
        if spec.name in schema
        for e in typed_expr(spec.name, spec.kind, schema[spec.name], tz)
    ]
    probes: list[pl.Expr] = []
    for spec in fmt.columns:
        if spec.name not in schema or spec.kind == "string":
            continue
        bad = bad_value(spec.name, spec.kind, schema[spec.name])
        probes.append(pl.col("_source_row").filter(bad).first().alias(f"{spec.name}__row"))
        probes.append(
            pl.col(spec.name).cast(pl.String).filter(bad).first().alias(f"{spec.name}__value")
        )
    if not probes:
        return pl.LazyFrame({"_none": [None]})
    return lf.with_columns(typed).select(probes)


def with_missing(lf: pl.LazyFrame, columns: Mapping[str, pl.DataType]) -> pl.LazyFrame:
    """Add the contract columns a mapping did not produce, as typed nulls."""
    names = lf.collect_schema().names()
    return lf.with_columns(
        pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in columns.items()
        if name not in names
    )


def contract_columns(lf: pl.LazyFrame, pickup_local: str | None) -> pl.LazyFrame:
    """Select the contract's columns plus ``trip_date``, ``_source_row`` and ``_pickup_given``."""
    given = pl.col(pickup_local).is_not_null() if pickup_local else pl.lit(False)
    lf = with_missing(lf, CONTRACT_COLUMNS)
    return lf.select(
        [pl.col(name).cast(dtype) for name, dtype in CONTRACT_COLUMNS.items()]
        + [
            pl.col("trip_date").cast(pl.Date),
            pl.col("_source_row").cast(pl.Int64),
            given.alias("_pickup_given"),
        ]
    )


# --- the contract's own names ---------------------------------------------------------------------


def _trips_to_contract(lf: pl.LazyFrame, ctx: FormatContext) -> pl.LazyFrame:
    names = lf.collect_schema().names()
    day_parts = []
    if "pickup_ts" in names:
        day_parts.append(pl.col("pickup_ts__local").dt.date())
    if "date" in names:
        day_parts.append(pl.col("date"))
    trip_date = pl.coalesce(day_parts) if day_parts else pl.lit(None, dtype=pl.Date)
    pickup_local = "pickup_ts__local" if "pickup_ts" in names else None
    return contract_columns(lf.with_columns(trip_date.alias("trip_date")), pickup_local)


TRIPS = SourceFormat(
    name="trips",
    columns=(
        SourceColumn("trip_id", "string"),
        SourceColumn("pickup_ts", "timestamp"),
        SourceColumn("dropoff_ts", "timestamp"),
        SourceColumn("date", "date"),
        SourceColumn("distance_km", "float"),
        SourceColumn("fare_usd", "float"),
        SourceColumn("region", "string"),
        SourceColumn("rider_id", "string"),
        SourceColumn("rider_email", "string"),
        SourceColumn("driver_id", "string"),
        SourceColumn("payment_type", "string"),
        SourceColumn("status", "string"),
    ),
    required=(("trip_id",), ("distance_km",), ("fare_usd",), ("region",), ("pickup_ts", "date")),
    to_contract=_trips_to_contract,
)


# --- NYC TLC yellow taxi ---------------------------------------------------------------------

MILES_TO_KM: Final = 1.609344
TLC_PAYMENT_TYPES: Final = {
    1: "card",
    2: "cash",
    3: "no_charge",
    4: "dispute",
    5: "unknown",
    6: "voided",
}
TLC_REGIONS: Final = frozenset({"manhattan", "brooklyn", "queens", "bronx", "staten-island", "ewr"})
TLC_UNKNOWN_REGION: Final = "unknown"


def _tlc_to_contract(lf: pl.LazyFrame, ctx: FormatContext) -> pl.LazyFrame:
    zones = ctx.references["taxi_zone_lookup.csv"].select(
        pl.col("LocationID").cast(pl.Float64).alias("pickup_location_id"),
        pl.col("Borough")
        .str.strip_chars()
        .str.to_lowercase()
        .str.replace_all(" ", "-")
        .alias("_borough"),
    )
    canonical = [
        _canonical(spec.name, spec.kind, lf.collect_schema().names()) for spec in TLC_YELLOW.columns
    ]
    return contract_columns(
        lf.join(zones, on="pickup_location_id", how="left", maintain_order="left").with_columns(
            # Elementwise: a scan streams through it a batch at a time (as ``to_raw``'s hashes).
            trip_id=pl.concat_str(canonical, separator="\x1f").map_batches(
                _stable_hash, return_dtype=pl.String, is_elementwise=True
            ),
            pickup_ts=pl.col("pickup_datetime"),
            dropoff_ts=pl.col("dropoff_datetime")
            if "dropoff_datetime" in lf.collect_schema().names()
            else None,
            trip_date=pl.col("pickup_datetime__local").dt.date(),
            distance_km=pl.col("trip_distance") * MILES_TO_KM,
            fare_usd=pl.col("fare_amount"),
            region=pl.when(pl.col("pickup_location_id").is_null())
            .then(None)
            .when(pl.col("_borough").is_in(list(TLC_REGIONS)))
            .then(pl.col("_borough"))
            .otherwise(pl.lit(TLC_UNKNOWN_REGION)),
            payment_type=_tlc_payment_type(lf.collect_schema().names()),
            driver_id=_as_text("vendor_id", lf.collect_schema().names()),
        ),
        "pickup_datetime__local",
    )


def _as_text(col: str, names: list[str]) -> pl.Expr:
    if col not in names:
        return pl.lit(None, dtype=pl.String)
    return pl.concat_str(
        [pl.lit("vendor-"), pl.col(col).cast(pl.Int64, strict=False).cast(pl.String)]
    )


def _tlc_payment_type(names: list[str]) -> pl.Expr:
    if "payment_type" not in names:
        return pl.lit(None, dtype=pl.String)
    code = pl.col("payment_type").cast(pl.Int64, strict=False)
    return code.replace_strict(TLC_PAYMENT_TYPES, default="unknown", return_dtype=pl.String)


def _canonical(col: str, kind: Kind, names: list[str]) -> pl.Expr:
    """A column's value as canonical text, so a CSV and a Parquet copy of a row hash alike."""
    if col not in names:
        return pl.lit("\x00")
    if kind == "timestamp":
        text = pl.col(f"{col}__local").dt.to_string("%Y-%m-%dT%H:%M:%S%.6f")
    else:
        text = pl.col(col).cast(pl.String)
    return text.fill_null("\x00")


def _stable_hash(values: pl.Series) -> pl.Series:
    digests = [
        hashlib.blake2b(v.encode("utf-8"), digest_size=10).hexdigest() for v in values.to_list()
    ]
    return pl.Series(values.name, ["tlc-" + d for d in digests], dtype=pl.String)


TLC_YELLOW = SourceFormat(
    name="nyc-tlc-yellow",
    columns=(
        SourceColumn("vendor_id", "float", ("VendorID",)),
        SourceColumn("pickup_datetime", "timestamp", ("tpep_pickup_datetime",)),
        SourceColumn("dropoff_datetime", "timestamp", ("tpep_dropoff_datetime",)),
        SourceColumn("passenger_count", "float"),
        SourceColumn("trip_distance", "float"),
        SourceColumn("rate_code_id", "float", ("RatecodeID",)),
        SourceColumn("store_and_fwd_flag", "string"),
        SourceColumn("pickup_location_id", "float", ("PULocationID",)),
        SourceColumn("dropoff_location_id", "float", ("DOLocationID",)),
        SourceColumn("payment_type", "float"),
        SourceColumn("fare_amount", "float"),
        SourceColumn("extra", "float"),
        SourceColumn("mta_tax", "float"),
        SourceColumn("tip_amount", "float"),
        SourceColumn("tolls_amount", "float"),
        SourceColumn("improvement_surcharge", "float"),
        SourceColumn("total_amount", "float"),
        SourceColumn("congestion_surcharge", "float"),
        SourceColumn("airport_fee", "float", ("Airport_fee",)),
    ),
    required=(("pickup_datetime",), ("trip_distance",), ("fare_amount",), ("pickup_location_id",)),
    to_contract=_tlc_to_contract,
    timezone="America/New_York",
    region_set=TLC_REGIONS,
    references=("taxi_zone_lookup.csv",),
)

#: Every format tripflow knows, by the name ``--format`` takes.
FORMATS: Final[dict[str, SourceFormat]] = {f.name: f for f in (TRIPS, TLC_YELLOW)}
