"""The day lock: a file lock on local staging, a Prefect global concurrency limit on object-store
staging (on the session's real Prefect server)."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from tasks.errors import InfrastructureError
from tasks.locks import day_lock, remote_lock_name

DAY = date(2025, 11, 15)


@pytest.mark.parametrize("root", ["local", "s3://tripflow-locks-test/trips"])
@pytest.mark.usefixtures("prefect_server")
def test_one_run_of_a_day_at_a_time(root: str, tmp_path: Path) -> None:
    staging = str(tmp_path / "staging") if root == "local" else root
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with day_lock(staging, DAY):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(60)
        # Another run of the same day waits, then gives up with a clear error.
        with (
            pytest.raises(InfrastructureError, match="another run of 2025-11-15 still holds"),
            day_lock(staging, DAY, wait_seconds=2),
        ):
            pass
        # Another day does not wait.
        with day_lock(staging, date(2025, 11, 16), wait_seconds=2) as waited:
            assert waited is False
    finally:
        release.set()
        thread.join(30)
    # Released: the day can be taken again at once.
    with day_lock(staging, DAY, wait_seconds=5):
        pass


@pytest.mark.usefixtures("prefect_server")
def test_the_remote_lock_is_a_global_concurrency_limit_of_one() -> None:
    root = "s3://tripflow-locks-test/limit"
    with day_lock(root, DAY, wait_seconds=5):
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(remote_lock_name(root, DAY))
        assert limit.limit == 1 and limit.active_slots == 1
    assert "s3" not in remote_lock_name(root, DAY)  # no bucket or URL in the limit's name
