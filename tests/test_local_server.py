"""The local Prefect server `tripflow` starts in the background and reuses (local_server.py).

Every test here uses its own Prefect home in a temporary folder and a free port, so the session's
server (``conftest.py``, which every other test reaches through ``PREFECT_API_URL``) and a user's
own ``~/.prefect`` are never touched. Each test stops every server process it started (found by
their ``PREFECT_HOME``), whatever the outcome.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows import local_server

TRIPFLOW = str(Path(sys.executable).parent / "tripflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _servers(home: Path) -> list[int]:
    """Pids of the Prefect server processes running with this Prefect home."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if local_server.SERVER_APP.encode() in cmdline and f"PREFECT_HOME={home}".encode() in (
            environ
        ):
            found.append(int(proc.name))
    return found


def _kill(pid: int) -> None:
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
    try:
        os.waitpid(pid, 0)  # a server ensure() started in this process is its child
    except ChildProcessError:
        deadline = time.monotonic() + 10
        while local_server.is_server_process(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private Prefect home; its servers are all stopped afterwards."""
    path = tmp_path / "prefect-home"
    monkeypatch.setenv("TRIPFLOW_SERVER_PORT", str(_free_port()))
    monkeypatch.setattr(local_server, "STOP_TIMEOUT", 5.0)
    yield path
    for pid in _servers(path):
        _kill(pid)
    assert _servers(path) == []


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PREFECT_API_URL, this test's Prefect home."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "PREFECT_HOME": str(home), **extra}


def _cli(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TRIPFLOW, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


def test_disabled_by_the_setting_or_a_configured_server() -> None:
    assert local_server.disabled_reason({}) is None
    assert local_server.disabled_reason({"TRIPFLOW_LOCAL_SERVER": "1"}) is None
    for off in ("0", "false", "OFF", "no"):
        assert local_server.disabled_reason({"TRIPFLOW_LOCAL_SERVER": off}) is not None
    assert local_server.disabled_reason({"PREFECT_API_URL": "http://10.0.0.1:4200/api"})


def test_two_first_calls_start_one_server_which_keeps_the_runs(home: Path, workdir: Path) -> None:
    env = _env(home)
    racers = [
        subprocess.Popen(
            [TRIPFLOW, "server", "start", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = []
    for racer in racers:
        stdout, stderr = racer.communicate(timeout=400)
        assert racer.returncode == 0, stderr
        outs.append(json.loads(stdout))
    assert outs[0]["pid"] == outs[1]["pid"]
    assert sorted(o["reason"] for o in outs) == ["none", "running"]
    assert _servers(home) == [outs[0]["pid"]]
    url = outs[0]["url"]

    run = _cli("run", "--source", "sample", "--date", "2025-11-15", "--json", env=env, cwd=workdir)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    # The run is kept by the background server after the CLI has exited.
    with urllib.request.urlopen(f"{url}/api/flow_runs/{report['flow_run_id']}") as response:
        assert json.load(response)["state_type"] == "COMPLETED"
    assert _servers(home) == [outs[0]["pid"]]  # reused, not started again

    status = _cli("server", "status", "--json", env=env)
    assert status.returncode == 0
    assert json.loads(status.stdout) | {"note": None} == {
        "home": str(home),
        "running": True,
        "url": url,
        "api_url": f"{url}/api",
        "pid": outs[0]["pid"],
        "version": local_server.installed_version(),
        "log": str(home / local_server.LOG_FILE),
        "note": None,
    }
    stopped = _cli("server", "stop", env=env)
    assert stopped.returncode == 0 and f"pid {outs[0]['pid']}" in stopped.stderr
    assert _servers(home) == []
    assert not (home / local_server.STATE_FILE).exists()
    assert not (home / local_server.PREFECT_PID_FILE).exists()
    assert _cli("server", "status", env=env).returncode == 1


def test_a_stale_pid_is_never_signalled_and_a_busy_port_is_avoided(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy = int(os.environ["TRIPFLOW_SERVER_PORT"])
    holder = socket.socket()
    holder.bind(("127.0.0.1", busy))
    holder.listen()
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        home.mkdir()
        stale = local_server.ServerState(
            bystander.pid, busy, local_server.installed_version(), started_at=time.time() - 3600
        )
        (home / local_server.STATE_FILE).write_text(json.dumps(stale.__dict__))
        decision = local_server.ensure(home)
        assert decision.reason == "stale-pid"
        assert decision.state.pid != bystander.pid and decision.state.port != busy
        assert bystander.poll() is None  # the pid was another program's: left alone
        assert local_server.healthy(decision.state)
        assert local_server.read_state(home) == decision.state
    finally:
        bystander.kill()
        bystander.wait()
        holder.close()


def test_a_server_whose_state_was_lost_is_stopped_not_doubled(home: Path) -> None:
    first = local_server.ensure(home)
    (home / local_server.STATE_FILE).unlink()  # lost track of it (e.g. a deleted file)
    second = local_server.ensure(home)
    assert second.reason == "none"
    assert _servers(home) == [second.state.pid]  # exactly one: the first was stopped
    assert not local_server.is_server_process(first.state.pid)
    (home / local_server.STATE_FILE).unlink()
    assert local_server.stop(home) is None  # nothing recorded...
    assert _servers(home) == []  # ...but the server it started is stopped all the same


def test_a_server_being_started_is_never_taken_for_one_that_ended() -> None:
    # Popen returns at the kernel's close-on-exec, before the new program's command line is set:
    # for a moment /proc/PID/cmdline reads empty. ensure() looks at the server it has just started
    # at once; taking that moment for "it ended" made it give up on a server that was starting.
    # Stand-in for the server: a shell whose command line names Prefect's server app.
    for _ in range(40):
        proc = subprocess.Popen(["sh", "-c", "sleep 30; :", local_server.SERVER_APP])
        try:
            assert local_server.is_server_process(proc.pid)
        finally:
            proc.kill()
            proc.wait()
        assert not local_server.is_server_process(proc.pid)  # reaped: gone


def test_a_stopped_server_is_stopped_by_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stopped (SIGSTOP) process acts on SIGTERM only once continued; without SIGCONT the server
    # would be killed (SIGKILL) after STOP_TIMEOUT instead of shutting down. Stand-in for the
    # server: a shell whose command line names Prefect's server app and that notes SIGTERM.
    monkeypatch.setattr(local_server, "STOP_TIMEOUT", 60.0)
    ready, noted = tmp_path / "ready", tmp_path / "sigterm"
    script = f'trap "echo > {noted}; exit 0" TERM; echo > {ready}; while :; do sleep 0.1; done'
    proc = subprocess.Popen(["sh", "-c", script, local_server.SERVER_APP])
    try:
        while not ready.exists():  # its trap is set
            assert proc.poll() is None
            time.sleep(0.01)
        assert local_server.is_server_process(proc.pid)
        os.kill(proc.pid, signal.SIGSTOP)
        local_server._terminate(proc.pid)
        assert noted.exists()
        assert not local_server.is_server_process(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_a_server_that_died_hangs_or_is_outdated_is_replaced(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def answers(state: local_server.ServerState) -> bool:
        # As long as ensure() itself allows a server to answer (a busy machine is slow).
        return local_server.healthy(state, timeout=local_server.ANSWER_TIMEOUT)

    first = local_server.ensure(home)
    assert first.reason == "none" and answers(first.state)

    _kill(first.state.pid)
    died = local_server.ensure(home)
    assert died.reason == "died" and died.state.pid != first.state.pid
    assert answers(died.state)

    # Hung: alive but not answering, long after its start.
    os.kill(died.state.pid, signal.SIGSTOP)
    hung_state = local_server.ServerState(
        died.state.pid, died.state.port, died.state.version, started_at=time.time() - 3600
    )
    (home / local_server.STATE_FILE).write_text(json.dumps(hung_state.__dict__))
    hung = local_server.ensure(home)
    assert hung.reason == "not-answering" and not local_server.is_server_process(died.state.pid)
    assert answers(hung.state)

    # An upgrade: the installed Prefect differs from the one the server runs. Stand-in: only one
    # Prefect is installed here, so the installed version is reported as another one.
    monkeypatch.setattr(local_server, "installed_version", lambda: "99.0.0")
    upgraded = local_server.ensure(home)
    assert upgraded.reason == "upgrade" and upgraded.state.pid != hung.state.pid
    assert not local_server.is_server_process(hung.state.pid)
    assert _servers(home) == [upgraded.state.pid]


def test_which_settings_files_may_name_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_PROFILES_PATH", raising=False)
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    may = local_server.settings_files_may_name_a_server
    assert not may(cwd, home)
    (home / "profiles.toml").write_text('active = "local"\n[profiles.local]\n')
    (cwd / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (cwd / ".env").write_text("OTHER=1\n")
    assert not may(cwd, home)
    for path, text in [
        (home / "profiles.toml", '[profiles.local]\nPREFECT_API_URL = "http://h:4200/api"\n'),
        (home / "profiles.toml", '[profiles.local]\nPREFECT_HOME = "/elsewhere"\n'),
        (cwd / "pyproject.toml", '[tool.prefect.api]\nurl = "http://h:4200/api"\n'),
        (cwd / ".env", "PREFECT_API_URL=http://h:4200/api\n"),
        (cwd / "prefect.toml", ""),
    ]:
        before = path.read_text() if path.exists() else None
        path.write_text(text)
        assert may(cwd, home), path.name
        if before is None:
            path.unlink()
        else:
            path.write_text(before)
    assert not may(cwd, home)
    monkeypatch.setenv("PREFECT_PROFILES_PATH", str(tmp_path / "other-profiles.toml"))
    (tmp_path / "other-profiles.toml").write_text('PREFECT_API_URL = "http://h:4200/api"\n')
    assert may(cwd, home)


def test_a_server_begun_early_is_the_one_waited_for(home: Path) -> None:
    begun = local_server.begin(home)
    assert begun is not None and begun.reason == "none"
    assert local_server.begin(home) is None  # recorded and alive: not started twice
    ready = local_server.ensure(home, begun)
    assert ready == begun
    assert local_server.healthy(ready.state) and local_server.blocks_registered(home)
    assert _servers(home) == [begun.state.pid]

    # Replaced between begin and ensure (another call found it dead): the recorded one counts.
    local_server.stop(home)
    stale = local_server.begin(home)
    assert stale is not None
    _kill(stale.state.pid)
    replaced = local_server.ensure(home)
    assert replaced.reason == "died"
    decided = local_server.ensure(home, stale)
    assert decided.reason == "running" and decided.state.pid == replaced.state.pid
    assert _servers(home) == [replaced.state.pid]


def test_a_run_that_must_start_the_server_starts_it_and_keeps_it(home: Path, workdir: Path) -> None:
    env = _env(home)
    run = _cli("run", "--source", "sample", "--date", "2025-11-15", "--json", env=env, cwd=workdir)
    assert run.returncode == 0, run.stderr
    assert "Started the local Prefect server in the background" in run.stderr
    state = local_server.read_state(home)
    assert state is not None and _servers(home) == [state.pid]
    with urllib.request.urlopen(
        f"{state.api_url}/flow_runs/{json.loads(run.stdout)['flow_run_id']}"
    ) as response:
        assert json.load(response)["state_type"] == "COMPLETED"


def _events(api_url: str, name: str, resource_id: str) -> list[dict[str, object]]:
    body = {"filter": {"event": {"name": [name]}, "resource": {"id": [resource_id]}}, "limit": 50}
    request = urllib.request.Request(
        f"{api_url}/events/filter",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        events: list[dict[str, object]] = json.load(response)["events"]
    return events


def test_runs_on_the_local_server_send_heartbeats_only_when_prefects_settings_ask(
    home: Path, workdir: Path
) -> None:
    # Nothing on the local server listens for flow-run heartbeats, and Prefect joins the
    # heartbeat thread (which sleeps in 1 s steps) at every run's end: off unless asked for.
    args = ("run", "--source", "sample", "--date", "2025-11-15", "--json")
    quiet = _cli(*args, env=_env(home), cwd=workdir)
    assert quiet.returncode == 0, quiet.stderr
    asked = _cli(*args, env=_env(home, PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30"), cwd=workdir)
    assert asked.returncode == 0, asked.stderr
    state = local_server.read_state(home)
    assert state is not None

    heartbeat = "prefect.flow-run.heartbeat"
    asked_run = f"prefect.flow-run.{json.loads(asked.stdout)['flow_run_id']}"
    deadline = time.monotonic() + 60  # the server stores events a moment after it takes them
    while not _events(state.api_url, heartbeat, asked_run):
        assert time.monotonic() < deadline, "the run that asked for heartbeats sent none"
        time.sleep(0.5)
    # Stored in order: the run before the one whose heartbeat is there sent none.
    quiet_run = f"prefect.flow-run.{json.loads(quiet.stdout)['flow_run_id']}"
    assert _events(state.api_url, heartbeat, quiet_run) == []
    assert _events(state.api_url, "prefect.flow-run.Completed", quiet_run) != []


def _registers_blocks(pid: int) -> bool:
    """Whether the server process runs with block registration on (the setting's default)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return b"PREFECT_API_BLOCKS_REGISTER_ON_START=false" not in environ


def _block_type_slugs(state: local_server.ServerState) -> set[str]:
    request = urllib.request.Request(
        f"{state.api_url}/block_types/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return {item["slug"] for item in json.load(response)}


def test_block_types_are_registered_once_and_again_when_what_they_come_from_changes(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = local_server.ensure(home)
    assert _registers_blocks(first.state.pid)  # a new database: registered at start
    assert local_server.blocks_registered(home)
    # The installed collections' block types (prefect-aws, -gcp, -snowflake) are in the database.
    registered = _block_type_slugs(first.state)
    assert {"s3-bucket", "gcs-bucket", "snowflake-credentials"} <= registered

    local_server.stop(home)
    second = local_server.ensure(home)
    assert not _registers_blocks(second.state.pid)  # nothing changed: no collection imported
    assert _block_type_slugs(second.state) == registered

    # A collection upgraded (stand-in: the recorded key no longer matches): registered again.
    local_server.stop(home)
    monkeypatch.setattr(local_server, "installed_version", lambda: "99.0.0")
    assert not local_server.blocks_registered(home)
    third = local_server.ensure(home)
    assert _registers_blocks(third.state.pid)
    assert local_server.blocks_registered(home)


def test_no_local_server_where_a_profile_names_one(
    home: Path, workdir: Path, prefect_server: str
) -> None:
    home.mkdir()
    (home / "profiles.toml").write_text(
        f'active = "team"\n\n[profiles.team]\nPREFECT_API_URL = "{prefect_server}"\n'
    )
    run = _cli("run", "--source", "sample", "--date", "2025-11-15", env=_env(home), cwd=workdir)
    assert run.returncode == 0, run.stderr
    assert f"Prefect UI: {prefect_server.removesuffix('/api')}/runs/flow-run/" in run.stderr
    assert not (home / local_server.STATE_FILE).exists()
    assert _servers(home) == []


def test_turned_off_a_run_uses_prefects_temporary_server(home: Path, workdir: Path) -> None:
    env = _env(home, TRIPFLOW_LOCAL_SERVER="0")
    run = _cli("run", "--source", "sample", "--date", "2025-11-15", env=env, cwd=workdir)
    assert run.returncode == 0, run.stderr
    assert "this run used Prefect's temporary server" in run.stderr
    assert not (home / local_server.STATE_FILE).exists()
    assert _servers(home) == []


def test_land_emits_to_the_local_server(home: Path, workdir: Path) -> None:
    # Without a configured server, `tripflow land` sends its event to the local server that
    # `tripflow run` uses (before: to a temporary server, which took the event with it on exit).
    env = _env(home)
    staging = str(workdir / "staging")
    landed = _cli(
        *("land", "--date", "2025-11-15", "--source", "sample", "--staging", staging, "--json"),
        env=env,
        cwd=workdir,
    )
    assert landed.returncode == 0, landed.stderr
    assert "Started the local Prefect server in the background" in landed.stderr
    landed_run_id = json.loads(landed.stdout)["payload"]["landed_run_id"]
    state = local_server.read_state(home)
    assert state is not None and _servers(home) == [state.pid]

    body = {"filter": {"event": {"name": ["tripflow.raw.landed"]}}, "limit": 50}
    request = urllib.request.Request(
        f"{state.api_url}/events/filter",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    deadline = time.monotonic() + 60  # the server stores events a moment after it takes them
    while True:
        with urllib.request.urlopen(request, timeout=30) as response:
            events = json.load(response)["events"]
        if any(e["payload"].get("landed_run_id") == landed_run_id for e in events):
            break
        assert time.monotonic() < deadline, "tripflow.raw.landed is not on the local server"
        time.sleep(0.5)
    assert _servers(home) == [state.pid]  # it runs on after the CLI exited
