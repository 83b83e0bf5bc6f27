"""Helpers of the live fault tests (tests/cluster/test_fault_*.py), beside the cluster fixtures.

- ``job_variables``: a test-only change of one deployment's job variables for the duration of a
  test (e.g. a lower memory limit), restored after. Each test that uses it states the change.
- ``RefusingProxy``: a TCP proxy in front of the S3 stand-in that, while told to, resets every
  connection at once (S3 refusing for a few seconds), and counts those it refused.
- ``processes_of_flow_run``: the local processes the fake kubelet (a STAND-IN) runs for a flow
  run's pod, found by the ``PREFECT__FLOW_RUN_ID`` the worker puts in the pod's env, so a test can
  stall one (SIGSTOP: a stuck stage) the way a hung read would.
- ``wait_for``: poll a condition with a generous timeout (never a lucky sleep).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
#: The states a flow run ends in.
FINAL_STATES = ("Completed", "Failed", "Crashed", "Cancelled")


def published_runs(warehouse: Path, day: str) -> list[str]:
    """The run ids of the day's ``published`` ledger rows (read-only; retried while a pod writes:
    DuckDB allows one writer per file)."""
    import duckdb

    for _ in range(120):
        try:
            with duckdb.connect(str(warehouse), read_only=True) as con:
                rows = con.execute(
                    "SELECT run_id FROM analytics.runs WHERE run_date = ? AND status = 'published'",
                    [day],
                ).fetchall()
                return [r[0] for r in rows]
        except duckdb.IOException:
            time.sleep(1)
    raise AssertionError("the warehouse file stayed locked for 120 s")


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 1.0) -> T:
    """``check()``'s first truthy value, polled until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(every)


def at_pause_point(barrier: Path) -> bool:
    """Whether a stage held by ``TRIPFLOW_PAUSE_AT`` has reached its pause point: its party's
    entry is in the ``TRIPFLOW_BARRIER`` folder (``tasks.faults.barrier_point``)."""
    return barrier.is_dir() and any(barrier.iterdir())


async def _job_variables(name: str, changes: dict[str, Any] | None) -> dict[str, Any]:
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    async with get_client() as client:
        found = await client.read_deployment_by_name(name)
        before = dict(found.job_variables or {})
        if changes is not None:
            await client.update_deployment(
                found.id, DeploymentUpdate(job_variables={**before, **changes})
            )
        return before


@contextlib.contextmanager
def job_variables(deployment: str, **changes: Any) -> Iterator[None]:
    """``deployment``'s job variables with ``changes`` (a test-only override), restored after."""
    before = asyncio.run(_job_variables(deployment, changes))
    try:
        yield
    finally:
        asyncio.run(_job_variables(deployment, before))


class RefusingProxy:
    """127.0.0.1:port -> upstream; while refusing, every new connection is reset (RST) at once."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port.rstrip("/")))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.refuse_until = 0.0
        self.window: float | None = None
        self.refused = 0
        self.first_refused: float | None = None
        self.forwarded = 0
        self.stop = threading.Event()
        self.open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def refuse(self, seconds: float) -> None:
        """Reset every connection for ``seconds``, and the ones open now."""
        self.refuse_until = time.monotonic() + seconds
        for conn in list(self.open):
            _reset(conn)

    def refuse_from_first(self, seconds: float) -> None:
        """Refuse from now on, until ``seconds`` after the first connection refused."""
        self.window = seconds
        self.refuse_until = float("inf")

    @property
    def refusing(self) -> bool:
        return time.monotonic() < self.refuse_until

    def close(self) -> None:
        self.stop.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                self.refused += 1
                if self.first_refused is None:
                    self.first_refused = time.time()
                    if self.window is not None:
                        self.refuse_until = time.monotonic() + self.window
                _reset(conn)
                continue
            self.forwarded += 1
            threading.Thread(target=self._forward, args=(conn,), daemon=True).start()

    def _forward(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            _reset(conn)
            return
        self.open.update((conn, upstream))

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    self.open.discard(s)

        threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()
        pipe(conn, upstream)


def _reset(conn: socket.socket) -> None:
    """Close with RST (linger 0): the peer sees "connection reset", as from a refusing server."""
    with contextlib.suppress(OSError):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


def processes_of_flow_run(flow_run_id: Any) -> list[int]:
    """Pids of this user's processes whose env has ``PREFECT__FLOW_RUN_ID=<flow_run_id>``."""
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def signal_flow_run(flow_run_id: Any, sig: signal.Signals) -> int:
    """Send ``sig`` to the process group(s) of a flow run's pod; how many groups got it."""
    groups = set()
    for pid in processes_of_flow_run(flow_run_id):
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, sig)
    return len(groups)


