"""Rows done and rows/s per stage: on a terminal only, never with ``--json`` or a piped stderr.

The terminal is a real pseudo-terminal (``pty``) as stderr of a real ``tripflow run``.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("prefect_server")

TRIPFLOW = str(Path(sys.executable).parent / "tripflow")
#: Three parts of 500,000 synthetic rows: the extract reports rows before it ends.
ROWS = "1200000"
ARGS = ("run", "--rows", ROWS, "--date", "2025-11-15")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ENV = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}


def _on_a_terminal(*args: str, cwd: Path) -> tuple[int, str, str]:
    """Run tripflow with stderr on a pseudo-terminal; (exit code, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [TRIPFLOW, *args],
        cwd=cwd,
        env=ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    seen = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.stdout is not None
    stdout = proc.stdout.read().decode()
    proc.stdout.close()
    text = ANSI.sub("", seen.decode(errors="replace"))  # colours and cursor moves
    return proc.wait(timeout=300), stdout, text


def test_a_terminal_shows_rows_and_rows_per_second(workdir: Path) -> None:
    code, stdout, terminal = _on_a_terminal(*ARGS, cwd=workdir)
    assert code == 0, terminal
    assert stdout == ""
    # While extracting: the first part's rows, before the stage is done.
    assert "500,000 rows" in terminal
    for stage in ("extract", "transform", "load"):
        assert re.search(rf"✓ {stage} .*, [\d,]+ rows, [\d.]+[kM]? rows/s", terminal), stage
    assert re.search(r"✓ extract .*, 1,200,000 rows, ", terminal)


def test_never_with_json_on_a_terminal(workdir: Path) -> None:
    code, stdout, terminal = _on_a_terminal(*ARGS, "--json", cwd=workdir)
    assert code == 0, terminal
    assert json.loads(stdout)["rows"]["extracted"] == int(ROWS)
    assert "✓ extract" in terminal
    assert "rows/s" not in terminal and "500,000 rows" not in terminal


def test_never_when_stderr_is_not_a_terminal(workdir: Path) -> None:
    done = subprocess.run(
        [TRIPFLOW, *ARGS], cwd=workdir, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "✓ extract" in done.stderr
    assert "rows/s" not in done.stderr and "500,000 rows" not in done.stderr
