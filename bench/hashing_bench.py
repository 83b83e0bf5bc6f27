"""The PII hash, measured: ``EmailHasher`` (the native ``polars-hash`` HMAC since issue 14) against
the standard library's keyed SHA-256 states (its path for a non-UTF-8 key, and its only path
before) and DuckDB's ``sha256`` composed into the same HMAC, in CPU seconds
(``time.process_time``: all threads), on 500k-row batches of emails drawn from a pool of riders
(2M: the realistic 8M-trip day; 8M: every trip its own rider).

    uv run python bench/hashing_bench.py --batches 8

Every way must give the same 128-bit HMAC-SHA256 values as the standard library (checked). A
benchmark, not a test: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import duckdb
import numpy as np
import polars as pl

from tasks.transforms import EMAIL_HASH_HEX_CHARS, EmailHasher

KEY = b"bench-key-" * 4
BATCH = 500_000
#: HMAC in DuckDB: sha256 of the outer pad and the inner digest (DuckDB has no hmac()).
DUCKDB_HMAC = (
    f"SELECT email, left(sha256($o || unhex(sha256($i || encode(email)))), "
    f"{EMAIL_HASH_HEX_CHARS}) AS hash FROM batch"
)


def pads(key: bytes) -> tuple[bytes, bytes]:
    block = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in block), bytes(b ^ 0x5C for b in block)


def normalized(values: pl.Series) -> pl.DataFrame:
    return values.str.strip_chars().str.to_lowercase().to_frame("email")


def duckdb_distinct(con: duckdb.DuckDBPyConnection) -> Callable[[pl.Series], pl.Series]:
    """Each batch's distinct emails hashed by DuckDB (two threads), joined back; no memo."""
    inner, outer = pads(KEY)

    def hash_batch(values: pl.Series) -> pl.Series:
        norm = normalized(values)
        batch = norm.unique().drop_nulls()  # noqa: F841 - read by DuckDB by name
        hashed = pl.from_arrow(con.execute(DUCKDB_HMAC, {"i": inner, "o": outer}).to_arrow_table())
        assert isinstance(hashed, pl.DataFrame)
        return norm.join(hashed, on="email", how="left", maintain_order="left")["hash"]

    return hash_batch


def python_distinct(values: pl.Series) -> pl.Series:
    """Each batch's distinct emails hashed by ``EmailHasher.digest`` (the standard library's keyed
    SHA-256 states, copied per value), joined back."""
    norm = normalized(values)
    new = norm["email"].unique().drop_nulls().to_list()
    digest = _HASHER.digest
    lookup = pl.DataFrame({"email": new, "hash": [digest(v) for v in new]})
    return norm.join(lookup, on="email", how="left", maintain_order="left")["hash"]


_HASHER = EmailHasher(KEY)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--pools", type=int, nargs="+", default=[2_000_000, 8_000_000])
    args = parser.parse_args()
    con = duckdb.connect(config={"threads": 2})
    for pool in args.pools:
        rng = np.random.default_rng(0)
        batches = [
            pl.Series("e", [f"rider{i}@example.com" for i in rng.integers(0, pool, BATCH)])
            for _ in range(args.batches)
        ]
        ways: dict[str, Callable[[pl.Series], pl.Series]] = {
            "Python HMAC per batch's distinct (the reference)": python_distinct,
            "EmailHasher: polars-hash HMAC, every value": EmailHasher(KEY),
            "DuckDB sha256 HMAC per batch's distinct": duckdb_distinct(con),
        }
        reference: list[pl.Series] = []
        for name, way in ways.items():
            started = time.process_time()
            out = [way(b) for b in batches]
            cpu = time.process_time() - started
            if not reference:
                reference = out
            same = all(a.equals(b, check_names=False) for a, b in zip(out, reference, strict=True))
            print(
                f"pool {pool:>9,} | {name:<48} | {cpu:6.2f} CPU-s for "
                f"{args.batches * BATCH:,} rows | same hashes: {same} | "
                f"load {os.getloadavg()[0]:.1f}"
            )


if __name__ == "__main__":
    main()
