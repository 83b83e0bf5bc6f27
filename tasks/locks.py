"""One run of a day at a time: runs of the same day share ``staging/*/date=D/``, so they take turns.

On a local staging folder the lock is a file lock (``<staging>/.locks/date=D.lock``), held by the
flow run for its whole life and released by the kernel if the process dies. (Object-store staging
is serialized by the deployments' concurrency limit instead.) Runs of different days never wait.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Final

from tasks.errors import InfrastructureError

WAIT_SECONDS: Final = 6 * 3600.0


@contextmanager
def day_lock(
    staging_root: str, run_date: date, wait_seconds: float = WAIT_SECONDS
) -> Iterator[bool]:
    """Hold the day's lock; yields whether the run had to wait for another run of the day."""
    folder = Path(staging_root) / ".locks"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / f"date={run_date.isoformat()}.lock", "a+")  # noqa: SIM115
    except OSError as exc:
        raise InfrastructureError(
            f"staging {staging_root}: cannot take the day's lock: {exc}"
        ) from exc
    waited = False
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = True
                if time.monotonic() > deadline:
                    raise InfrastructureError(
                        f"another run of {run_date} still holds its lock after {wait_seconds:.0f}s"
                    ) from None
                time.sleep(0.1)
        yield waited
    finally:
        handle.close()
