"""Helpers the tests share (importable as ``helpers``: ``tests/`` is on pytest's pythonpath)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TLC_CSV = FIXTURES / "yellow_tripdata_sample_2019-01.csv"


def tripflow(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the ``tripflow`` console script as a user would (a real subprocess)."""
    full_env = {**os.environ, **(env or {})}
    exe = Path(sys.executable).parent / "tripflow"
    return subprocess.run(
        [str(exe), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
