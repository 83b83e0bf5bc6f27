"""The local Prefect server ``tripflow`` starts in the background on first use and reuses.

Without it every CLI call would start Prefect's temporary server (8-17 s) and lose its runs when it
exits. Here the first ``tripflow run`` starts ``uvicorn prefect.server.api.server:create_app`` (what
``prefect server start --background`` runs) detached, and later calls find it and use it.

Where: the server belongs to Prefect's home (``PREFECT_HOME``, default ``~/.prefect``), like the one
``prefect server start`` runs: its SQLite database is ``PREFECT_HOME/prefect.db``, and next to it

- ``tripflow-server.json``: pid, port, Prefect version and start time of the server we started;
- ``tripflow-server.lock``: an ``flock`` held while one process decides and starts, so two first
  calls racing start exactly one server (the kernel drops the lock if its holder dies);
- ``tripflow-server.log``: the server's output;
- ``server.pid``: written when absent, so ``prefect server stop`` stops it too;
- ``tripflow-blocks.json``: what the database's block types were last registered from.

Block types: at every start Prefect's server imports each installed collection (prefect-aws,
-gcp, -snowflake, -kubernetes: ~3.7 of a start's ~8 s, ``bench/README.md``) only to find that
its block types are already registered. A server ``tripflow`` starts registers them once, and
again whenever what they come from changes (``blocks_key``: the Prefect and collection versions,
the database); otherwise it starts with ``PREFECT_API_BLOCKS_REGISTER_ON_START`` off.

Failure modes, each decided under the lock:

- no state, or a pid that is gone or is not a Prefect server (a stale pid, reused by another
  program): forget the state (never signal that pid), start a new server;
- our server alive but not answering: wait while it may still be starting (``START_TIMEOUT``),
  then stop it and start a new one;
- its Prefect version differs from the installed one (an upgrade): stop it and start one of the
  installed version, whose start-up runs the database migrations;
- the port (``TRIPFLOW_SERVER_PORT``, default 4200) held by another process: a free port instead;
  if another process takes the port between our choice and the server's bind, the new server
  exits and the next attempt picks again.

It is never used where ``PREFECT_API_URL`` names a server (environment, profile, ``prefect.toml``:
pods, CI, production) or where ``TRIPFLOW_LOCAL_SERVER=0`` (then Prefect's temporary server runs,
as before).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from importlib.metadata import entry_points
from importlib.metadata import version as _dist_version
from pathlib import Path

STATE_FILE = "tripflow-server.json"
LOCK_FILE = "tripflow-server.lock"
LOG_FILE = "tripflow-server.log"
BLOCKS_FILE = "tripflow-blocks.json"
#: Prefect's own pid file for ``prefect server start --background`` / ``prefect server stop``.
PREFECT_PID_FILE = "server.pid"
DEFAULT_PORT = 4200
#: What identifies the server's process in ``/proc/PID/cmdline`` (Prefect's server app factory).
SERVER_APP = "prefect.server.api.server:create_app"
#: In the environment of every server ``tripflow`` starts: the home it belongs to. Finds a server
#: whose state file was lost, so that it is stopped rather than left running beside a new one.
MARKER = "TRIPFLOW_LOCAL_SERVER_OF"
#: Seconds a server may take to answer its first health check (a fresh database migrates first).
START_TIMEOUT = float(os.environ.get("TRIPFLOW_SERVER_START_TIMEOUT", "180"))
STOP_TIMEOUT = 15.0
_OFF = {"0", "false", "no", "off"}


class ServerError(RuntimeError):
    """The local server could not be started; the message names its log."""


@dataclass(frozen=True)
class ServerState:
    pid: int
    port: int
    version: str
    started_at: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


def disabled_reason(environ: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """Why the local server must not be used, from the environment alone (no Prefect import).

    The CLI also asks Prefect's own settings (profile, ``prefect.toml``) before starting one.
    """
    env = os.environ if environ is None else environ
    if env.get("TRIPFLOW_LOCAL_SERVER", "1").strip().lower() in _OFF:
        return "TRIPFLOW_LOCAL_SERVER is off"
    if env.get("PREFECT_API_URL"):
        return "PREFECT_API_URL is set"
    return None


def settings_files_may_name_a_server(cwd: Path, home: Path) -> bool:
    """Whether a file Prefect reads its settings from might name a server (or another home), read
    as text without importing Prefect: its profiles file mentioning ``PREFECT_API_URL`` or
    ``PREFECT_HOME``, a ``prefect.toml`` in ``cwd``, a ``[tool.prefect`` table in its
    ``pyproject.toml``, a ``PREFECT_`` line in its ``.env``. Errs towards yes: then the CLI
    starts no server before Prefect's own settings have said (``flows.cli._prefect_api``)."""
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    checks = [
        (profiles, ("PREFECT_API_URL", "PREFECT_HOME")),
        (cwd / "pyproject.toml", ("[tool.prefect",)),
        (cwd / ".env", ("PREFECT_",)),
    ]
    if (cwd / "prefect.toml").exists():
        return True
    for path, words in checks:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            continue
        except OSError:
            return True
        if any(word in text for word in words):
            return True
    return False


def default_home() -> Path:
    """Prefect's home as Prefect resolves it from the environment (``~/.prefect`` by default)."""
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()


def installed_version() -> str:
    """The Prefect version installed in this environment (what a server started now would run)."""
    return _dist_version("prefect")


def blocks_key(home: Path) -> str:
    """What the block types a server registers depend on (no Prefect import): the installed
    Prefect, each collection with a ``prefect.collections`` entry point and its version, and the
    database (its URL when one is set, else the identity of ``home/prefect.db``), hashed."""
    parts = [f"prefect=={installed_version()}"]
    for entry in sorted(entry_points(group="prefect.collections"), key=lambda e: e.name):
        dist = entry.dist
        parts.append(f"{entry.name}={dist.name}=={dist.version}" if dist else entry.name)
    url = os.environ.get("PREFECT_SERVER_DATABASE_CONNECTION_URL") or os.environ.get(
        "PREFECT_API_DATABASE_CONNECTION_URL"
    )
    try:
        database = url or f"sqlite inode {(home / 'prefect.db').stat().st_ino}"
    except OSError:
        database = "no database yet"
    parts.append(database)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def blocks_registered(home: Path) -> bool:
    """True when a server of this home registered its block types from what is installed now."""
    try:
        recorded = json.loads((home / BLOCKS_FILE).read_text()).get("registered_from")
    except (OSError, ValueError, AttributeError):
        return False
    return bool(recorded) and recorded == blocks_key(home)


def _record_blocks(home: Path) -> None:
    tmp = home / f".{BLOCKS_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps({"registered_from": blocks_key(home)}))
    tmp.replace(home / BLOCKS_FILE)


# --- reading the state ------------------------------------------------------------------------


def read_state(home: Path) -> ServerState | None:
    try:
        data = json.loads((home / STATE_FILE).read_text())
        return ServerState(
            pid=int(data["pid"]),
            port=int(data["port"]),
            version=str(data["version"]),
            started_at=float(data["started_at"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(home: Path, state: ServerState) -> None:
    tmp = home / f".{STATE_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(asdict(state)))
    tmp.replace(home / STATE_FILE)


def _forget(home: Path, state: ServerState | None) -> None:
    (home / STATE_FILE).unlink(missing_ok=True)
    if state is not None:
        pid_file = home / PREFECT_PID_FILE
        with contextlib.suppress(OSError, ValueError):
            if int(pid_file.read_text()) == state.pid:
                pid_file.unlink()


#: How long a process may show an empty ``/proc/PID/cmdline`` while it is still being exec'd. The
#: kernel runs close-on-exec (which is when ``Popen`` returns) before it sets up the new
#: program's arguments; until then the new server reads as a process without a command line.
EXEC_WAIT = 5.0
_PF_KTHREAD = 0x00200000


def _running(pid: int) -> tuple[bool, bool] | None:
    """(a zombie, a kernel thread) for a process that exists; None when there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return fields[0] in ("Z", "X"), bool(int(fields[6]) & _PF_KTHREAD)


def _proc_bytes(pid: int, name: str, wait: float = EXEC_WAIT) -> bytes:
    """``/proc/PID/<name>`` (``cmdline`` or ``environ``); empty when the process is gone.

    A live user process shows both empty only while it is being exec'd (see ``EXEC_WAIT``), so
    that is waited out: a server started a moment ago is never taken for one that ended. A
    zombie or a kernel thread has them empty for good.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            data = Path(f"/proc/{pid}/{name}").read_bytes()
        except OSError:
            return b""
        if data:
            return data
        running = _running(pid)
        if running is None or any(running) or time.monotonic() > deadline:
            return b""
        time.sleep(0.005)


def is_server_process(pid: int, wait: float = EXEC_WAIT) -> bool:
    """True when ``pid`` is alive and is a Prefect server (not a pid the system reused).

    ``wait``: how long an empty command line is taken for an exec in progress.
    """
    cmdline = _proc_bytes(pid, "cmdline", wait)
    return SERVER_APP.encode() in cmdline or b"prefect\x00server\x00start" in cmdline


def _get(url: str, timeout: float) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bytes(response.read()) if response.status == 200 else None
    except (OSError, urllib.error.URLError, ValueError):
        return None


def healthy(state: ServerState, timeout: float = 2.0) -> bool:
    return _get(f"{state.api_url}/health", timeout) is not None


def server_version(state: ServerState, timeout: float = 2.0) -> str | None:
    """The Prefect version the running server reports (``/api/admin/version``); None when it
    does not answer (yet)."""
    body = _get(f"{state.api_url}/admin/version", timeout)
    try:
        return None if body is None else str(json.loads(body))
    except ValueError:
        return None


#: How long a recorded server may take to answer before it counts as not answering (a busy
#: machine can be slow; a wrong verdict would stop a healthy server).
ANSWER_TIMEOUT = 10.0


# --- the lock, ports, starting and stopping ----------------------------------------------------


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _choose_port() -> int:
    preferred = int(os.environ.get("TRIPFLOW_SERVER_PORT", DEFAULT_PORT))
    if port_free(preferred):
        return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(home: Path, port: int) -> ServerState:
    spec = importlib.util.find_spec("prefect")  # where it is, without importing it
    assert spec is not None and spec.origin is not None, "prefect is not installed"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    env.update(
        {MARKER: str(home)},
        PREFECT_HOME=str(home),
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),  # the UI's API address is built from these
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT__SERVER_FINAL="1",
    )
    if blocks_registered(home):
        # Nothing to register: skip the import of every collection that checking would cost.
        env.update(
            PREFECT_API_BLOCKS_REGISTER_ON_START="false",
            PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION="false",
        )
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(Path(spec.origin).parent.parent),
        "--factory",
        SERVER_APP,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ]
    with open(home / LOG_FILE, "wb") as log:
        proc = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the CLI and its terminal's Ctrl-C
            close_fds=True,
        )
    proc.returncode = 0  # never waited for: it runs on after this process exits
    state = ServerState(proc.pid, port, installed_version(), started_at=time.time())
    _write_state(home, state)
    with contextlib.suppress(FileExistsError):
        fd = os.open(home / PREFECT_PID_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, str(proc.pid).encode())
        os.close(fd)
    return state


def _terminate(pid: int) -> None:
    """Stop a server process: SIGTERM, then SIGKILL after ``STOP_TIMEOUT``."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
            os.kill(pid, signal.SIGCONT)  # a stopped (SIGSTOP) server acts on SIGTERM only then
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reaps it when it is our child (tests)
            if not is_server_process(pid):
                return
            time.sleep(0.1)


@dataclass(frozen=True)
class Decision:
    state: ServerState
    #: "running" (reused as is) or why a server was started: "none", "stale-pid", "died",
    #: "not-answering", "upgrade".
    reason: str


def _decide(home: Path) -> Decision:
    """Under the lock: reuse the recorded server, or stop what must go and start one."""
    state = read_state(home)
    reason = "none"
    if state is not None:
        if not is_server_process(state.pid):
            reason = _gone(state)
        else:
            running = server_version(state, ANSWER_TIMEOUT)
            # Started by another call moments ago: wait for it rather than start a second one.
            if (
                running is None
                and time.time() - state.started_at < START_TIMEOUT
                and _wait_ready(state, deadline=state.started_at + START_TIMEOUT)
            ):
                running = server_version(state, ANSWER_TIMEOUT)
            if running == installed_version():
                return Decision(state, "running")
            reason = "not-answering" if running is None else "upgrade"
            _terminate(state.pid)
        _forget(home, state)
    _stop_strays(home)
    return Decision(_spawn(home, _choose_port()), reason)


def _gone(state: ServerState) -> str:
    """Why a recorded server that is no longer a server process must be replaced."""
    return "stale-pid" if _pid_alive(state.pid) else "died"


def begin(home: Path) -> Decision | None:
    """Start a server without waiting for it, when none is recorded as running; None when one is
    (``ensure`` then decides whether it is of use). Lets the CLI import Prefect while the server
    starts; ``ensure(home, begun)`` waits for it."""
    with _locked(home):
        state = read_state(home)
        if state is not None and is_server_process(state.pid):
            return None
        reason = "none" if state is None else _gone(state)
        _forget(home, state)
        _stop_strays(home)
        return Decision(_spawn(home, _choose_port()), reason)


def servers_of(home: Path) -> list[int]:
    """Pids of the running servers ``tripflow`` started for this home (by their environment)."""
    mark = f"{MARKER}={home}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        # Not waited for: a program may blank its own command line, and every process is read.
        pid = int(proc.name)
        if is_server_process(pid, wait=0) and mark in _proc_bytes(pid, "environ").split(b"\0"):
            found.append(pid)
    return found


def _stop_strays(home: Path, keep: int | None = None) -> None:
    """Stop servers of this home that the state does not name (never more than one runs)."""
    for pid in servers_of(home):
        if pid != keep:
            _terminate(pid)


def _pid_alive(pid: int) -> bool:
    """True when a process with this pid runs (a zombie, dead but not yet reaped, does not)."""
    running = _running(pid)
    return running is not None and not running[0]


def _wait_ready(state: ServerState, deadline: float) -> bool:
    """Poll the health endpoint until it answers; False if the process ends or time runs out."""
    while time.time() < deadline:
        if healthy(state, timeout=1.0):
            return True
        if not is_server_process(state.pid):
            return False
        time.sleep(0.1)
    return False


def ensure(home: Path | None = None, begun: Decision | None = None) -> Decision:
    """A running local server of the installed Prefect version: the one recorded, or a new one
    (``begun``: the one ``begin`` started, if it is still the one recorded).

    Exactly one process starts it (the others wait on the lock, then reuse it). Raises
    ``ServerError`` naming the log when it does not answer within ``START_TIMEOUT``.
    """
    home = default_home() if home is None else home
    for _attempt in range(2):  # a second try if another process took the port we chose
        with _locked(home):
            recorded = read_state(home)
            if begun is not None and recorded is not None and recorded.pid == begun.state.pid:
                decision = begun  # started by ``begin``: still the one recorded, wait for it
            else:
                decision = _decide(home)
            begun = None
            if decision.reason == "running":
                return decision
            if _wait_ready(decision.state, deadline=decision.state.started_at + START_TIMEOUT):
                # It answers only once its start-up, block registration included, is done.
                if not blocks_registered(home):
                    _record_blocks(home)
                return decision
            alive = is_server_process(decision.state.pid)
            if alive:
                _terminate(decision.state.pid)
            _forget(home, decision.state)
            if alive:  # it ran but never answered: a second try would wait as long again
                break
    raise ServerError(
        f"the local Prefect server did not start; see {home / LOG_FILE} "
        "(or set TRIPFLOW_LOCAL_SERVER=0 to use Prefect's temporary server)"
    )


def stop(home: Path | None = None) -> ServerState | None:
    """Stop the server ``tripflow`` started (if any); returns what was stopped."""
    home = default_home() if home is None else home
    with _locked(home):
        state = read_state(home)
        _stop_strays(home, keep=None if state is None else state.pid)
        if state is None:
            return None
        if is_server_process(state.pid):
            _terminate(state.pid)
        _forget(home, state)
        return state


@dataclass(frozen=True)
class Status:
    home: Path
    state: ServerState | None
    running: bool
    version: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "home": str(self.home),
            "running": self.running,
            "url": self.state.url if self.state else None,
            "api_url": self.state.api_url if self.state else None,
            "pid": self.state.pid if self.state else None,
            "version": self.version,
            "log": str(self.home / LOG_FILE),
        }


def status(home: Path | None = None) -> Status:
    home = default_home() if home is None else home
    state = read_state(home)
    if state is None or not is_server_process(state.pid):
        return Status(home, state, False, None)
    running = server_version(state, ANSWER_TIMEOUT)
    return Status(home, state, running is not None, running)
