"""Pure Polars transforms of the pipeline: ``LazyFrame -> LazyFrame``, no I/O, no Prefect.

The stages in ``tasks.stages`` scan staged Parquet, call these, and sink the result. Everything here
is tested on tiny inline frames (``tests/test_transforms.py``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import date, timedelta
from typing import Final

import polars as pl
from polars_hash import CryptographicHashingNameSpace

from tasks.contract import (
    CLEAN_SCHEMA,
    CONTRACT_COLUMNS,
    MONEY,
    QUARANTINE_SCHEMA,
    RAW_SCHEMA,
    REASONS,
    REGION_DAILY_SCHEMA,
    WARN_DISTANCE_KM,
    WARN_FARE_USD,
)

#: HMAC-SHA256 truncated to 128 bits (32 hex characters): keyed, and collision-free in practice.
EMAIL_HASH_HEX_CHARS: Final = 32


class EmailHasher:
    """HMAC-SHA256 of normalized (trimmed, lower-cased) e-mails, truncated to 128 bits.

    The HMAC runs natively, one vectorised pass over the batch, in the ``polars-hash`` plugin
    (Rust's ``hmac`` and ``sha2`` crates), with no per-value Python (``bench/hashing_bench.py``).
    The plugin takes its key as text, so a key that is not UTF-8 (only possible from a key file
    written by hand) is hashed by the standard library instead, each distinct value of a batch
    once: the same bytes either way (``tests/test_transforms.py`` checks both against ``hmac``).
    Holds no state between batches, so memory stays flat however many riders a day has.
    """

    def __init__(self, key: bytes) -> None:
        try:
            self._text_key: str | None = key.decode("utf-8")
        except UnicodeDecodeError:
            self._text_key = None
        block = key if len(key) <= 64 else hashlib.sha256(key).digest()
        block = block.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    @property
    def native(self) -> bool:
        """Whether batches are hashed by the native plugin (the key is UTF-8)."""
        return self._text_key is not None

    def digest(self, value: str) -> str:
        """One normalized value's hash by the standard library (the non-UTF-8 key's path)."""
        inner = self._inner.copy()
        inner.update(value.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()[:EMAIL_HASH_HEX_CHARS]

    def __call__(self, values: pl.Series) -> pl.Series:
        normalized = values.cast(pl.String).str.strip_chars().str.to_lowercase()
        if self._text_key is not None:
            hashed = CryptographicHashingNameSpace(pl.col("email")).hmac_sha256(key=self._text_key)
            out = normalized.to_frame("email").select(hashed.str.slice(0, EMAIL_HASH_HEX_CHARS))
            return out.to_series().alias(values.name)
        distinct = normalized.unique().drop_nulls()
        lookup = pl.DataFrame(
            {"email": distinct, "hash": [self.digest(v) for v in distinct]},
            schema={"email": pl.String, "hash": pl.String},
        )
        joined = normalized.to_frame("email").join(
            lookup, on="email", how="left", maintain_order="left"
        )
        return joined.get_column("hash").alias(values.name)


#: The text columns where a misaligned row or a wrong field can put an e-mail (every contract text
#: column but ``rider_email``, which is always hashed): an e-mail-shaped value there is hashed too.
EMAIL_SHAPED_COLUMNS: Final = tuple(
    name
    for name, dtype in CONTRACT_COLUMNS.items()
    if dtype == pl.String() and name != "rider_email"
)
#: Something ``@`` something ``.`` a top-level domain of two letters or more, anywhere in the text
#: (leading and trailing spaces and case do not matter).
EMAIL_PATTERN: Final = r"[^\s@]+@[^\s@]+\.\p{L}{2,}"


def email_shaped(column: str) -> pl.Expr:
    """True where ``column`` holds an e-mail-shaped value (``EMAIL_PATTERN``); null stays null."""
    return pl.col(column).cast(pl.String).str.contains(EMAIL_PATTERN)


def hash_email_shaped(column: str, hash_email: Callable[[pl.Series], pl.Series]) -> pl.Expr:
    """``column`` with each e-mail-shaped value replaced by ``hash_email`` of it (the same keyed
    hash as ``rider_email_hash``), other values as they are.

    Only the e-mail-shaped values reach ``hash_email`` (the rest are masked to null, which it
    leaves null), and a batch without one skips it and is passed on as it is: a column of
    ordinary values costs one regular-expression pass (masking and merging every batch doubled
    the cost: 0.13 against 0.066 CPU-s for the six columns of a 500k-row part).
    """

    def replace(values: pl.Series) -> pl.Series:
        text = values.cast(pl.String)
        shaped = text.to_frame(column).select(email_shaped(column)).to_series()
        if not shaped.any():
            return text
        masked = pl.select(pl.when(shaped).then(text)).to_series().alias(column)
        hashed = hash_email(masked)
        return pl.select(pl.when(shaped).then(hashed).otherwise(text)).to_series().alias(column)

    return pl.col(column).map_batches(replace, return_dtype=pl.String, is_elementwise=True)


class CountingHasher:
    """The run's e-mail hasher, called one batch at a time, counting what it hashes per column.

    ``to_raw`` hands it ``rider_email`` and, masked to their e-mail-shaped values, the columns of
    ``EMAIL_SHAPED_COLUMNS``; ``email_shaped`` counts the values hashed in each of those (the
    quality report's ``email_shaped_values``). A lock keeps calls one at a time, whichever
    thread Polars or a source's writer calls from (the counts are shared).
    """

    def __init__(self, hash_email: Callable[[pl.Series], pl.Series]) -> None:
        self._hash_email = hash_email
        self._lock = threading.Lock()
        self.email_shaped: dict[str, int] = dict.fromkeys(EMAIL_SHAPED_COLUMNS, 0)

    def __call__(self, values: pl.Series) -> pl.Series:
        with self._lock:
            if values.name in self.email_shaped:
                self.email_shaped[values.name] += values.len() - values.null_count()
            return self._hash_email(values)


def value_fingerprint(hash_email: Callable[[pl.Series], pl.Series]) -> Callable[[str], str]:
    """The keyed fingerprint of an input cell that an error may show instead of the cell
    (``tasks.errors.describe_value`` keeps its first characters): ``hash_email`` of the cell,
    i.e. HMAC-SHA256 with the run's PII key of the trimmed, lower-cased text."""

    def fingerprint(text: str) -> str:
        return str(hash_email(pl.Series("value", [text], dtype=pl.String))[0] or "")

    return fingerprint


def to_raw(
    contract: pl.LazyFrame,
    run_date: date,
    source_file: str,
    hash_email: Callable[[pl.Series], pl.Series],
) -> pl.LazyFrame:
    """The run's day of contract rows, PII replaced by its keyed hash, with lineage.

    ``rider_email`` becomes ``rider_email_hash``; an e-mail-shaped value in any other text column
    (a misaligned row, a wrong field) is replaced by the same keyed hash (``hash_email_shaped``).
    Both hashes are elementwise, so a scan streams through them a batch at a time (otherwise
    Polars gathers each column of a whole file first: a 4M-row scan peaked at 1.6 against 0.7 GB).
    """
    return (
        contract.filter(pl.col("trip_date") == run_date)
        .with_columns(
            pl.col("rider_email")
            .map_batches(hash_email, return_dtype=pl.String, is_elementwise=True)
            .alias("rider_email_hash"),
            pl.lit(source_file, dtype=pl.String).alias("_source_file"),
        )
        .with_columns(hash_email_shaped(name, hash_email) for name in EMAIL_SHAPED_COLUMNS)
        .select([pl.col(name).cast(dtype) for name, dtype in RAW_SCHEMA.items()])
    )


def day_attribution(contract: pl.LazyFrame, run_date: date) -> pl.LazyFrame:
    """One row counting a source's rows: on the run's day, on other days, and unattributed."""
    return contract.select(
        total=pl.len(),
        on_day=(pl.col("trip_date") == run_date).sum(),
        other_days=(pl.col("trip_date") != run_date).sum(),
        unattributed=pl.col("trip_date").is_null().sum(),
    )


#: Each reason's bit in ``_reason_bits`` (the list of names is built only for quarantined rows).
REASON_BITS: Final = {name: 1 << i for i, name in enumerate(REASONS)}


def rule_bits(region_set: frozenset[str] | None) -> pl.Expr:
    """Every row rule a raw row breaks, one bit each (duplicates come later), as a UInt8."""
    missing = pl.any_horizontal(
        pl.col(c).is_null() for c in ("trip_id", "distance_km", "fare_usd", "region", "trip_date")
    ) | (pl.col("pickup_ts").is_null() & pl.col("_pickup_given"))
    if region_set is None:
        unknown_region = pl.col("region").str.strip_chars() == ""
    else:
        unknown_region = ~pl.col("region").is_in(sorted(region_set))
    rules = {
        "missing_key": missing,
        "non_positive_distance": pl.col("distance_km") <= 0,
        "negative_fare": pl.col("fare_usd") < 0,
        "dropoff_before_pickup": pl.col("dropoff_ts") < pl.col("pickup_ts"),
        "unknown_region": unknown_region,
        "bad_record": pl.col("_pickup_given").is_null(),
    }
    bits = pl.sum_horizontal(
        expr.fill_null(False).cast(pl.UInt8) * REASON_BITS[name] for name, expr in rules.items()
    )
    return bits.cast(pl.UInt8)


def with_rule_reasons(raw: pl.LazyFrame, region_set: frozenset[str] | None) -> pl.LazyFrame:
    """Add ``_reason_bits``: every row rule the row breaks, one bit each (duplicates come later)."""
    return raw.with_columns(_reason_bits=rule_bits(region_set))


def repeated_id_hashes(rows: pl.LazyFrame, buckets: int = 1, bucket: int = 0) -> pl.LazyFrame:
    """64-bit hashes of the trip_ids that occur more than once among ``rows``: the candidates
    ``later_duplicates`` settles.

    The transform stage passes every raw row, not only those passing the rules: a superset of the
    candidates (a trip_id repeated by an invalid row is settled like a collision), read from the
    trip_id column alone, half the cost of applying the rules first (0.28 against 0.54 s at 8M
    trips). 8 bytes a row instead of the string keeps this pass small, and sorting the hashes to
    find equal neighbours needs half the memory of a hash group-by over every row (318 vs 674 MB
    at 8M trips). With ``buckets`` > 1 only the hashes with ``hash % buckets == bucket`` are
    looked at, so a day too large for one pass is settled one bucket at a time in the same
    memory. A hash collision only adds a candidate, which ``later_duplicates`` settles on the
    real trip_id.
    """
    hashes = rows.select(_h=pl.col("trip_id").hash())
    if buckets > 1:
        hashes = hashes.filter(pl.col("_h") % buckets == bucket)
    return hashes.sort("_h").filter(pl.col("_h") == pl.col("_h").shift(1)).unique().select("_h")


def later_duplicates(flagged: pl.LazyFrame, repeated: pl.DataFrame | None = None) -> pl.LazyFrame:
    """The rows that repeat an earlier valid row's trip_id: ``_source_file``, ``_source_row``.

    Among rows that pass the other rules the first occurrence of each trip_id is kept; first means
    lowest ``_source_file``, then lowest ``_source_row``. Only the candidates ``repeated`` names
    (usually few) are sorted; they are picked by membership, a filter a Parquet scan applies as
    it decodes (a semi join held every row of a 32M-trip day: 1 GB).
    """
    if repeated is None:
        repeated = repeated_id_hashes(flagged.filter(pl.col("_reason_bits") == 0)).collect()
    return (
        flagged.filter(
            (pl.col("_reason_bits") == 0)
            & pl.col("trip_id").hash().is_in(repeated.get_column("_h").implode())
        )
        .select("trip_id", "_source_file", "_source_row")
        .sort("trip_id", "_source_file", "_source_row")
        .filter(~pl.col("trip_id").is_first_distinct())
        .select("_source_file", "_source_row")
    )


def reason_bits(region_set: frozenset[str] | None, later: pl.DataFrame) -> pl.Expr:
    """Every reason a raw row breaks, one bit each: the row rules, plus ``duplicate_trip_id`` for
    the rows ``later_duplicates`` found (matched by membership, not a join: ``later`` is small,
    one row per repeated trip, and the streaming pass over every row stays flat)."""
    keys = later.select(pl.struct("_source_file", "_source_row")).to_series()
    is_later = pl.col("_source_file").is_in(later["_source_file"].unique().implode()) & pl.struct(
        "_source_file", "_source_row"
    ).is_in(keys.implode())
    bits = rule_bits(region_set)
    dup_bit = REASON_BITS["duplicate_trip_id"]
    return pl.when(is_later).then(bits | dup_bit).otherwise(bits).cast(pl.UInt8)


def classified_rows(
    raw: pl.LazyFrame, region_set: frozenset[str] | None, later: pl.DataFrame, *, valid: bool
) -> pl.LazyFrame:
    """The raw rows that are valid (``valid``) or break a rule, with their ``_reason_bits``.

    The condition is a filter on ``raw`` itself, so a Parquet scan applies it while it decodes:
    filtering a column added by ``with_columns`` made Polars 2.1 buffer the scan (the quarantine
    pass of a 32M-trip day peaked at 1.4 GB; 0.6 GB this way).
    """
    bits = reason_bits(region_set, later)
    return raw.filter(bits == 0 if valid else bits > 0).with_columns(_reason_bits=bits)


def passing_rules(raw: pl.LazyFrame, region_set: frozenset[str] | None) -> pl.LazyFrame:
    """The raw rows that break no row rule (``_reason_bits`` 0), filtered on the scan itself."""
    return raw.filter(rule_bits(region_set) == 0).with_columns(
        _reason_bits=pl.lit(0, dtype=pl.UInt8)
    )


def reason_names(bits: pl.Expr) -> pl.Expr:
    """The list of reason names a bit set stands for, in the contract's order."""
    return pl.concat_list(
        pl.when((bits & bit) > 0).then(pl.lit(name)) for name, bit in REASON_BITS.items()
    ).list.drop_nulls()


def classify(raw: pl.LazyFrame, region_set: frozenset[str] | None) -> pl.LazyFrame:
    """Every raw row with ``_reason_bits``, the reasons it breaks (0: a valid trip).

    The few repeated rows are found first (a small frame, collected here); the transform stage
    does the same in separate steps so that each pass over the day stays small.
    """
    later = later_duplicates(with_rule_reasons(raw, region_set)).collect()
    return raw.with_columns(_reason_bits=reason_bits(region_set, later))


def clean_trips(classified: pl.LazyFrame, run_id: str) -> pl.LazyFrame:
    """Valid trips with derived columns, money as DECIMAL(18,2) and the run's lineage."""
    minutes = (pl.col("dropoff_ts") - pl.col("pickup_ts")).dt.total_microseconds() / 60e6
    return (
        classified.filter(pl.col("_reason_bits") == 0)
        .with_columns(
            duration_min=minutes.round(2),
            fare_per_km=(pl.col("fare_usd") / pl.col("distance_km")).round(4),
            fare_usd=pl.col("fare_usd").round(2).cast(MONEY),
            _run_id=pl.lit(run_id, dtype=pl.String),
        )
        .select([pl.col(name).cast(dtype) for name, dtype in CLEAN_SCHEMA.items()])
    )


def quarantined_trips(classified: pl.LazyFrame, run_id: str) -> pl.LazyFrame:
    """Rows that break a rule, each with every reason it breaks."""
    return (
        classified.filter(pl.col("_reason_bits") > 0)
        .with_columns(
            reasons=reason_names(pl.col("_reason_bits")), _run_id=pl.lit(run_id, dtype=pl.String)
        )
        .select([pl.col(name).cast(dtype) for name, dtype in QUARANTINE_SCHEMA.items()])
    )


def region_daily(clean: pl.LazyFrame) -> pl.LazyFrame:
    """Trips, distance and fare per day and region; fare per km is total fare / total distance."""
    return region_daily_and_warnings(clean).select(REGION_DAILY_SCHEMA.keys())


def region_daily_and_warnings(clean: pl.LazyFrame) -> pl.LazyFrame:
    """``region_daily`` with each region's ``quality_warnings`` counts beside it (their sums are
    the day's): one pass over the clean trips for both."""
    return (
        clean.group_by("trip_date", "region")
        .agg(
            trip_count=pl.len(),
            _distance=pl.col("distance_km").sum(),
            total_fare_usd=pl.col("fare_usd").sum(),
            **_warning_counts(),
        )
        .with_columns(
            total_distance_km=pl.col("_distance").round(2),
            avg_fare_per_km=pl.when(pl.col("_distance") > 0)
            .then(pl.col("total_fare_usd").cast(pl.Float64) / pl.col("_distance"))
            .round(2),
        )
        .select(
            *[pl.col(name).cast(dtype) for name, dtype in REGION_DAILY_SCHEMA.items()],
            *WARNINGS,
        )
        .sort("trip_date", "region")
    )


def reason_counts(quarantine: pl.LazyFrame, reasons: tuple[str, ...]) -> pl.LazyFrame:
    """One row: how many quarantined rows list each reason (a row counts under each of its)."""
    return quarantine.select(
        [pl.col("reasons").list.contains(reason).sum().alias(reason) for reason in reasons]
    )


#: The valid-but-odd trips ``quality_warnings`` counts.
WARNINGS: Final = ("long_trips", "expensive_trips")


def _warning_counts() -> dict[str, pl.Expr]:
    return {
        "long_trips": (pl.col("distance_km") > WARN_DISTANCE_KM).sum(),
        "expensive_trips": (pl.col("fare_usd").cast(pl.Float64) > WARN_FARE_USD).sum(),
    }


def quality_warnings(clean: pl.LazyFrame) -> pl.LazyFrame:
    """One row counting valid-but-odd trips: very long, very expensive."""
    return clean.select(**_warning_counts())


def region_window(region_days: pl.LazyFrame, end: date, days: int) -> pl.LazyFrame:
    """Per region, the ``days`` days ending at ``end`` (inclusive): days covered, trips, distance,
    fare and fare per km (total fare / total distance), from published ``region_daily`` rows."""
    start = end - timedelta(days=days - 1)
    return (
        region_days.filter(pl.col("trip_date").is_between(start, end))
        .group_by("region")
        .agg(
            days_covered=pl.col("trip_date").n_unique().cast(pl.Int64),
            trip_count=pl.col("trip_count").sum(),
            _distance=pl.col("total_distance_km").sum(),
            total_fare_usd=pl.col("total_fare_usd").sum(),
        )
        .with_columns(
            window_start=pl.lit(start),
            window_end=pl.lit(end),
            total_distance_km=pl.col("_distance").round(2),
            avg_fare_per_km=pl.when(pl.col("_distance") > 0)
            .then(pl.col("total_fare_usd").cast(pl.Float64) / pl.col("_distance"))
            .round(2),
        )
        .select(
            "window_start",
            "window_end",
            "region",
            "days_covered",
            "trip_count",
            "total_distance_km",
            "total_fare_usd",
            "avg_fare_per_km",
        )
        .sort("trip_count", "region", descending=[True, False])
    )
