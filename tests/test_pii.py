"""An input cell never leaves in clear: errors describe a bad value instead of quoting it, and an
e-mail-shaped value in any text column is hashed like ``rider_email`` before raw is written. Pure
functions on tiny frames; the end-to-end canaries are in ``test_security.py`` and
``kafka/test_kafka_canary.py``."""

from __future__ import annotations

import hashlib
import hmac
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

from tasks.contract import CONTRACT_COLUMNS, RAW_SCHEMA
from tasks.errors import (
    InfrastructureError,
    InternalError,
    SchemaError,
    describe_value,
    error_from_dict,
    input_withheld,
    library_message,
    value_shape,
)
from tasks.formats import with_missing
from tasks.transforms import (
    EMAIL_SHAPED_COLUMNS,
    CountingHasher,
    EmailHasher,
    email_shaped,
    hash_email_shaped,
    to_raw,
    value_fingerprint,
)

DAY = date(2025, 11, 15)
KEY = b"pii-test-key"


def hmac_hex(value: str) -> str:
    return hmac.new(KEY, value.strip().lower().encode(), hashlib.sha256).hexdigest()[:32]


@pytest.mark.parametrize(
    ("value", "shape"),
    [
        ("alice.secret@rider.example", "a.a@a.a"),
        ("2,5", "9,9"),
        ("12 USD", "9_a"),
        ("-inf", "-a"),
        ("2025-13-45 08:00:00", "9-9-9_9:9:9"),
        ("", ""),
        ("x" * 200, "a"),
        ("a1" * 30, ("a9" * 12)[:23] + "…"),
    ],
)
def test_value_shape_collapses_runs_of_letters_digits_and_spaces(value: str, shape: str) -> None:
    assert value_shape(value) == shape


@pytest.mark.parametrize(
    "value", ["alice.secret@rider.example", "hunter2", "4111 1111 1111 1111", "Zoë", "x1"]
)
def test_a_description_never_holds_the_value(value: str) -> None:
    text = describe_value(value, value_fingerprint(EmailHasher(KEY))).text
    assert value not in text and value.lower() not in text.lower()
    assert text.startswith(f"text of {len(value)} characters")
    assert ("containing '@'" in text) == ("@" in value)
    # The fingerprint is the start of the keyed hash that rider_email_hash uses.
    assert text.endswith(f"fingerprint {hmac_hex(value)[:8]}")


def test_a_schema_error_takes_only_a_description() -> None:
    with pytest.raises(TypeError, match="describe_value"):
        SchemaError("bad", column="fare_usd", row=2, value="alice@x.org")  # type: ignore[arg-type]
    error = SchemaError(
        "a value cannot be read as float",
        file="t.csv",
        column="fare_usd",
        row=2,
        value=describe_value("alice@x.org"),
    )
    assert error.message == (
        "a value cannot be read as float (file t.csv, column 'fare_usd', row 2, "
        "value: text of 11 characters containing '@', shape 'a@a.a')"
    )
    assert error.as_dict()["value"] == "text of 11 characters containing '@', shape 'a@a.a'"
    again = error_from_dict(error.as_dict())
    assert isinstance(again, SchemaError)
    assert (again.message, again.value, again.row) == (error.message, error.value, 2)


def test_email_shaped_values_are_told_apart() -> None:
    values = [
        "alice@rider.example",
        "  Bob.Smith@Mail.Co.UK ",
        "note: write to carol@x.org",
        "dan@пример.рф",
        "us-east",
        "trip@v2.1",
        "a@b",
        "a@b.c",
        "@x.org",
        None,
    ]
    out = pl.DataFrame({"v": values}).select(email_shaped("v"))["v"].to_list()
    assert out == [True, True, True, True, False, False, False, False, False, None]


def test_email_shaped_values_in_every_text_column_get_rider_email_hash() -> None:
    email = "Alice.Secret@Rider.Example"
    rows = {name: ["plain", f" {email} ", None] for name in EMAIL_SHAPED_COLUMNS}
    hasher = EmailHasher(KEY)
    out = pl.DataFrame(rows).select(hash_email_shaped(n, hasher) for n in EMAIL_SHAPED_COLUMNS)
    for name in EMAIL_SHAPED_COLUMNS:
        assert out[name].to_list() == ["plain", hmac_hex(email), None], name
    assert set(EMAIL_SHAPED_COLUMNS) == {
        "trip_id",
        "region",
        "rider_id",
        "driver_id",
        "payment_type",
        "status",
    }


def test_only_email_shaped_values_reach_the_hasher() -> None:
    seen: list[list[str | None]] = []

    def spy(values: pl.Series) -> pl.Series:
        seen.append(values.to_list())
        return EmailHasher(KEY)(values)

    plain = pl.DataFrame({"region": ["us-east", "us-west", None]})
    assert plain.select(hash_email_shaped("region", spy))["region"].to_list() == [
        "us-east",
        "us-west",
        None,
    ]
    assert seen == [], "a batch without an e-mail-shaped value skips the hasher"
    mixed = pl.DataFrame({"region": ["us-east", "x@y.org"]})
    mixed.select(hash_email_shaped("region", spy))
    assert seen == [[None, "x@y.org"]]


