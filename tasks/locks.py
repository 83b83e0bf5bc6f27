"""One run of a day at a time: runs of the same day share ``staging/*/date=D/``, so they take turns.

- Local staging folder: a file lock (``<staging>/.locks/date=D.lock``), held by the flow run for
  its whole life and released by the kernel if the process dies.
- Object-store staging (runs in different pods): a Prefect global concurrency limit of 1 named
  ``tripflow-day-<bucket path hash>-<D>``, created on first use, held with a lease that Prefect
  renews while the run lives and that expires (60 s) if its pod dies: a re-run after a killed
  run waits about a minute.

Runs of different days never wait.
"""

from __future__ import annotations

import fcntl
import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Final

from tasks.errors import InfrastructureError
from tasks.storage import is_remote

WAIT_SECONDS: Final = 6 * 3600.0
#: Seconds a remote day lock's lease lasts without renewal: a killed pod's lock is freed after
#: this (plus the server's lease sweep). Prefect's minimum; the holder renews it while it lives.
LEASE_SECONDS: Final = 60.0


@contextmanager
def day_lock(
    staging_root: str, run_date: date, wait_seconds: float = WAIT_SECONDS
) -> Iterator[bool]:
    """Hold the day's lock; yields whether the run had to wait for another run of the day."""
    if is_remote(staging_root):
        with _remote_day_lock(staging_root, run_date, wait_seconds) as waited:
            yield waited
        return
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


def remote_lock_name(staging_root: str, run_date: date) -> str:
    """The day's concurrency limit: one per staging root and day (no URL in the name)."""
    root = hashlib.sha256(staging_root.rstrip("/").encode()).hexdigest()[:12]
    return f"tripflow-day-{root}-{run_date.isoformat()}"


@contextmanager
def _remote_day_lock(staging_root: str, run_date: date, wait_seconds: float) -> Iterator[bool]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectNotFound

    name = remote_lock_name(staging_root, run_date)
    started = time.monotonic()
    try:
        with get_client(sync_client=True) as client:
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                try:
                    client.create_global_concurrency_limit(
                        GlobalConcurrencyLimitCreate(name=name, limit=1)
                    )
                except Exception:  # created by a racing run in between: it must exist now
                    client.read_global_concurrency_limit_by_name(name)
        with concurrency(
            name,
            occupy=1,
            timeout_seconds=wait_seconds,
            lease_duration=LEASE_SECONDS,
            strict=True,
            # A missed renewal must not abort a run: publishing is atomic either way.
            raise_on_lease_renewal_failure=False,
        ):
            yield time.monotonic() - started > 1.0
    except TimeoutError as exc:
        raise InfrastructureError(
            f"another run of {run_date} still holds its lock ({name}) after {wait_seconds:.0f}s"
        ) from exc
