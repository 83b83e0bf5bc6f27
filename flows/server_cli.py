"""``tripflow server status|start|stop``: the local Prefect server the CLI runs in the background.

These commands never import Prefect (they answer in well under a second).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from flows import local_server
from flows.terminal import command_group, console

server_app = command_group(
    "The local Prefect server `tripflow run` starts on first use and reuses (its UI keeps runs)."
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def _not_used_note() -> str | None:
    reason = local_server.disabled_reason()
    if reason is None:
        return None
    return f"tripflow does not use a local server here: {reason}"


@server_app.command("status")
def server_status(as_json: JsonOpt = False) -> None:
    """Where the UI is, or that no server runs; exit 1 when none runs."""
    found = local_server.status()
    note = _not_used_note()
    if as_json:
        sys.stdout.write(json.dumps({**found.as_dict(), "note": note}) + "\n")
    elif found.running and found.state is not None:
        console.print(f"Prefect UI:  {found.state.url}  (runs: {found.state.url}/runs)")
        console.print(f"API:         {found.state.api_url}")
        console.print(
            f"Server:      pid {found.state.pid}, Prefect {found.version}, home {found.home}"
        )
        console.print(f"Log:         {found.home / local_server.LOG_FILE}")
        console.print("Stop it with `tripflow server stop`.")
    else:
        console.print(
            f"No local Prefect server is running (home {found.home}); "
            "`tripflow run` starts one, or `tripflow server start`."
        )
    if note:
        console.print(note)
    raise typer.Exit(0 if found.running else 1)


@server_app.command("start")
def server_start(as_json: JsonOpt = False) -> None:
    """Start the local server now (or find the running one) and say where the UI is."""
    try:
        decision = local_server.ensure()
    except local_server.ServerError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(3) from None
    state = decision.state
    if as_json:
        out = {"url": state.url, "pid": state.pid, "reason": decision.reason}
        sys.stdout.write(json.dumps(out) + "\n")
    else:
        verb = "running" if decision.reason == "running" else "started"
        console.print(f"Prefect server {verb}: UI {state.url}, pid {state.pid}")
    note = _not_used_note()
    if note:
        console.print(note)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the local server (the runs stay in its database for the next start)."""
    stopped = local_server.stop()
    if stopped is None:
        console.print("No local Prefect server was running.")
    else:
        console.print(f"Stopped the local Prefect server (pid {stopped.pid}, {stopped.url}).")
