"""How long ``tripflow`` takes to answer, as a user runs it: whole processes, wall and CPU seconds.

    uv run python bench/cli_bench.py --rounds 3

Every round runs each case once, in turn (alternating, so a busy spell of a shared machine falls on
all of them); the table shows medians. Each case is a fresh process on a machine that already ran
``./scripts/setup`` (bytecode compiled):

- ``sample, server running``: ``tripflow run --source sample`` with the local server up;
- ``sample, server must start``: the same right after ``tripflow server stop`` (its database
  exists; the very first start on a new database, which migrates it, is reported once apart);
- ``demo 1M, server running``: ``./scripts/demo`` (setup, then 1,000,000 synthetic trips);
- ``sample, temporary server``: ``TRIPFLOW_LOCAL_SERVER=0``, Prefect's temporary server (as
  before the local server);
- ``sample, temporary server, no bytecode``: the same with ``PYTHONPYCACHEPREFIX`` pointing at an
  empty folder, so no compiled bytecode is found and every module compiles again (as before
  setup compiled it: this environment sets ``PYTHONDONTWRITEBYTECODE=1``);
- ``server status``: ``tripflow server status``.

CPU seconds are the process's own and its waited-for children's (the temporary server is one; the
background server is not: its CPU during a case is given apart, where it was running). The local
server runs with a private Prefect home in a temporary folder and
``PREFECT_SERVER_LOG_RETRYABLE_ERRORS=true``, so the SQLite ``database is locked`` answers
(PrefectHQ/prefect#18934) are counted from its log. Writes ``bench/results/cli.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRIPFLOW = str(ROOT / ".venv" / "bin" / "tripflow")
DAY = "2025-11-15"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """(wall s, CPU s, stdout) of one process, which must succeed."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    usage = _child_cpu()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    return wall, usage, out.decode()


_cpu_seen = 0.0


def server_cpu(home: Path) -> float:
    """CPU seconds the background server has used so far (0 when none runs)."""
    try:
        pid = json.loads((home / "tripflow-server.json").read_text())["pid"]
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, KeyError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _child_cpu() -> float:
    """CPU seconds of the children waited for since the last call."""
    global _cpu_seen
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    spent, _cpu_seen = total - _cpu_seen, total
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--demo-rows", type=int, default=1_000_000)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="tripflow-cli-bench-"))
    home = scratch / "prefect-home"
    empty_pycache = scratch / "no-bytecode"
    empty_pycache.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "VIRTUAL_ENV")}
    # As from a user's shell: ``uv run`` puts .venv/bin first, where ``python3 -m uv`` (setup's)
    # finds no uv.
    venv_bin = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    env.update(
        PREFECT_HOME=str(home),
        TRIPFLOW_SERVER_PORT=str(_free_port()),
        PREFECT_SERVER_LOG_RETRYABLE_ERRORS="true",
    )
    temporary = {**env, "TRIPFLOW_LOCAL_SERVER": "0"}
    no_bytecode = {**temporary, "PYTHONPYCACHEPREFIX": str(empty_pycache)}
    sample = [TRIPFLOW, "run", "--source", "sample", "--date", DAY]
    demo = [str(ROOT / "scripts" / "demo"), "--rows", str(args.demo_rows), "--date", DAY, "--json"]
    _child_cpu()

    first_start = timed([TRIPFLOW, "server", "start"], env, scratch)
    print(f"first start on a new database (migrations): {first_start[0]:.1f} s wall", flush=True)

    cases: dict[str, list[tuple[float, float]]] = {}
    demo_stages: list[float] = []

    server_spent: dict[str, list[float]] = {}

    def record(name: str, result: tuple[float, float, str], server: float = 0.0) -> None:
        cases.setdefault(name, []).append(result[:2])
        server_spent.setdefault(name, []).append(server)
        print(
            f"  {name}: {result[0]:.2f} s wall, {result[1]:.2f} CPU s (server {server:.2f})",
            flush=True,
        )

    def with_server(name: str, cmd: list[str], run_env: dict[str, str]) -> str:
        before = server_cpu(home)
        result = timed(cmd, run_env, scratch)
        record(name, result, server_cpu(home) - before)
        return result[2]

    try:
        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no} (load average {os.getloadavg()[0]:.2f})", flush=True)
            timed([TRIPFLOW, "server", "start"], env, scratch)
            with_server("sample, server running", sample, env)
            out = with_server(f"demo {args.demo_rows:,}, server running", demo, env)
            demo_stages.append(sum(s["seconds"] for s in json.loads(out)["stages"]))
            record("server status", timed([TRIPFLOW, "server", "status"], env, scratch))
            timed([TRIPFLOW, "server", "stop"], env, scratch)
            with_server("sample, server must start", sample, env)
            record("sample, temporary server", timed(sample, temporary, scratch))
            record("sample, temporary server, no bytecode", timed(sample, no_bytecode, scratch))
    finally:
        subprocess.run([TRIPFLOW, "server", "stop"], env=env, cwd=scratch, check=False)
    log = (home / "tripflow-server.log").read_text(errors="replace")
    locked = log.count("database is locked")

    rows = []
    print(f"\n{args.rounds} rounds, medians; load average now {os.getloadavg()[0]:.2f}\n")
    print("| case | wall s | CPU s | server CPU s |\n|---|---:|---:|---:|")
    for name, results in cases.items():
        wall = statistics.median(r[0] for r in results)
        cpu = statistics.median(r[1] for r in results)
        server = statistics.median(server_spent[name])
        rows.append(
            {"case": name, "wall_s": wall, "cpu_s": cpu, "server_cpu_s": server, "rounds": results}
        )
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {server:.2f} |")
    print(f"\ndemo stages (sum of the five, median): {statistics.median(demo_stages):.2f} s")
    print(f"first server start on a new database: {first_start[0]:.1f} s wall")
    print(f"'database is locked' in the background server's log: {locked}")
    out = ROOT / "bench" / "results" / "cli.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "cases": rows,
                "demo_stage_seconds": demo_stages,
                "first_start_wall_s": first_start[0],
                "database_locked_lines": locked,
                "load_average_end": os.getloadavg(),
            },
            indent=2,
        )
    )
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