def test_to_raw_hashes_email_shaped_values_and_counts_them() -> None:
    contract = with_missing(
        pl.LazyFrame(
            {
                "trip_id": ["A", "b@x.org", "C", "D"],
                "trip_date": [DAY, DAY, DAY, date(2025, 11, 14)],
                "region": ["us-east", "us-east", "c@x.org", "d@x.org"],
                "status": ["e@x.org", None, "completed", "completed"],
                "rider_email": ["a@x.org", None, None, None],
                "_source_row": [1, 2, 3, 4],
                "_pickup_given": [True, True, True, True],
            }
        ),
        CONTRACT_COLUMNS,
    )
    hasher = CountingHasher(EmailHasher(KEY))
    out = to_raw(contract, DAY, "f.csv", hasher).collect()
    assert list(out.columns) == list(RAW_SCHEMA)
    assert out["trip_id"].to_list() == ["A", hmac_hex("b@x.org"), "C"]
    assert out["region"].to_list() == ["us-east", "us-east", hmac_hex("c@x.org")]
    assert out["status"].to_list() == [hmac_hex("e@x.org"), None, "completed"]
    assert out["rider_email_hash"].to_list() == [hmac_hex("a@x.org"), None, None]
    # Only the run's day is counted (D, of another day, is not written).
    assert hasher.email_shaped == {
        "trip_id": 1,
        "region": 1,
        "rider_id": 0,
        "driver_id": 0,
        "payment_type": 0,
        "status": 1,
    }


def test_to_raw_over_a_scan_hashes_batch_by_batch(tmp_path: Path) -> None:
    """A whole-file source sinks ``to_raw`` of a scan: the hashes are elementwise, so Polars
    streams them a batch at a time instead of gathering each column of the file first (a 4M-row
    scan peaked at 1.6 GB that way; 0.7 GB streamed), with the same values and counts."""
    rows = 300_000
    contract = with_missing(
        pl.LazyFrame(
            {
                "trip_id": [f"t{i}" for i in range(rows)],
                "trip_date": [DAY] * rows,
                "region": ["x@y.org" if i % 1000 == 0 else "us-east" for i in range(rows)],
                "rider_email": [f"R{i % 977}@x.org" for i in range(rows)],
                "_source_row": list(range(rows)),
                "_pickup_given": [True] * rows,
            }
        ),
        CONTRACT_COLUMNS,
    ).collect()
    source = tmp_path / "contract.parquet"
    contract.write_parquet(source, row_group_size=20_000)
    sizes: list[int] = []
    hasher = CountingHasher(EmailHasher(KEY))

    def spy(values: pl.Series) -> pl.Series:
        sizes.append(values.len())
        return hasher(values)

    to_raw(pl.scan_parquet(source), DAY, "f.parquet", spy).sink_parquet(tmp_path / "raw.parquet")
    assert max(sizes) < rows, "a column of the whole file reached the hasher at once"
    out = pl.read_parquet(tmp_path / "raw.parquet")
    expected = to_raw(contract.lazy(), DAY, "f.parquet", EmailHasher(KEY)).collect()
    assert out.sort("_source_row").equals(expected.sort("_source_row"))
    assert hasher.email_shaped["region"] == rows // 1000


# --- a library's own message: what it quotes is withheld ----------------------------------------

SECRET = "alice.secret@rider.example"


def _raised(fn: Any) -> BaseException:
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("nothing raised")


def test_library_messages_that_quote_a_cell_are_withheld() -> None:
    # Real messages: Polars' strict cast, DuckDB's cast, Polars' CSV reader (an open quote).
    polars_cast = _raised(lambda: pl.Series("fare_usd", [SECRET]).cast(pl.Float64, strict=True))
    duckdb_cast = _raised(lambda: duckdb.sql(f"SELECT CAST('{SECRET}' AS INTEGER)").fetchall())
    csv = f'trip_id,fare_usd\nt1,"{SECRET},x\nt2,5\n'.encode()
    polars_csv = _raised(lambda: pl.read_csv(csv, infer_schema=False))
    for exc in (polars_cast, duckdb_cast, polars_csv):
        assert SECRET in str(exc)  # the library quotes it ...
        text = library_message(exc, keep={"fare_usd"})
        assert SECRET not in text and "alice" not in text  # ... the error does not
        assert text.startswith(type(exc).__name__ + ": ")
        assert "characters withheld>" in text
    # What is nobody's data stays: type names and the columns the caller knows.
    assert "`str`" in library_message(polars_csv, keep={"fare_usd"})
    assert "'fare_usd'" in library_message(polars_csv, keep={"fare_usd"})
    assert "'fare_usd'" not in library_message(polars_csv)  # not known: withheld too


def test_unquoted_email_shaped_words_are_withheld_and_long_messages_cut() -> None:
    text = library_message(ValueError(f"row 3: got {SECRET} where a number was expected"))
    assert (
        text == "ValueError: row 3: got <e-mail-shaped text withheld> where a number was expected"
    )
    assert len(library_message(ValueError("x" * 5000))) <= len("ValueError: ") + 400


def test_a_stage_raises_what_it_did_not_expect_as_an_internal_error_without_the_cell() -> None:
    with pytest.raises(InternalError) as raised, input_withheld("transform"):
        pl.Series([SECRET]).cast(pl.Int64, strict=True)
    error = raised.value
    assert SECRET not in str(error) and error.message.startswith("transform: InvalidOperationError")
    assert error.__cause__ is None and error.__suppress_context__  # nothing chained for logs
    assert error.__traceback__ is not None  # the frames are kept
    assert (error.kind, error.exit_code) == ("internal", 3)
    again = error_from_dict(error.as_dict())  # another pod's stage failure, rebuilt
    assert isinstance(again, InternalError) and not isinstance(again, InfrastructureError)
    # tripflow's own errors (already safe) and timeouts pass through untouched.
    with pytest.raises(SchemaError), input_withheld("extract"):
        raise SchemaError("bad", column="fare_usd")
    with pytest.raises(TimeoutError), input_withheld("extract"):
        raise TimeoutError("task timed out")
