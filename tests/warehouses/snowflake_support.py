"""Test support for the Snowflake warehouse: fakesnow (a STAND-IN for Snowflake) in a subprocess.

``fakesnow_site(folder)`` writes a ``sitecustomize.py`` and returns the environment that makes a
``tripflow`` subprocess load it at start-up. That file, test-only and clearly a stand-in, patches
``snowflake.connector.connect`` with fakesnow (databases persisted as DuckDB files under
``folder/fakesnow-db`` so the test can read the warehouse afterwards), and records the SHA-256 of
each private key handed to ``connect`` (a digest only, never the key) so the test can prove that
key-pair auth from the mounted file was used. Nothing here is imported by tripflow itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fakesnow
import snowflake.connector

#: Statements fakesnow does not implement: answered as no-ops (the tests assert their text).
NOT_IN_FAKESNOW = [
    r"^ALTER SESSION SET STATEMENT_TIMEOUT_IN_SECONDS",
    r"^ALTER WAREHOUSE ",
]

DB_ENV = "TRIPFLOW_TEST_FAKESNOW_DB"
KEYS_ENV = "TRIPFLOW_TEST_FAKESNOW_KEY_DIGESTS"

SITECUSTOMIZE = f'''"""TEST STAND-IN: fakesnow is snowflake.connector.connect here."""
import hashlib
import os

if os.environ.get("{DB_ENV}"):
    import fakesnow
    import snowflake.connector

    # Kept referenced for the life of the process (a dropped context manager would unpatch).
    _PATCH = fakesnow.patch(nop_regexes={NOT_IN_FAKESNOW!r}, db_path=os.environ["{DB_ENV}"])
    _PATCH.__enter__()
    _fake = snowflake.connector.connect.side_effect

    def _recording_connect(**kwargs):
        key = kwargs.get("private_key")
        with open(os.environ["{KEYS_ENV}"], "a", encoding="utf-8") as record:
            record.write((hashlib.sha256(key).hexdigest() if key else "no-key") + "\\n")
        return _fake(**kwargs)

    snowflake.connector.connect.side_effect = _recording_connect
'''


def fakesnow_site(folder: Path) -> dict[str, str]:
    """The environment of a subprocess whose Snowflake connections go to a persisted fakesnow."""
    site = folder / "fakesnow-site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    db = folder / "fakesnow-db"
    db.mkdir(exist_ok=True)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, DB_ENV: str(db), KEYS_ENV: str(folder / "key-digests.txt")}


def key_digests(folder: Path) -> list[str]:
    """The SHA-256 of the private key of every connection the subprocess made."""
    record = folder / "key-digests.txt"
    return record.read_text(encoding="utf-8").split() if record.exists() else []


@contextmanager
def persisted_fakesnow(folder: Path, database: str, schema: str) -> Iterator[Any]:
    """A cursor on the fakesnow databases a subprocess persisted under ``folder``."""
    with fakesnow.patch(db_path=str(folder / "fakesnow-db")):
        con = snowflake.connector.connect(database=database, schema=schema, account="stand-in")
        try:
            yield con.cursor()
        finally:
            con.close()
