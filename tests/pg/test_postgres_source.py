"""The PostgreSQL source against a real server the tests start (``conftest.py``): no mocks."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import psycopg
import pyarrow as pa
import pytest
from helpers import tripflow
from pgserver import PASSWORD, ThrowawayPostgres

from tasks.config import load_settings
from tasks.contract import RAW_SCHEMA
from tasks.errors import InfrastructureError, SchemaError, UsageError
from tasks.sources import make_source
from tasks.sources.postgres import TABLE_DDL, PostgresSource, fits_float8, seed
from tasks.transforms import EmailHasher

DAY = date(2025, 11, 15)
KEY = b"test-key"
FAST = (0.05, 0.05)


def create(pg: ThrowawayPostgres, table: str, ddl: str = TABLE_DDL) -> None:
    pg.psql_local(f"CREATE TABLE {table} ({ddl}); CREATE INDEX ON {table} (pickup_ts)")


def insert(pg: ThrowawayPostgres, table: str, rows: list[tuple[str, datetime]]) -> None:
    with psycopg.connect(pg.dsn()) as conn:
        conn.cursor().executemany(
            f"INSERT INTO {table} (trip_id, pickup_ts, dropoff_ts, distance_km, fare_usd, region,"
            " rider_id, rider_email, driver_id, payment_type, status)"
            " VALUES (%s, %s, %s + interval '10 minutes', 3.5, 12.25, 'us-east', 'R1',"
            " %s, 'D1', 'card', 'completed')",
            [(trip_id, ts, ts, f"Rider.{trip_id}@Example.com") for trip_id, ts in rows],
        )


def source(pg: ThrowawayPostgres, table: str, **kw: object) -> PostgresSource:
    args: dict[str, object] = {"timezone": "UTC", "region_set": None, "retry_delays": FAST}
    args.update(kw)
    return PostgresSource(pg.dsn(), table=table, **args)  # type: ignore[arg-type]


def raw(folder: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted(folder.glob("part-*.parquet")))


def boundary_rows(tz: str) -> tuple[list[tuple[str, datetime]], set[str]]:
    """Trips around the day in ``tz``: just before, at, and just after each midnight."""
    zone = ZoneInfo(tz)
    start = datetime(2025, 11, 15, tzinfo=zone)
    end = datetime(2025, 11, 16, tzinfo=zone)
    us = timedelta(microseconds=1)
    rows = [
        ("before-day", start - timedelta(hours=3)),
        ("last-us-of-day-before", start - us),
        ("first-us", start),
        ("noon", start + timedelta(hours=12)),
        ("last-us", end - us),
        ("next-midnight", end),
        ("next-day", end + timedelta(hours=5)),
    ]
    return rows, {"first-us", "noon", "last-us"}


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_exactly_the_days_rows_in_the_source_timezone(
    pg: ThrowawayPostgres, table: str, tmp_path: Path, tz: str
) -> None:
    """A range on pickup_ts in the source timezone: both midnights handled, neighbours excluded."""
    create(pg, table)
    rows, expected = boundary_rows(tz)
    insert(pg, table, rows)
    stats = source(pg, table, timezone=tz).extract(DAY, tmp_path, EmailHasher(KEY))
    frame = raw(tmp_path)
    assert set(frame["trip_id"]) == expected
    assert stats.total == stats.on_day == 3 and stats.other_days == 0
    assert frame["trip_date"].unique().to_list() == [DAY]
    # The instants survive the trip: UTC in the Parquet equals what the table holds.
    by_id = dict(rows)
    for trip_id, pickup in frame.select("trip_id", "pickup_ts").iter_rows():
        assert pickup == by_id[trip_id].astimezone(ZoneInfo("UTC"))


def test_naive_timestamp_column_is_read_as_wall_clock_in_the_source_timezone(
    pg: ThrowawayPostgres, table: str, tmp_path: Path
) -> None:
    create(pg, table, TABLE_DDL.replace("timestamptz", "timestamp"))
    pg.psql_local(
        f"INSERT INTO {table} (trip_id, pickup_ts, distance_km, fare_usd, region) VALUES "
        "('eve', '2025-11-14 23:59:59.999999', 1, 1, 'x'), ('first', '2025-11-15 00:00', 1, 1, "
        "'x'), ('last', '2025-11-15 23:59:59.999999', 1, 1, 'x'), ('next', '2025-11-16 00:00', "
        "1, 1, 'x')"
    )
    source(pg, table, timezone="America/New_York").extract(DAY, tmp_path, EmailHasher(KEY))
    frame = raw(tmp_path).sort("trip_id")
    assert frame["trip_id"].to_list() == ["first", "last"]
    # Midnight in New York (EST, UTC-5) is 05:00 UTC.
    assert frame["pickup_ts"][0] == datetime(2025, 11, 15, 5, tzinfo=ZoneInfo("UTC"))


def test_raw_parquet_matches_the_raw_schema_and_hashes_emails(
    pg: ThrowawayPostgres, table: str, tmp_path: Path
) -> None:
    seed(pg.dsn(), DAY, 3000, table=table)
    src = source(pg, table, chunk_rows=1000, batch_bytes=20_000)
    stats = src.extract(DAY, tmp_path, EmailHasher(KEY))
    parts = sorted(tmp_path.glob("part-*.parquet"))
    assert len(parts) >= 3  # streamed in chunks, not one frame
    for part in parts:
        assert pl.read_parquet_schema(part) == RAW_SCHEMA
    frame = raw(tmp_path)
    assert stats.on_day == frame.height == 3000
    assert frame["_source_row"].sort().to_list() == list(range(1, 3001))
    assert frame["_source_file"].unique().to_list() == [
        f"postgres:tripflow@127.0.0.1:{pg.port}/trips/{table}"
    ]
    # The hash is the keyed hash of the normalized email; no clear email is anywhere in the files.
    with psycopg.connect(pg.dsn()) as conn:
        emails = dict(conn.execute(f"SELECT trip_id, rider_email FROM {table}").fetchall())
    one = frame.row(0, named=True)
    expected = EmailHasher(KEY)(pl.Series("e", [emails[one["trip_id"]]]))[0]
    assert one["rider_email_hash"] == expected
    text_columns = [c for c, t in RAW_SCHEMA.items() if t == pl.String()]
    clear = frame.select(pl.any_horizontal(pl.col(text_columns).str.contains("@example.com")))
    assert not clear.to_series().any()
    for part in parts:
        assert b"@example.com" not in part.read_bytes()
    # Same totals as the table holds (fares are numeric(12,2) there).
    with psycopg.connect(pg.dsn()) as conn:
        row = conn.execute(f"SELECT count(*), sum(fare_usd)::float8 FROM {table}").fetchone()
    assert row is not None
    assert frame.height == row[0]
    assert frame["fare_usd"].sum() == pytest.approx(row[1])


def test_renamed_columns_and_an_unmapped_optional_column(
    pg: ThrowawayPostgres, table: str, tmp_path: Path
) -> None:
    pg.psql_local(
        f"CREATE TABLE {table} (id bigint, started_at timestamptz, km numeric(8,3), "
        "price numeric(10,2), zone varchar(20))"
    )
    pg.psql_local(f"INSERT INTO {table} VALUES (7, '2025-11-15 10:00+00', 2.5, 9.99, 'us-west')")
    src = source(
        pg,
        table,
        columns=[
            "trip_id=id",
            "pickup_ts=started_at",
            "distance_km=km",
            "fare_usd=price",
            "region=zone",
            "dropoff_ts=",
            "rider_id=",
            "rider_email=",
            "driver_id=",
            "payment_type=",
            "status=",
        ],
    )
    src.extract(DAY, tmp_path, EmailHasher(KEY))
    row = raw(tmp_path).row(0, named=True)
    assert (row["trip_id"], row["distance_km"], row["fare_usd"], row["region"]) == (
        "7",
        2.5,
        9.99,
        "us-west",
    )
    assert row["rider_email_hash"] is None and row["dropoff_ts"] is None


def test_connection_refused_names_host_and_database_not_the_password(tmp_path: Path) -> None:
    port = __import__("pgserver").free_port()
    dsn = f"postgresql://tripflow:{PASSWORD}@127.0.0.1:{port}/trips?connect_timeout=2"
    src = PostgresSource(dsn, timezone="UTC", region_set=None, retry_delays=FAST)
    with pytest.raises(InfrastructureError) as info:
        src.extract(DAY, tmp_path, EmailHasher(KEY))
    message = info.value.message
    assert "host 127.0.0.1" in message and "database trips" in message
    assert "after 3 attempts" in message
    assert PASSWORD not in message and PASSWORD not in repr(info.value)
    assert PASSWORD not in src.description and PASSWORD not in repr(src)
    assert PASSWORD not in src.fingerprint()


def test_bad_password_is_an_infrastructure_error_without_the_password(
    pg: ThrowawayPostgres, tmp_path: Path
) -> None:
    wrong = "not-the-Pa55word"
    src = PostgresSource(pg.dsn(password=wrong), timezone="UTC", region_set=None, retry_delays=FAST)
    with pytest.raises(InfrastructureError) as info:
        src.extract(DAY, tmp_path, EmailHasher(KEY))
    message = info.value.message
    assert "host 127.0.0.1" in message and "database trips" in message
    assert "password authentication failed" in message
    assert wrong not in message and PASSWORD not in message
    assert list(tmp_path.iterdir()) == []


def test_missing_table_is_a_schema_error_naming_it(pg: ThrowawayPostgres, tmp_path: Path) -> None:
    with pytest.raises(SchemaError) as info:
        source(pg, "public.no_such_trips").extract(DAY, tmp_path, EmailHasher(KEY))
    assert "public.no_such_trips" in info.value.message
    assert PASSWORD not in info.value.message
    assert list(tmp_path.iterdir()) == []


def test_missing_or_retyped_column_is_a_schema_error_naming_it(
    pg: ThrowawayPostgres, table: str, tmp_path: Path
) -> None:
    create(pg, table)
    with pytest.raises(SchemaError) as info:
        source(pg, table, columns=["pickup_ts=started_at"]).extract(DAY, tmp_path, EmailHasher(KEY))
    assert info.value.column == "started_at" and "started_at" in info.value.message
    pg.psql_local(f"ALTER TABLE {table} ALTER COLUMN fare_usd TYPE text")
    with pytest.raises(SchemaError) as info:
        source(pg, table).extract(DAY, tmp_path, EmailHasher(KEY))
    assert info.value.column == "fare_usd" and "text" in info.value.message


@pytest.mark.parametrize(
    ("column", "value", "description"),
    [
        ("fare_usd", "'NaN'::numeric", "text of 3 characters, shape 'a'"),
        ("fare_usd", "'-Infinity'::numeric", "text of 4 characters, shape '-a'"),
        ("fare_usd", "1e13::numeric", "text of 16 characters, shape '9.9'"),
        ("fare_usd", "1e400::numeric", "text of 3 characters, shape 'a'"),  # no float8 holds it
        ("distance_km", "1e13", "text of 16 characters, shape '9.9'"),
        ("distance_km", "'NaN'::float8", "text of 3 characters, shape 'a'"),
        ("distance_km", "'-Infinity'::float8", "text of 4 characters, shape '-a'"),
    ],
)
def test_a_number_the_contract_cannot_hold_is_a_schema_error_that_describes_it(
    pg: ThrowawayPostgres, table: str, tmp_path: Path, column: str, value: str, description: str
) -> None:
    """NaN (which ``numeric`` holds) or a magnitude of 10^12 or more fails as in a file: the
    error names the table, the column and the row, and describes the value without quoting it
    (before, a NaN fare reached the transform, whose cast to money failed quoting it)."""
    create(pg, table)
    start = datetime(2025, 11, 15, 8, tzinfo=ZoneInfo("UTC"))
    insert(pg, table, [(f"t{i}", start + timedelta(minutes=i)) for i in range(3)])
    if value in ("'-Infinity'::numeric", "1e13::numeric", "1e400::numeric"):  # not numeric(10, 2)
        pg.psql_local(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE numeric")
    pg.psql_local(f"UPDATE {table} SET {column} = {value} WHERE trip_id = 't2'")
    with pytest.raises(SchemaError) as info:
        source(pg, table).extract(DAY, tmp_path, EmailHasher(KEY))
    assert (info.value.column, info.value.row) == (column, 3)
    assert info.value.file is not None and table in info.value.file
    assert info.value.value is not None
    assert info.value.value.startswith(description + ", fingerprint "), info.value.value
    assert "NaN" not in info.value.message and "10000000000000" not in info.value.message


@pytest.mark.parametrize("fare_type", ["numeric(10, 2)", "numeric"])
def test_numbers_cross_as_float8_where_every_value_fits_one(
    pg: ThrowawayPostgres, table: str, tmp_path: Path, fare_type: str
) -> None:
    """``double precision`` is read as it is; a ``numeric(p, s)`` that fits a float8 is cast by
    the server (cheaper than the driver writing it out as decimal text for the client to parse);
    an unconstrained ``numeric``, which may hold 1e400, crosses in binary as the driver's decimal
    text, parsed by the client. The floats are the ones PostgreSQL's own cast gives either way,
    awkward values included."""
    create(pg, table)  # distance_km double precision, fare_usd numeric(10, 2)
    pg.psql_local(f"ALTER TABLE {table} ALTER COLUMN fare_usd TYPE {fare_type}")
    start = datetime(2025, 11, 15, 8, tzinfo=ZoneInfo("UTC"))
    fares = ["0.10", "0.07", "12345678.91", "-0.01", "99999999.99", "1.005", "0.00"]
    insert(pg, table, [(f"t{i}", start + timedelta(minutes=i)) for i in range(len(fares))])
    pg.psql_local(
        f"UPDATE {table} SET distance_km = 0.1::float8 + 0.2::float8 WHERE trip_id = 't1'"
    )
    for i, fare in enumerate(fares):
        pg.psql_local(f"UPDATE {table} SET fare_usd = '{fare}' WHERE trip_id = 't{i}'")
    wire: dict[str, object] = {}

    class Probe(PostgresSource):
        def _contract(self, batches, first_row, described):  # type: ignore[no-untyped-def]
            wire.update({field.name: field.type for field in batches[0].schema})
            return super()._contract(batches, first_row, described)

    Probe(pg.dsn(), table=table, timezone="UTC", region_set=None).extract(
        DAY, tmp_path, EmailHasher(KEY)
    )
    assert str(wire["distance_km"]) == "double", wire
    fare_wire = wire["fare_usd"]
    if fare_type == "numeric":
        assert isinstance(fare_wire, pa.BaseExtensionType), wire
        assert fare_wire.storage_type == pa.string(), wire
    else:
        assert str(fare_wire) == "double", wire
    frame = raw(tmp_path).sort("trip_id")
    with psycopg.connect(pg.dsn()) as conn:
        cast = conn.execute(
            f"SELECT distance_km, fare_usd::float8 FROM {table} ORDER BY trip_id"
        ).fetchall()
    assert frame["distance_km"].to_list() == [c[0] for c in cast]
    assert frame["fare_usd"].to_list() == [c[1] for c in cast]
    assert frame["distance_km"][1] == 0.1 + 0.2 and frame["fare_usd"][0] == 0.1


def test_only_a_numeric_that_fits_a_float8_is_cast_by_the_server() -> None:
    assert fits_float8("numeric(10,2)") and fits_float8("numeric(300,0)")
    assert fits_float8("numeric(5,-2)") and fits_float8("numeric(300,300)")
    assert not fits_float8("numeric") and not fits_float8(None)
    assert not fits_float8("numeric(301,0)") and not fits_float8("numeric(1000,500)")
    assert not fits_float8("numeric(300,-2)") and not fits_float8("numeric(301,301)")


def test_identifiers_are_validated(pg: ThrowawayPostgres) -> None:
    for bad in ("trips; DROP TABLE x", "a.b.c", 'public."trips"', "1trips"):
        with pytest.raises(UsageError):
            source(pg, bad)
    with pytest.raises(UsageError):
        source(pg, "public.trips", columns=["pickup_ts=x y"])
    with pytest.raises(UsageError):
        source(pg, "public.trips", columns=["trip_id="])


def test_the_day_is_one_repeatable_read_snapshot(
    pg: ThrowawayPostgres, table: str, tmp_path: Path
) -> None:
    """A write committed after the extract's snapshot but before its data query is not seen.

    Under READ COMMITTED the data query would take a new snapshot and see it; in a REPEATABLE READ
    transaction the whole extract reads the snapshot of its first query.
    """
    create(pg, table)
    insert(pg, table, [("before", datetime(2025, 11, 15, 9, tzinfo=ZoneInfo("UTC")))])
    seen: dict[str, object] = {}

    class Writer(PostgresSource):
        def query(self, run_date: date, described: list) -> str:  # type: ignore[type-arg]
            # Runs inside the extract's open transaction, between its first query and the day's.
            insert(pg, table, [("late", datetime(2025, 11, 15, 10, tzinfo=ZoneInfo("UTC")))])
            with psycopg.connect(pg.dsn(), autocommit=True) as other:
                seen["activity"] = other.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tripflow' "
                    "AND state = 'idle in transaction'"
                ).fetchone()
            return super().query(run_date, described)

    src = Writer(pg.dsn(), table=table, timezone="UTC", region_set=None)
    src.extract(DAY, tmp_path, EmailHasher(KEY))
    assert raw(tmp_path)["trip_id"].to_list() == ["before"]
    assert seen["activity"] == (1,)  # application_name=tripflow, inside a transaction
    assert src.snapshot  # recorded, and part of the fingerprint
    # The next run sees the late trip.
    for part in tmp_path.glob("part-*"):
        part.unlink()
    source(pg, table).extract(DAY, tmp_path, EmailHasher(KEY))
    assert sorted(raw(tmp_path)["trip_id"]) == ["before", "late"]


def test_the_transaction_is_read_only_with_a_statement_timeout(
    pg: ThrowawayPostgres, table: str, tmp_path: Path
) -> None:
    create(pg, table)
    settings: dict[str, object] = {}

    class Probe(PostgresSource):
        def query(self, run_date: date, described: list) -> str:  # type: ignore[type-arg]
            return (
                "SELECT current_setting('transaction_isolation') AS trip_id, "
                "current_setting('transaction_read_only') AS region, "
                "current_setting('statement_timeout') AS status, "
                "current_setting('application_name') AS rider_id, "
                "now() AS pickup_ts, now() AS dropoff_ts, 1.0::float8 AS distance_km, "
                "1.0::float8 AS fare_usd, NULL::text AS rider_email, NULL::text AS driver_id, "
                "NULL::text AS payment_type"
            )

    Probe(pg.dsn(), table=table, timezone="UTC", region_set=None, statement_timeout_s=90).extract(
        date.today(), tmp_path, EmailHasher(KEY)
    )
    row = raw(tmp_path).row(0, named=True)
    settings.update(row)
    assert settings["trip_id"] == "repeatable read"
    assert settings["region"] == "on"
    assert settings["status"] == "90s"
    assert settings["rider_id"] == "tripflow"


def test_statement_timeout_fails_as_infrastructure(
    pg: ThrowawayPostgres, table: str, tmp_path: Path
) -> None:
    create(pg, table)

    class Slow(PostgresSource):
        def query(self, run_date: date, described: list) -> str:  # type: ignore[type-arg]
            return (
                "SELECT * FROM (SELECT pg_sleep(5)) s, "
                + super().query(run_date, described).replace("SELECT", "LATERAL (SELECT", 1)
                + ") d"
            )

    src = Slow(pg.dsn(), table=table, timezone="UTC", region_set=None, statement_timeout_s=0.5)
    with pytest.raises(InfrastructureError) as info:
        src.extract(DAY, tmp_path, EmailHasher(KEY))
    assert "statement_timeout" in info.value.message


def test_make_source_reads_the_dsn_from_the_environment_only(
    pg: ThrowawayPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIPFLOW_POSTGRES_DSN", pg.dsn())
    monkeypatch.setenv("TRIPFLOW_POSTGRES_COLUMNS", "pickup_ts=started_at")
    settings = load_settings({"source": "postgres:analytics.rides"})
    src = make_source(settings)
    assert isinstance(src, PostgresSource)
    assert (src.schema, src.table, src.columns["pickup_ts"]) == ("analytics", "rides", "started_at")
    assert PASSWORD not in repr(settings) and PASSWORD not in src.description
    assert src.description == f"postgres tripflow@127.0.0.1:{pg.port}/trips table analytics.rides"
    monkeypatch.delenv("TRIPFLOW_POSTGRES_DSN")
    with pytest.raises(UsageError, match="TRIPFLOW_POSTGRES_DSN"):
        make_source(load_settings({"source": "postgres"})).extract(DAY, Path("."), EmailHasher(KEY))


def test_seed_postgres_cli_fills_a_day_with_an_index(
    pg: ThrowawayPostgres, table: str, tmp_path: Path
) -> None:
    env = {"TRIPFLOW_POSTGRES_DSN": pg.dsn()}
    seed_args = ("source", "seed-postgres", "--date", "2025-11-15", "--table", table)
    done = tripflow(*seed_args, "--rows", "5000", "--json", cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stdout + done.stderr
    out = pg.psql_local(
        f"SELECT count(*), min(pickup_ts) >= '2025-11-15', max(pickup_ts) < '2025-11-16' "
        f"FROM {table}; SELECT indexdef FROM pg_indexes WHERE tablename = '{table.split('.')[1]}'"
    )
    assert out.splitlines()[0] == "5000|t|t"
    assert "(pickup_ts)" in out
    # Seeding the same day again replaces it.
    again = tripflow(*seed_args, "--rows", "100", cwd=tmp_path, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert pg.psql_local(f"SELECT count(*) FROM {table}").strip() == "100"


def test_a_malformed_dsn_is_a_usage_error_that_does_not_echo_it() -> None:
    dsn = f"host=127.0.0.1 password={PASSWORD} dbname='unterminated"
    with pytest.raises(UsageError) as info:
        PostgresSource(dsn, timezone="UTC", region_set=None)
    assert PASSWORD not in info.value.message
