"""Identifiers from configuration never reach SQL unchecked; secrets never reach output."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from helpers import tripflow

from tasks.errors import UsageError
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
