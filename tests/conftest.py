"""Shared test setup: a private Prefect home and one real Prefect server for the whole session.

The server (``prefect server start``, a real one on a free loopback port) is started once, because
starting one costs ~15-20 s. In-process flows and ``tripflow`` subprocesses both use it through
``PREFECT_API_URL``. Its database is a throwaway PostgreSQL server (tests/pg/pgserver.py), as on a
data team's Prefect server: on SQLite, tests/cluster's backfill fan-out (several pods' runs, their
logs and events, the worker, the triggers) once got ``503 Service Unavailable`` six times in a row
(SQLite's one writer, SQLITE_BUSY) and the backfill run failed. Most logic is tested on the plain
functions, without Prefect.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "pg"))  # tests/pg is not a package

from pgserver import PASSWORD, USER, ThrowawayPostgres


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_HOME = tempfile.mkdtemp(prefix="tripflow-prefect-home-")
_PORT = _free_port()
_SERVER_LOG = Path(_HOME) / "server.log"
os.environ["PREFECT_HOME"] = _HOME
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{_PORT}/api"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ.pop("TRIPFLOW_PII_KEY", None)


_PREFECT_DATABASE = "prefect"


@pytest.fixture(scope="session")
def prefect_database() -> Iterator[ThrowawayPostgres]:
    """The session's Prefect server's PostgreSQL (its ``prefect`` database)."""
    server = ThrowawayPostgres().start()
    try:
        server.psql_local(f"CREATE DATABASE {_PREFECT_DATABASE}", db="postgres")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prefect_server(prefect_database: ThrowawayPostgres) -> Iterator[str]:
    """A real Prefect server for the session, on PostgreSQL; yields its API URL."""
    api = os.environ["PREFECT_API_URL"]
    db_url = (
        f"postgresql+asyncpg://{USER}:{PASSWORD}@127.0.0.1:{prefect_database.port}"
        f"/{_PREFECT_DATABASE}"
    )
    env = {
        **os.environ,
        "PREFECT_API_DATABASE_CONNECTION_URL": db_url,  # the server's alone: clients need none
        "PREFECT_API_LOG_RETRYABLE_ERRORS": "true",  # a 503's cause, in server.log
    }
    log = open(_SERVER_LOG, "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(_PORT),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.close()
            raise RuntimeError("Prefect server did not start:\n" + _SERVER_LOG.read_text())
        time.sleep(0.5)
    yield api
    # Send the last in-process logs before the server goes away.
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean working folder: ``.tripflow/`` (staging, warehouse, PII key) is created here."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """tests/cluster last: its session fixtures keep a control plane, a Kubernetes worker and the
    shipped deployments (with their event triggers) on the session's Prefect server until the
    session ends, so no other test runs beside them. A stable sort: every other order stays."""
    items.sort(key=lambda item: Path(item.path).resolve().is_relative_to(CLUSTER_TESTS))


CLUSTER_TESTS = Path(__file__).resolve().parent / "cluster"
_cluster_started: list[float] = []
_server_log_offset: list[int] = [0]


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    if not _cluster_started and nodeid.startswith("tests/cluster/"):
        _cluster_started.append(time.monotonic())
    _server_log_offset[0] = _SERVER_LOG.stat().st_size if _SERVER_LOG.exists() else 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report carries the errors the session's Prefect server logged meanwhile
    (a 503 says only "Service Unavailable"; its cause is in the server's log)."""
    report = yield
    if report.failed and _SERVER_LOG.exists():
        with _SERVER_LOG.open("rb") as log:
            log.seek(_server_log_offset[0])
            lines = log.read().decode(errors="replace").splitlines()
        errors = [i for i, line in enumerate(lines) if "| ERROR" in line]
        if errors:
            text = "\n".join(lines[errors[0] :][-80:])
            report.sections.append(("Prefect server errors during the test", text))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The wall time of tests/cluster within this session (its session fixtures' setup and
    teardown included), for the README's figure: measured on every run, asserted by none."""
    if _cluster_started:
        minutes = (time.monotonic() - _cluster_started[0]) / 60
        terminalreporter.write_line(f"tests/cluster: {minutes:.1f} min wall (setup to teardown)")
