"""The PII key generated on first use: runs racing to create it (a backfill's days run in threads)
all get the same, whole key, and no stray file is left."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from tasks.config import Settings, pii_key


def test_racing_first_uses_share_one_whole_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TRIPFLOW_PII_KEY", raising=False)
    for trial in range(20):
        folder = tmp_path / str(trial)
        settings = replace(Settings(), pii_key_file=str(folder / "pii.key"))
        keys: list[bytes] = []
        errors: list[BaseException] = []

        def first_use(
            s: Settings = settings,
            keys: list[bytes] = keys,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                keys.append(pii_key(s))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=first_use) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(set(keys)) == 1 and len(keys[0]) == 64
        assert (folder / "pii.key").read_bytes() == keys[0]
        assert [p.name for p in folder.iterdir()] == ["pii.key"]
        assert (folder / "pii.key").stat().st_mode & 0o777 == 0o600
