"""Kill points for the fault tests: ``TRIPFLOW_KILL_AT=<point>`` SIGKILLs the process there.

A real SIGKILL at a chosen place inside a stage (mid-write, or inside the publish transaction
right before its COMMIT) is how ``tests/test_faults.py`` proves that a killed run leaves the
warehouse with the previous version of the day or the new one, never a mix, and that the re-run
publishes it once.
With ``TRIPFLOW_KILL_ONCE=<file>`` as well, only the first process to reach the point dies (it
creates the file first): a retried or re-dispatched stage then gets through.
Unset (always, outside those tests), a kill point does nothing.

A barrier point holds runs instead: with ``TRIPFLOW_PAUSE_AT=<point>`` and
``TRIPFLOW_BARRIER=<folder>:<parties>``, each process reaching the point waits there (at most
``BARRIER_TIMEOUT_SECONDS``) until ``parties`` processes have reached it. ``tests/test_day_race.py``
holds two runs of one day before ``publish`` so that they overlap for certain, whatever the
machine's load, and their publishes race; ``tests/cluster/test_fault_daily_killed.py`` holds a
transform mid-stage (``transform``: clean and quarantine written, region totals not yet) and
releases it by adding the second party itself; ``tests/cluster/test_fault_deadlines.py`` holds an
extract (``extract``: parts written, manifest not yet) until its Job's deadline ends it, and the
re-dispatched extract, the second party, goes through.

``SUBMITTED`` (``publish-submitted``) is the other side of a client/server warehouse's publish:
the client dies right after it handed the publish batch or job to the server (Redshift, BigQuery)
or sent its COMMIT (Snowflake), so the server commits while no client waits for it. It is not in
``POINTS`` (a kill there leaves the new day published, not the old one); ``tests/warehouses``
prove that a re-run finds that publish in the ledger and neither publishes twice nor mixes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Final

KILL_ENV: Final = "TRIPFLOW_KILL_AT"
ONCE_ENV: Final = "TRIPFLOW_KILL_ONCE"
POINTS: Final = ("extract", "transform", "load", "validate", "publish")
SUBMITTED: Final = "publish-submitted"
PAUSE_ENV: Final = "TRIPFLOW_PAUSE_AT"
BARRIER_ENV: Final = "TRIPFLOW_BARRIER"
BARRIER_TIMEOUT_SECONDS: Final = 300.0


def kill_point(point: str) -> None:
    """Die here, at once and without cleanup, when ``TRIPFLOW_KILL_AT`` names this point."""
    if os.environ.get(KILL_ENV) != point:
        return
    once = os.environ.get(ONCE_ENV)
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


def barrier_point(point: str) -> None:
    """Wait here for the other runs when ``TRIPFLOW_PAUSE_AT`` names this point (see above)."""
    if os.environ.get(PAUSE_ENV) != point:
        return
    folder, _, parties = os.environ.get(BARRIER_ENV, "").rpartition(":")
    if not folder or not parties.isdigit():
        raise ValueError(f"{BARRIER_ENV} must be <folder>:<parties>")
    Path(folder).mkdir(parents=True, exist_ok=True)
    Path(folder, str(os.getpid())).touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_SECONDS
    while len(os.listdir(folder)) < int(parties) and time.monotonic() < deadline:
        time.sleep(0.05)
