"""A corpus of bad input, CSV and Parquet: each case gets exactly one outcome — a schema error
naming file, column and row; rows quarantined with their reasons; or a failed check — and never a
crash or a partial publish. Real files, real DuckDB, the plain stage functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tasks.config import load_settings
from tasks.errors import SchemaError
from tasks.report import RunReport
from tasks.stages import RunContext, extract, load, publish, transform, validate

DAY = date(2025, 11, 15)
HEADER = "trip_id,pickup_ts,dropoff_ts,distance_km,fare_usd,region,rider_email,payment_type,status"


def good_rows(n: int = 100, prefix: str = "G") -> list[str]:
    return [
        f"{prefix}{i},2025-11-15 08:{i % 60:02d}:00,2025-11-15 09:00:00,3.5,9.25,us-east,"
        f"r{i}@x.org,card,completed"
        for i in range(n)
    ]


def csv(*lines: str, header: str = HEADER) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "trips.csv"
        path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
        return path

    return build


def raw_bytes(data: bytes, name: str = "trips.csv") -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return build


def parquet(frame: Callable[[], pl.DataFrame]) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "trips.parquet"
        frame().write_parquet(path)
        return path

    return build


def good_frame(n: int = 100) -> dict[str, list[object]]:
    return {
        "trip_id": [f"P{i}" for i in range(n)],
        "pickup_ts": [datetime(2025, 11, 15, 8, i % 60) for i in range(n)],
        "distance_km": [3.5] * n,
        "fare_usd": [9.25] * n,
        "region": ["us-east"] * n,
    }


@dataclass
class Case:
    build: Callable[[Path], Path]
    schema: tuple[str | None, int | None] | None = None  # (column, row) of the schema error
    quarantined: dict[str, int] = field(default_factory=dict)
    failed_checks: list[str] = field(default_factory=list)


SQLISH = "x'); DROP TABLE analytics.trips; --"
CASES: dict[str, Case] = {
    "csv missing required column": Case(
        csv("A,2025-11-15 08:00:00,,1,us-east,,,", header=HEADER.replace("fare_usd,", "")),
        schema=("fare_usd", None),
    ),
    "csv renamed column": Case(
        csv(*good_rows(3), header=HEADER.replace("fare_usd", "fare")), schema=("fare_usd", None)
    ),
    "csv text in a numeric column": Case(
        csv(*good_rows(3), "B,2025-11-15 08:00:00,,abc,1,us-east,,,"), schema=("distance_km", 4)
    ),
    "csv money with a unit": Case(
        csv("B,2025-11-15 08:00:00,,1,12 USD,us-east,,,"), schema=("fare_usd", 1)
    ),
    "csv decimal comma": Case(
        csv('B,2025-11-15 08:00:00,,"2,5",1,us-east,,,'), schema=("distance_km", 1)
    ),
    "csv row with more fields than the header": Case(
        csv(*good_rows(3), "B,2025-11-15 08:00:00,,1,1,us-east,b@x.org,card,completed,extra@x.org"),
        schema=(None, None),
    ),
    "csv empty file": Case(raw_bytes(b""), schema=(None, None)),
    "csv header only": Case(csv(), schema=(None, None)),
    "csv huge value": Case(csv("B,2025-11-15 08:00:00,,1,1e20,us-east,,,"), schema=("fare_usd", 1)),
    "csv NaN": Case(csv("B,2025-11-15 08:00:00,,NaN,1,us-east,,,"), schema=("distance_km", 1)),
    "csv inf": Case(csv("B,2025-11-15 08:00:00,,1,-inf,us-east,,,"), schema=("fare_usd", 1)),
    "csv impossible timestamp": Case(
        csv(*good_rows(2), "B,2025-13-45 08:00:00,,1,1,us-east,,,"), schema=("pickup_ts", 3)
    ),
    "csv with BOM": Case(raw_bytes(("\ufeff" + "\n".join([HEADER, *good_rows()]) + "\n").encode())),
    "csv with CRLF": Case(raw_bytes(("\r\n".join([HEADER, *good_rows()]) + "\r\n").encode())),
    "csv with quoted newlines": Case(
        csv(*good_rows(), 'Q,2025-11-15 08:00:00,,1,1,us-east,,card,"line one\nline two"')
    ),
    "csv timestamps with zones": Case(
        csv(
            *[
                r.replace("2025-11-15 08:", "2025-11-15T08:").replace(
                    ",2025-11-15 09:00:00", ",2025-11-15T09:00:00+00:00"
                )
                for r in good_rows()
            ]
        )
    ),
    "csv timestamps without zones": Case(csv(*good_rows())),
    "csv a day with zero trips": Case(
        csv(*[r.replace("2025-11-15", "2025-11-14") for r in good_rows()]),
        failed_checks=["min_rows"],
    ),
    "csv a day of only duplicates": Case(
        csv(*["D,2025-11-15 08:00:00,,1,1,us-east,,," for _ in range(20)]),
        quarantined={"duplicate_trip_id": 19},
        failed_checks=["quarantine_share"],
    ),
    "csv a day of only bad rows": Case(
        csv(*[f"N{i},2025-11-15 08:00:00,,0,-1,us-east,,," for i in range(10)]),
        quarantined={"non_positive_distance": 10, "negative_fare": 10},
        failed_checks=["min_rows", "quarantine_share"],
    ),
    "csv a few bad rows": Case(
        csv(
            *good_rows(),
            ",2025-11-15 08:00:00,,1,1,us-east,,,",
            "X1,2025-11-15 08:00:00,2025-11-15 07:00:00,1,1,us-east,,,",
            "X2,2025-11-15 08:00:00,,-4,1,us-east,,,",
        ),
        quarantined={"missing_key": 1, "dropoff_before_pickup": 1, "non_positive_distance": 1},
    ),
    "csv unicode regions": Case(
        csv(
            *good_rows(),
            "U1,2025-11-15 08:00:00,,1,1,東京,,,",
            "U2,2025-11-15 08:00:00,,1,1,são-paulo,,,",
        )
    ),
    "csv SQL-looking text in every text field": Case(
        csv(
            *good_rows(),
            f'"{SQLISH}",2025-11-15 08:00:00,,1,1,"{SQLISH}","{SQLISH}","{SQLISH}","{SQLISH}"',
        )
    ),
    "parquet text in a numeric column": Case(
        parquet(
            lambda: pl.DataFrame(good_frame()).with_columns(
                pl.when(pl.int_range(pl.len()) == 7)
                .then(pl.lit("x"))
                .otherwise(pl.col("distance_km").cast(pl.String))
                .alias("distance_km")
            )
        ),
        schema=("distance_km", 8),
    ),
    "parquet missing required column": Case(
        parquet(lambda: pl.DataFrame(good_frame()).drop("region")), schema=("region", None)
    ),
    "parquet timestamp as a number": Case(
        parquet(lambda: pl.DataFrame(good_frame()).with_columns(pl.lit(1).alias("pickup_ts"))),
        schema=("pickup_ts", 1),
    ),
    "parquet NaN": Case(
        parquet(
            lambda: pl.DataFrame(good_frame()).with_columns(
                pl.when(pl.int_range(pl.len()) == 3)
                .then(float("nan"))
                .otherwise(pl.col("fare_usd"))
                .alias("fare_usd")
            )
        ),
        schema=("fare_usd", 4),
    ),
    "parquet no rows": Case(
        parquet(lambda: pl.DataFrame(good_frame()).head(0)), schema=(None, None)
    ),
    "parquet naive timestamps": Case(parquet(lambda: pl.DataFrame(good_frame()))),
    "parquet zoned timestamps": Case(
        parquet(
            lambda: pl.DataFrame(good_frame()).with_columns(
                pl.col("pickup_ts").dt.replace_time_zone("UTC")
            )
        )
    ),
}


def published_state(db: Path) -> list[tuple[object, ...]]:
    if not db.exists():
        return []
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "SELECT trip_id, fare_usd, _run_id FROM analytics.trips ORDER BY trip_id"
        ).fetchall()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_corpus(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    data = tmp_path / "in"
    data.mkdir()
    path = case.build(data)
    db = tmp_path / "wh.duckdb"
    settings = load_settings(
        {
            "source": f"file:{path}",
            "staging": str(tmp_path / "staging"),
            "warehouse": f"duckdb:{db}",
            "pii_key_file": str(tmp_path / "pii.key"),
        },
        environ={},
    )
    ctx = RunContext.create("run00001", DAY, settings)
    before = published_state(db)
    if case.schema is not None:
        with pytest.raises(SchemaError) as err:
            extract(ctx)
        column, row = case.schema
        assert err.value.file == str(path), name
        assert err.value.column == column, name
        assert err.value.row == row, name
        assert not list((tmp_path / "staging").rglob("*.parquet")), "nothing may be staged"
        assert published_state(db) == before
        return
    report = RunReport(ctx)
    report.extracted = extract(ctx)
    report.transformed = transform(ctx)
    assert {k: v for k, v in report.transformed.reasons.items() if v} == case.quarantined, name
    report.loaded = load(ctx)
    report.checks = validate(
        ctx, report.rows["extracted"], report.rows["quarantined"], report.loaded
    )
    failed = [c.name for c in report.checks if not c.passed]
    assert failed == case.failed_checks, name
    if failed:
        assert published_state(db) == before, "a failed check publishes nothing"
        return
    publish(ctx, report.loaded, report.ledger("published"))
    state = published_state(db)
    assert (
        len(state) == report.rows["loaded"] == report.rows["extracted"] - report.rows["quarantined"]
    )
    if "SQL-looking" in name:
        assert tuple(r[0] for r in state if r[0] == SQLISH) == (SQLISH,)


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 25
    assert sum(1 for n in CASES if n.startswith("parquet")) >= 5
