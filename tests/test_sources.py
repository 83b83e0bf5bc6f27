"""File sources through declared formats, on real CSV and Parquet files written by the tests."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
from helpers import TLC_CSV

from tasks.config import load_settings
from tasks.contract import RAW_SCHEMA
from tasks.errors import SchemaError
from tasks.formats import TLC_YELLOW, TRIPS
from tasks.sources import make_source
from tasks.sources.files import FileSource
from tasks.sources.synthetic import SyntheticSource
from tasks.transforms import EmailHasher, classify, quarantined_trips

DAY = date(2025, 11, 15)
HEADER = "trip_id,pickup_ts,dropoff_ts,distance_km,fare_usd,region,rider_email\n"


def extract(path: Path | str, tmp: Path, *, fmt=TRIPS, tz: str = "UTC", day: date = DAY):
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    source = FileSource(str(path), fmt, default_timezone=tz, region_set=None)
    stats = source.extract(day, out, EmailHasher(b"test-key"))
    parts = sorted(out.glob("part-*.parquet"))
    frame = pl.read_parquet(parts) if parts else pl.DataFrame(schema=RAW_SCHEMA)
    return stats, frame


def write(tmp: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = tmp / name
    path.write_bytes(text.encode(encoding))
    return path


def test_sample_is_the_seed_configmap(tmp_path: Path) -> None:
    source = make_source(load_settings({"source": "sample"}, environ={}))
    out = tmp_path / "o"
    out.mkdir()
    stats = source.extract(DAY, out, EmailHasher(b"k"))
    frame = pl.read_parquet(list(out.glob("*.parquet")))
    assert stats.on_day == 10
    assert frame["trip_id"].to_list() == [f"T{i:03d}" for i in range(1, 11)]
    assert frame["fare_usd"].sum() == pytest.approx(211.40)
    assert set(frame["region"]) == {"us-east", "us-west", "eu-west"}


def test_missing_required_column_names_file_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "trip_id,date,distance_km,region\nA,2025-11-15,1.0,x\n")
    with pytest.raises(SchemaError) as err:
        extract(path, tmp_path)
    assert err.value.file == str(path)
    assert err.value.column == "fare_usd"
    assert "fare_usd" in str(err.value) and str(path) in str(err.value)


def test_text_in_a_numeric_column_names_column_row_and_describes_the_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.csv",
        "trip_id,date,distance_km,fare_usd,region\n"
        'A,2025-11-15,1.0,2.0,x\nB,2025-11-15,1.0,"12,5",x\nC,2025-11-15,oops,2,x\n',
    )
    with pytest.raises(SchemaError) as err:
        extract(path, tmp_path)
    assert (err.value.column, err.value.row) == ("distance_km", 3)
    # The cell is described, not quoted: length, shape and the run's keyed fingerprint of it
    # (the first 8 hex characters of its HMAC, as rider_email_hash would hash it).
    fingerprint = EmailHasher(b"test-key")(pl.Series(["oops"]))[0][:8]
    assert err.value.value == f"text of 4 characters, shape 'a', fingerprint {fingerprint}"
    assert "oops" not in str(err.value)
    assert not list((tmp_path / "out").glob("*"))


def test_decimal_comma_is_a_schema_error(tmp_path: Path) -> None:
    path = write(
        tmp_path, "t.csv", 'trip_id,date,distance_km,fare_usd,region\nA,2025-11-15,1.0,"12,5",x\n'
    )
    with pytest.raises(SchemaError) as err:
        extract(path, tmp_path)
    assert (err.value.column, err.value.row) == ("fare_usd", 1)
    # The shape shows the decimal comma without quoting the cell.
    assert err.value.value is not None
    assert err.value.value.startswith("text of 4 characters, shape '9,9', fingerprint ")


@pytest.mark.parametrize(
    ("value", "shape"), [("NaN", "a"), ("inf", "a"), ("-inf", "-a"), ("1e300", "9a9")]
)
def test_non_finite_or_huge_numbers_are_schema_errors(
    tmp_path: Path, value: str, shape: str
) -> None:
    path = write(
        tmp_path, "t.csv", f"trip_id,date,distance_km,fare_usd,region\nA,2025-11-15,{value},1,x\n"
    )
    with pytest.raises(SchemaError) as err:
        extract(path, tmp_path)
    assert err.value.column == "distance_km" and err.value.value is not None
    assert err.value.value.startswith(f"text of {len(value)} characters, shape {shape!r}, ")


def test_bad_timestamp_is_a_schema_error(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", HEADER + "A,yesterday-ish,,1,1,x,\n")
    with pytest.raises(SchemaError) as err:
        extract(path, tmp_path)
    assert (err.value.column, err.value.row) == ("pickup_ts", 1)


def test_empty_and_header_only_files_are_schema_errors(tmp_path: Path) -> None:
    empty = write(tmp_path, "empty.csv", "")
    with pytest.raises(SchemaError, match="empty") as err:
        extract(empty, tmp_path)
    assert err.value.file == str(empty)
    header = write(tmp_path, "header.csv", HEADER)
    with pytest.raises(SchemaError, match="no rows") as err:
        extract(header, tmp_path)
    assert err.value.file == str(header)


def test_one_bad_file_stages_nothing_from_the_good_ones(tmp_path: Path) -> None:
    write(tmp_path, "a.csv", HEADER + "A,2025-11-15 08:00:00,,1,1,x,\n")
    write(tmp_path, "b.csv", HEADER + "B,2025-11-15 08:00:00,,abc,1,x,\n")
    with pytest.raises(SchemaError) as err:
        extract(tmp_path / "*.csv", tmp_path)
    assert err.value.file is not None and err.value.file.endswith("b.csv")
    assert not list((tmp_path / "out").glob("*"))


def test_bom_crlf_and_quoted_newlines_read(tmp_path: Path) -> None:
    text = (
        "\ufefftrip_id,date,distance_km,fare_usd,region,status\r\n"
        'A,2025-11-15,1.5,2.5,us-east,"multi\r\nline"\r\n'
        "B,2025-11-15,2,3,us-west,ok\r\n"
    )
    stats, frame = extract(write(tmp_path, "t.csv", text), tmp_path)
    assert stats.on_day == 2
    assert frame["trip_id"].to_list() == ["A", "B"]
    assert frame["status"][0] == "multi\r\nline"


def test_timestamps_with_and_without_zones(tmp_path: Path) -> None:
    text = HEADER + (
        "A,2025-11-15T08:00:00Z,2025-11-15T08:30:00Z,1,1,x,\n"
        "B,2025-11-15 09:00:00+01:00,,1,1,x,\n"
        "C,2025-11-15 23:30:00,,1,1,x,\n"  # naive: read in the source timezone
    )
    _, frame = extract(write(tmp_path, "t.csv", text), tmp_path, tz="America/New_York")
    got = dict(zip(frame["trip_id"], frame["pickup_ts"], strict=True))
    assert got["A"] == datetime(2025, 11, 15, 8, 0, tzinfo=UTC)
    assert got["B"] == datetime(2025, 11, 15, 8, 0, tzinfo=UTC)
    assert got["C"] == datetime(2025, 11, 16, 4, 30, tzinfo=UTC)  # 23:30 EST is 04:30 UTC
    assert set(frame["trip_date"]) == {DAY}


def test_the_business_day_is_the_local_pickup_date(tmp_path: Path) -> None:
    # 02:00 UTC on the 16th is 21:00 on the 15th in New York: it belongs to the 15th there.
    text = HEADER + "A,2025-11-16T02:00:00Z,,1,1,x,\nB,2025-11-15T02:00:00Z,,1,1,x,\n"
    stats, frame = extract(write(tmp_path, "t.csv", text), tmp_path, tz="America/New_York")
    assert frame["trip_id"].to_list() == ["A"]
    assert (stats.on_day, stats.other_days) == (1, 1)


def test_dst_ambiguous_takes_earlier_and_non_existent_is_missing_key(tmp_path: Path) -> None:
    header = HEADER
    fall = write(tmp_path, "fall.csv", header + "A,2025-11-02 01:30:00,,1,1,x,\n")
    _, frame = extract(fall, tmp_path, tz="America/New_York", day=date(2025, 11, 2))
    assert frame["pickup_ts"][0] == datetime(2025, 11, 2, 5, 30, tzinfo=UTC)  # EDT, the earlier
    spring = write(tmp_path, "spring.csv", header + "B,2025-03-09 02:30:00,,1,1,x,\n")
    (tmp_path / "out").rename(tmp_path / "out-fall")
    _, frame = extract(spring, tmp_path, tz="America/New_York", day=date(2025, 3, 9))
    assert frame["pickup_ts"][0] is None and frame["trip_date"][0] == date(2025, 3, 9)
    q = quarantined_trips(classify(frame.lazy(), None), "r").collect()
    assert q["reasons"].to_list() == [["missing_key"]]


def test_pickup_wins_over_date_and_unknown_days_are_unattributed(tmp_path: Path) -> None:
    text = (
        "trip_id,pickup_ts,date,distance_km,fare_usd,region\n"
        "A,2025-11-15 10:00:00,2025-11-14,1,1,x\n"
        "B,,2025-11-15,1,1,x\n"
        "C,,,1,1,x\n"
    )
    stats, frame = extract(write(tmp_path, "t.csv", text), tmp_path)
    assert sorted(frame["trip_id"]) == ["A", "B"]
    assert stats.unattributed == 1


def test_pii_is_hashed_before_it_is_written(tmp_path: Path) -> None:
    canary = "canary.rider+leak@example.com"
    text = HEADER + f"A,2025-11-15 08:00:00,,1,1,x,{canary}\n"
    _, frame = extract(write(tmp_path, "t.csv", text), tmp_path)
    assert "rider_email" not in frame.columns
    for part in (tmp_path / "out").glob("*"):
        assert canary.encode() not in part.read_bytes()
        assert b"canary.rider" not in part.read_bytes()


def test_tlc_format_maps_the_real_sample(tmp_path: Path) -> None:
    stats, frame = extract(TLC_CSV, tmp_path, fmt=TLC_YELLOW, day=date(2019, 1, 15))
    assert stats.total == 10_000
    assert stats.on_day == frame.height > 300
    src = pl.read_csv(TLC_CSV).filter(pl.col("pickup_datetime").str.starts_with("2019-01-15"))
    assert frame.height == src.height
    assert set(frame["region"]) <= {
        "manhattan",
        "brooklyn",
        "queens",
        "bronx",
        "staten-island",
        "ewr",
        "unknown",
    }
    assert set(frame["payment_type"]) <= {
        "card",
        "cash",
        "no_charge",
        "dispute",
        "unknown",
        "voided",
    }
    first = src.row(0, named=True)
    row = frame.filter(pl.col("_source_row") == frame["_source_row"].min()).row(0, named=True)
    assert row["distance_km"] == pytest.approx(first["trip_distance"] * 1.609344)
    assert row["fare_usd"] == pytest.approx(first["fare_amount"])
    # New York local time is stored as UTC (January: UTC-5).
    local = datetime.strptime(first["pickup_datetime"], "%Y-%m-%d %H:%M:%S")
    assert row["pickup_ts"].replace(tzinfo=None) == local.replace(hour=local.hour) + (
        datetime(2019, 1, 1, 5) - datetime(2019, 1, 1)
    )


def test_tlc_unknown_zones_are_unknown_region(tmp_path: Path) -> None:
    text = (
        "vendor_id,pickup_datetime,dropoff_datetime,trip_distance,pickup_location_id,"
        "payment_type,fare_amount\n"
        "1,2019-01-15 10:00:00,2019-01-15 10:10:00,1.0,264,1,5.0\n"
        "1,2019-01-15 10:00:00,2019-01-15 10:10:00,1.0,999,9,5.0\n"
        "1,2019-01-15 10:00:00,2019-01-15 10:10:00,1.0,1,2,5.0\n"
        "1,2019-01-15 10:00:00,2019-01-15 10:10:00,1.0,5,3,5.0\n"
    )
    _, frame = extract(
        write(tmp_path, "t.csv", text), tmp_path, fmt=TLC_YELLOW, day=date(2019, 1, 15)
    )
    assert frame["region"].to_list() == ["unknown", "unknown", "ewr", "staten-island"]
    assert frame["payment_type"].to_list() == ["card", "unknown", "cash", "no_charge"]
    q = quarantined_trips(classify(frame.lazy(), TLC_YELLOW.region_set), "r").collect()
    assert q["reasons"].to_list() == [["unknown_region"], ["unknown_region"]]


def test_tlc_official_names_and_parquet_hash_like_csv(tmp_path: Path) -> None:
    _, from_csv = extract(TLC_CSV, tmp_path, fmt=TLC_YELLOW, day=date(2019, 1, 15))
    official = (
        pl.read_csv(TLC_CSV)
        .rename(
            {
                "vendor_id": "VendorID",
                "pickup_datetime": "tpep_pickup_datetime",
                "dropoff_datetime": "tpep_dropoff_datetime",
                "pickup_location_id": "PULocationID",
                "dropoff_location_id": "DOLocationID",
                "rate_code_id": "RatecodeID",
            }
        )
        .with_columns(
            pl.col("tpep_pickup_datetime").str.to_datetime(),
            pl.col("tpep_dropoff_datetime").str.to_datetime(),
            extra_column_ignored=pl.lit("x"),
        )
    )
    parquet = tmp_path / "tlc.parquet"
    official.write_parquet(parquet)
    (tmp_path / "out").rename(tmp_path / "out-csv")
    _, from_parquet = extract(parquet, tmp_path, fmt=TLC_YELLOW, day=date(2019, 1, 15))
    assert from_parquet["trip_id"].to_list() == from_csv["trip_id"].to_list()
    assert from_parquet["region"].to_list() == from_csv["region"].to_list()
    assert from_parquet["pickup_ts"].to_list() == from_csv["pickup_ts"].to_list()


def test_tlc_exact_duplicate_rows_share_a_trip_id(tmp_path: Path) -> None:
    line = "1,2019-01-15 10:00:00,2019-01-15 10:10:00,1.0,4,1,5.0\n"
    text = (
        "vendor_id,pickup_datetime,dropoff_datetime,trip_distance,pickup_location_id,"
        "payment_type,fare_amount\n" + line + line
    )
    _, frame = extract(
        write(tmp_path, "t.csv", text), tmp_path, fmt=TLC_YELLOW, day=date(2019, 1, 15)
    )
    assert frame["trip_id"].n_unique() == 1
    q = quarantined_trips(classify(frame.lazy(), TLC_YELLOW.region_set), "r").collect()
    assert q["reasons"].to_list() == [["duplicate_trip_id"]]


def test_synthetic_is_deterministic_and_of_the_day(tmp_path: Path) -> None:
    frames = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        SyntheticSource(rows=5000, seed=7, timezone="UTC", region_set=None).extract(
            DAY, out, EmailHasher(b"k")
        )
        frames.append(pl.read_parquet(list(out.glob("*.parquet"))))
    assert frames[0].equals(frames[1])
    assert frames[0].height == 5000
    assert set(frames[0]["trip_date"]) == {DAY}
    assert frames[0]["pickup_ts"].dt.date().unique().to_list() == [DAY]
    share = quarantined_trips(classify(frames[0].lazy(), None), "r").collect().height / 5000
    assert 0 < share < 0.05


def test_synthetic_cardinalities_are_realistic() -> None:
    """UUID text trip ids, about one distinct rider per 4 trips, a fleet of up to 300k drivers,
    and a few percent of dirty rows (``riders >= rows``: every trip its own rider)."""
    from tasks.sources.synthetic import DRIVERS, generate_chunk

    rows = 40_000
    frame = generate_chunk(DAY, start=0, count=rows, total=rows, seed=3, timezone="UTC")
    uuid = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
    assert frame["trip_id"].str.contains(uuid).all()
    assert 0.97 * rows < frame["trip_id"].n_unique() < rows  # re-sent trips repeat an id
    assert 0.95 * rows / 4 < frame["rider_id"].n_unique() <= rows / 4
    assert frame["driver_id"].n_unique() <= min(DRIVERS, rows // 4)
    dirty = frame.filter(
        (pl.col("distance_km") <= 0)
        | (pl.col("fare_usd") < 0)
        | (pl.col("dropoff_ts") < pl.col("pickup_ts"))
    ).height
    assert 0.01 < dirty / rows < 0.05
    own = generate_chunk(DAY, start=0, count=rows, total=rows, seed=3, timezone="UTC", riders=rows)
    assert own["rider_email"].n_unique() == rows
    big = generate_chunk(DAY, start=0, count=rows, total=8_000_000, seed=3, timezone="UTC")
    assert big["driver_id"].str.slice(1).cast(pl.Int64).max() < DRIVERS  # type: ignore[operator]