async def _states(flow_run_id: Any) -> list[Any]:
    from prefect import get_client

    async with get_client() as client:
        return list(await client.read_flow_run_states(flow_run_id))


def _sorted_states(flow_run_id: Any) -> list[Any]:
    return sorted(asyncio.run(_states(flow_run_id)), key=lambda s: s.timestamp)


def state_names(flow_run_id: Any) -> list[str]:
    """The names of every state a flow run went through, in order."""
    return [s.name for s in _sorted_states(flow_run_id)]


def state_timeline(flow_run_id: Any, since: float | None = None) -> str:
    """A flow run's states with their times in seconds after ``since`` (by default its first
    state), for a failure message."""
    states = _sorted_states(flow_run_id)
    if not states:
        return "no states"
    start = states[0].timestamp.timestamp() if since is None else since
    return ", ".join(f"{s.name} at {s.timestamp.timestamp() - start:+.0f} s" for s in states)


async def _task_states(flow_run_id: Any) -> list[tuple[str, str]]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    out = []
    async with get_client() as client:
        tasks = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        for task in tasks:
            for state in await client.read_task_run_states(task.id):
                out.append((task.name, state.name))
    return out


def task_state_names(flow_run_id: Any) -> list[tuple[str, str]]:
    """(task run name, state name) of every state of a flow run's task runs."""
    return asyncio.run(_task_states(flow_run_id))


async def stage_deployment_ids() -> dict[Any, str]:
    """Each stage deployment's id, mapped to its stage."""
    from prefect import get_client

    from flows.stages import STAGE_DEPLOYMENTS

    async with get_client() as client:
        return {
            (await client.read_deployment_by_name(name)).id: stage
            for stage, name in STAGE_DEPLOYMENTS.items()
        }


def stages_of(children: list[Any]) -> list[str]:
    """Which stage each child run of a day is (by the stage deployment it is a run of)."""
    ids = asyncio.run(stage_deployment_ids())
    return [ids.get(c.deployment_id, "?") for c in children]


@pytest.fixture(name="shared_warehouse")
def shared_warehouse_fixture(deployed: Any) -> Iterator[Path]:
    """The ``tripflow`` warehouse block on a DuckDB file OUTSIDE /tmp, restored after.

    Test-only override (the warehouse stand-in's place): the session's DuckDB file lies in
    pytest's folder under /tmp, which tasks.pod.require_shared refuses for per-stage pods (inside
    /tmp, an emptyDir of each pod's own). A folder under /var/tmp stands in for a volume every pod
    mounts: every fake-kubelet pod is a process on this host.
    """
    import shutil
    import tempfile

    from tasks.warehouses.blocks import TripWarehouse

    folder = Path(tempfile.mkdtemp(prefix="tripflow-shared-warehouse-", dir="/var/tmp"))
    path = folder / "warehouse.duckdb"
    TripWarehouse(target="duckdb", path=str(path)).save("tripflow", overwrite=True)
    try:
        yield path
    finally:
        TripWarehouse(target="duckdb", path=str(deployed.warehouse)).save(
            "tripflow", overwrite=True
        )
        shutil.rmtree(folder, ignore_errors=True)
