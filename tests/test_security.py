"""Identifiers from configuration never reach SQL unchecked; secrets never reach output."""

from __future__ import annotations

import json
import subprocess
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from canary import assert_nowhere
from helpers import tripflow

from tasks.errors import UsageError
from tasks.transforms import EmailHasher
from tasks.warehouses import make_warehouse
from tasks.warehouses.base import identifier, staging_suffix


@pytest.mark.parametrize(
    "name",
    ["trips; DROP TABLE x", "a b", "1abc", 'x"y', "x'--", "", "é", "a" * 64, "t$1"],
)
def test_unsafe_identifiers_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="not a safe SQL identifier"):
        identifier(name)


def test_safe_identifiers_pass() -> None:
    assert identifier("analytics_parts") == "analytics_parts"
    assert staging_suffix(date(2025, 11, 15), "0a1b2c3d-4e5f-6789") == "20251115_0a1b2c3d4e5f"
    with pytest.raises(UsageError):
        staging_suffix(date(2025, 11, 15), "x; DROP TABLE t")


def test_unknown_warehouse_spec_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        make_warehouse("postgres://user:pw@host/db")


@pytest.mark.usefixtures("prefect_server")
def test_canary_key_and_email_reach_no_log_or_output(workdir: Path) -> None:
    key = "canary-hmac-key-6b2d9e"
    email = "canary.person@rider.example"
    csv = workdir / "t.csv"
    csv.write_text(
        "trip_id,pickup_ts,distance_km,fare_usd,region,rider_email\n"
        + "".join(f"T{i},2025-11-15 08:00:00,2,5,us-east,{email}\n" for i in range(20))
    )
    env = {"TRIPFLOW_PII_KEY": key, "PREFECT_LOGGING_LEVEL": "DEBUG"}
    for args in (["--json"], []):
        proc = tripflow(
            "run", "--source", f"file:{csv}", "--date", "2025-11-15", *args, cwd=workdir, env=env
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        for text in (proc.stdout, proc.stderr):
            assert key not in text and email not in text.lower()


# --- malformed input: the canary e-mail lands where it does not belong ------------------------

CANARY_KEY = "canary-hmac-key-4f81c0"
CANARY_HEADER = "trip_id,pickup_ts,distance_km,fare_usd,region,rider_email,status"


def _canary(case: str) -> str:
    """A case's own canary e-mail (so that one case's leak cannot fail another)."""
    return f"canary.{case}@rider.example"


def _good_rows(n: int = 40) -> list[str]:
    return [
        f"G{i},2025-11-15 08:{i % 60:02d}:00,2,5,us-east,r{i}@x.org,completed" for i in range(n)
    ]


def _run(workdir: Path, source: Path) -> subprocess.CompletedProcess[str]:
    return tripflow(
        "run",
        "--source",
        f"file:{source}",
        "--date",
        "2025-11-15",
        "--json",
        cwd=workdir,
        env={"TRIPFLOW_PII_KEY": CANARY_KEY, "PREFECT_LOGGING_LEVEL": "DEBUG"},
    )


def _parquet_day(path: Path, fares: list[Any]) -> Path:
    """A Parquet day of ``len(fares)`` valid trips whose ``fare_usd`` column is ``fares``."""
    n = len(fares)
    pl.DataFrame(
        {
            "trip_id": [f"P{i}" for i in range(n)],
            "pickup_ts": [datetime(2025, 11, 15, 8, i % 60) for i in range(n)],
            "distance_km": [2.0] * n,
            "fare_usd": fares,
            "region": ["us-east"] * n,
        }
    ).write_parquet(path)
    return path


@pytest.mark.usefixtures("prefect_server")
def test_canary_shifted_into_a_numeric_column_is_described_not_quoted(workdir: Path) -> None:
    """A CSV row missing two fields: the rider's e-mail lands in ``fare_usd``, a schema error."""
    email = _canary("csv-fare")
    csv = workdir / "t.csv"
    csv.write_text(
        "\n".join([CANARY_HEADER, *_good_rows(), f"M1,2025-11-15 08:00:00,2,{email}"]) + "\n"
    )
    proc = _run(workdir, csv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert_nowhere([email, CANARY_KEY], proc, workdir)
    error = json.loads(proc.stdout)["error"]
    # Still useful: the file, the column, the row, and what is wrong with the value.
    assert (error["kind"], error["file"], error["column"], error["row"]) == (
        "schema",
        str(csv),
        "fare_usd",
        41,
    )
    fingerprint = EmailHasher(CANARY_KEY.encode())(pl.Series([email]))[0][:8]
    assert error["value"] == (
        f"text of {len(email)} characters containing '@', shape 'a.a-a@a.a', "
        f"fingerprint {fingerprint}"
    )
    assert error["value"] in error["message"]


@pytest.mark.usefixtures("prefect_server")
def test_canary_in_a_parquet_numeric_column_is_described_not_quoted(workdir: Path) -> None:
    email = _canary("parquet-fare")
    path = _parquet_day(workdir / "t.parquet", ["5"] * 6 + [email] + ["5"] * 33)
    proc = _run(workdir, path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert_nowhere([email, CANARY_KEY], proc, workdir)
    error = json.loads(proc.stdout)["error"]
    assert (error["column"], error["row"]) == ("fare_usd", 7)
    assert error["value"].startswith(f"text of {len(email)} characters containing '@'")


@pytest.mark.usefixtures("prefect_server")
def test_canary_shifted_into_text_columns_is_hashed_everywhere(workdir: Path) -> None:
    """Misaligned rows put the e-mail into ``region`` (a valid trip: any non-empty region is one
    by default), into ``status`` (an extra comma) and into the ``region`` of a quarantined row:
    each is stored as its keyed hash, the same one ``rider_email`` would get, and counted."""
    email = _canary("csv-text")
    csv = workdir / "t.csv"
    csv.write_text(
        "\n".join(
            [
                CANARY_HEADER,
                *_good_rows(),
                f"M1,2025-11-15 08:00:00,2,5,{email}",
                f"M2,2025-11-15 08:00:00,2,5,us-east,,{email.upper()}",
                f"M3,2025-11-15 08:00:00,2,-5,  {email}",
            ]
        )
        + "\n"
    )
    proc = _run(workdir, csv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_nowhere([email, CANARY_KEY], proc, workdir)
    report = json.loads(proc.stdout)
    assert report["rows"] == {"extracted": 43, "quarantined": 1, "loaded": 42}
    assert report["quality"]["email_shaped_values"] == {
        "trip_id": 0,
        "region": 2,
        "rider_id": 0,
        "driver_id": 0,
        "payment_type": 0,
        "status": 1,
    }
    hashed = EmailHasher(CANARY_KEY.encode())(pl.Series([email]))[0]
    (example,) = report["quality"]["quarantine_examples"]
    assert (example["trip_id"], example["region"]) == ("M3", hashed)
    with duckdb.connect(str(workdir / ".tripflow" / "warehouse.duckdb"), read_only=True) as con:
        stored = con.execute(
            "SELECT trip_id, region, status FROM analytics.trips WHERE trip_id LIKE 'M%' "
            "ORDER BY trip_id"
        ).fetchall()
    assert stored == [("M1", hashed, None), ("M2", "us-east", hashed)]


@pytest.mark.usefixtures("prefect_server")
def test_canary_after_an_unclosed_quote_is_withheld_from_the_readers_message(workdir: Path) -> None:
    """An unclosed quote: Polars' CSV reader refuses the file and quotes what follows the quote
    (the canary and the next rows) in its message; the error keeps the message, not the text."""
    email = _canary("csv-quote")
    csv = workdir / "t.csv"
    csv.write_text(
        "\n".join([CANARY_HEADER, *_good_rows(), f'M1,2025-11-15 08:00:00,2,"{email},us-east'])
        + "\n"
    )
    proc = _run(workdir, csv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert_nowhere([email, CANARY_KEY], proc, workdir)
    error = json.loads(proc.stdout)["error"]
    assert (error["kind"], error["file"]) == ("schema", str(csv))
    assert "could not parse `<text of" in error["message"] and "'fare_usd'" in error["message"]


@pytest.mark.usefixtures("prefect_server")
def test_canary_in_a_parquet_list_column_is_a_schema_error_naming_the_column(workdir: Path) -> None:
    """A Parquet ``fare_usd`` of lists (the e-mail inside): a schema error naming the column —
    before the fix Polars' cast error ended the run as an internal error with a traceback."""
    email = _canary("parquet-list")
    path = _parquet_day(workdir / "t.parquet", [["5"]] * 6 + [[email]] + [["5"]] * 33)
    proc = _run(workdir, path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert_nowhere([email, CANARY_KEY], proc, workdir)
    error = json.loads(proc.stdout)["error"]
    assert (error["kind"], error["column"]) == ("schema", "fare_usd")
    assert "List values" in error["message"]
