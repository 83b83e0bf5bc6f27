"""A deterministic generator of realistic trips for one day, written in chunks straight to Parquet.

Same (date, rows, seed) gives the same trips. Cardinalities are a real city's: trip ids are UUIDs
(text), about one distinct rider per 4 trips (``RIDERS_PER_TRIP``), a fleet of up to
``DRIVERS`` drivers. Pickups follow a day's rhythm (morning and evening peaks), distances are
log-normal, fares follow a base + per-km + per-minute tariff rounded to cents, and a few percent of
rows are dirty (zero distances, refunds booked as negative fares, dropoffs before pickups, re-sent
trips) so the quality report has something to say. Never one giant frame: each chunk is generated,
hashed and written on its own.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from pathlib import Path
from typing import Final

import numpy as np
import polars as pl

from tasks.metrics import rows_done
from tasks.sources.base import EMPTY_STATS, ExtractStats, HashEmail, PartWriter, raw_part_writer
from tasks.transforms import to_raw

CHUNK_ROWS: Final = 500_000
REGIONS: Final = ("us-east", "us-west", "eu-west", "us-central", "ap-south")
REGION_WEIGHTS: Final = (0.34, 0.26, 0.2, 0.12, 0.08)
PAYMENT_TYPES: Final = ("card", "wallet", "cash")
PAYMENT_WEIGHTS: Final = (0.62, 0.3, 0.08)
#: Share of dirty rows, per kind (four kinds: together about 2%).
DIRTY_SHARE: Final = 0.005
#: Distinct riders per trip of the day (about 2M riders on an 8M-trip day).
RIDERS_PER_TRIP: Final = 0.25
#: The fleet: a day draws its drivers from this many (fewer on a small day).
DRIVERS: Final = 300_000


def trip_uuids(rng: np.random.Generator, count: int) -> pl.Series:
    """``count`` random version-4 UUIDs as text (vectorised: no per-row Python)."""
    raw = rng.integers(0, 256, size=(count, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hexed = pl.Series(np.frombuffer(raw.tobytes().hex().encode(), dtype="S32")).cast(pl.String)
    return (
        hexed.to_frame("h")
        .select(
            pl.concat_str(
                [
                    hexed.str.slice(0, 8),
                    hexed.str.slice(8, 4),
                    hexed.str.slice(12, 4),
                    hexed.str.slice(16, 4),
                    hexed.str.slice(20, 12),
                ],
                separator="-",
            )
        )
        .to_series()
    )


def generate_chunk(
    run_date: date,
    *,
    start: int,
    count: int,
    total: int,
    seed: int,
    timezone: str,
    riders: int | None = None,
) -> pl.DataFrame:
    """Rows ``start .. start+count`` of the day's ``total`` trips, in contract columns.

    ``riders``: how many riders the day's trips are drawn from (default ``total`` x
    ``RIDERS_PER_TRIP``); ``riders >= total`` gives every trip a rider of its own.
    """
    rng = np.random.default_rng([seed, run_date.toordinal(), start])
    # Pickup second of the local day: a mix of a flat base and morning/evening peaks.
    which = rng.choice(3, size=count, p=[0.4, 0.28, 0.32])
    seconds = np.where(
        which == 0,
        rng.uniform(0, 86_400, count),
        np.where(
            which == 1, rng.normal(8.5 * 3600, 5400, count), rng.normal(18 * 3600, 7200, count)
        ),
    )
    seconds = np.clip(seconds, 0, 86_399.999).astype(np.int64)
    distance = np.clip(rng.lognormal(np.log(6.0), 0.7, count), 0.3, 150.0).round(2)
    speed_kmh = rng.uniform(14, 42, count)
    minutes = distance / speed_kmh * 60 + rng.uniform(1, 6, count)
    fare = (2.5 + 1.15 * distance + 0.22 * minutes).round(2)
    pool = max(1, int(total * RIDERS_PER_TRIP)) if riders is None else max(1, riders)
    drivers = max(1, min(DRIVERS, total // 4))
    index = np.arange(start, start + count)
    rider = index if pool >= total else rng.integers(0, pool, count)
    driver = rng.integers(0, drivers, count)
    ids = trip_uuids(rng, count)

    dirty = rng.random(count)
    distance = np.where(dirty < DIRTY_SHARE, 0.0, distance)
    fare = np.where((dirty >= DIRTY_SHARE) & (dirty < 2 * DIRTY_SHARE), -fare, fare)
    minutes = np.where((dirty >= 2 * DIRTY_SHARE) & (dirty < 3 * DIRTY_SHARE), -minutes, minutes)
    # Re-sent trips: the same trip_id as the row before it.
    resent = (dirty >= 3 * DIRTY_SHARE) & (dirty < 4 * DIRTY_SHARE) & (index > start)
    trip_no = np.where(resent, index - 1, index) - start

    midnight = datetime(run_date.year, run_date.month, run_date.day)
    frame = pl.DataFrame(
        {
            "trip_id": ids.gather(trip_no),
            "_seconds": seconds,
            "distance_km": distance,
            "fare_usd": fare,
            "_minutes": minutes,
            "_region": rng.choice(len(REGIONS), size=count, p=REGION_WEIGHTS),
            "_rider": rider,
            "_driver": driver,
            "_payment": rng.choice(len(PAYMENT_TYPES), size=count, p=PAYMENT_WEIGHTS),
            "_source_row": index + 1,
        }
    )
    pickup_local = pl.lit(midnight, dtype=pl.Datetime("us")) + pl.duration(
        seconds=pl.col("_seconds")
    )
    pickup_utc = pickup_local.dt.replace_time_zone(
        timezone, ambiguous="earliest", non_existent="null"
    ).dt.convert_time_zone("UTC")
    return frame.select(
        trip_id=pl.col("trip_id"),
        pickup_ts=pickup_utc,
        dropoff_ts=pickup_utc
        + pl.duration(microseconds=(pl.col("_minutes") * 60e6).cast(pl.Int64)),
        distance_km=pl.col("distance_km"),
        fare_usd=pl.col("fare_usd"),
        region=pl.col("_region").replace_strict(dict(enumerate(REGIONS)), return_dtype=pl.String),
        rider_id=pl.format("R{}", pl.col("_rider").cast(pl.String).str.zfill(8)),
        rider_email=pl.format("rider{}@example.com", pl.col("_rider")),
        driver_id=pl.format("D{}", pl.col("_driver").cast(pl.String).str.zfill(7)),
        payment_type=pl.col("_payment").replace_strict(
            dict(enumerate(PAYMENT_TYPES)), return_dtype=pl.String
        ),
        status=pl.lit("completed"),
        trip_date=pl.lit(run_date, dtype=pl.Date),
        _source_row=pl.col("_source_row").cast(pl.Int64),
        _pickup_given=pl.lit(True),
    )


class SyntheticSource:
    def __init__(
        self, *, rows: int, seed: int, timezone: str, region_set: frozenset[str] | None
    ) -> None:
        self.rows = rows
        self.seed = seed
        self.timezone = timezone
        self.region_set = region_set
        self.description = f"synthetic (rows={rows}, seed={seed})"

    def fingerprint(self) -> str:
        text = f"synthetic:{self.rows}:{self.seed}:{self.timezone}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def extract(self, run_date: date, out_dir: Path, hash_email: HashEmail) -> ExtractStats:
        return self.extract_parts(run_date, hash_email, raw_part_writer(out_dir))

    def extract_parts(
        self, run_date: date, hash_email: HashEmail, write_part: PartWriter
    ) -> ExtractStats:
        starts = list(range(0, self.rows, CHUNK_ROWS))

        def generate(start: int) -> pl.DataFrame:
            return generate_chunk(
                run_date,
                start=start,
                count=min(CHUNK_ROWS, self.rows - start),
                total=self.rows,
                seed=self.seed,
                timezone=self.timezone,
            )

        stats = EMPTY_STATS
        # Generate the next chunk while this one is hashed and written (two chunks in memory).
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(generate, starts[0]) if starts else None
            for part, _ in enumerate(starts):
                assert pending is not None
                chunk = pending.result()
                if part + 1 < len(starts):
                    pending = pool.submit(generate, starts[part + 1])
                name = f"synthetic:seed={self.seed}:part-{part:05d}"
                write_part(to_raw(chunk.lazy(), run_date, name, hash_email), part)
                stats = stats + ExtractStats(chunk.height, chunk.height, 0, 0, 1)
                rows_done("extract", chunk.height)
                del chunk
        return stats
