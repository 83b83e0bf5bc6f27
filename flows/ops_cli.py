"""``tripflow automations …``: apply tripflow's automations (``flows/automations.py``) to a server.

Wired into the ``tripflow`` CLI as ``app.add_typer(ops_app, name="automations")``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated

import typer

from flows.terminal import command_group, console

ops_app = command_group(
    "Prefect automations: failure alerts, the 26 h staleness alert, pod failures."
)


@ops_app.callback()
def _group() -> None:
    """Prefect automations for daily-trip-etl (a group even with one command)."""


@ops_app.command("apply")
def apply_automations(
    webhook_block: Annotated[
        str,
        typer.Option(
            "--webhook-block",
            help="The notification block to send to: NAME (a custom-webhook block) or SLUG/NAME "
            "(e.g. slack-webhook/data-alerts).",
        ),
    ] = "tripflow-alerts",
    webhook_url: Annotated[
        str | None,
        typer.Option(
            "--webhook-url",
            help="Also save (or overwrite) --webhook-block as a custom-webhook block POSTing "
            '{"subject", "body"} JSON to this URL.',
        ),
    ] = None,
    stale_after: Annotated[
        str | None,
        typer.Option(
            "--stale-after",
            help="Alert when no run Completed for this long "
            "[default: flows.automations.STALE_AFTER, 26h].",
            show_default=False,
        ),
    ] = None,
    running_longer_than: Annotated[
        str | None,
        typer.Option(
            "--running-longer-than",
            help="Alert when a run is Running this long "
            "[default: flows.automations.RUNNING_LONGER_THAN, 45m].",
            show_default=False,
        ),
    ] = None,
    pod_start_within: Annotated[
        str | None,
        typer.Option(
            "--pod-start-within",
            help="Alert when a pipeline pod is still Pending this long after it was created "
            "[default: flows.automations.POD_START_WITHIN, 5m].",
            show_default=False,
        ),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace",
            help="The pipeline pods' Kubernetes namespace [default: flows.automations.NAMESPACE].",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Create or update tripflow's automations by name (applying twice changes nothing)."""
    from flows import automations  # imports Prefect: only for this command

    try:
        stale = automations.parse_duration(stale_after) if stale_after else automations.STALE_AFTER
        running = (
            automations.parse_duration(running_longer_than)
            if running_longer_than
            else automations.RUNNING_LONGER_THAN
        )
        pod_start = (
            automations.parse_duration(pod_start_within)
            if pod_start_within
            else automations.POD_START_WITHIN
        )
    except ValueError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None

    async def _apply() -> list[automations.Applied]:
        if webhook_url:
            if "/" in webhook_block:
                raise ValueError("--webhook-url saves a custom-webhook block: give a plain NAME")
            block_id = await automations.save_webhook_block(webhook_block, webhook_url)
        else:
            block_id = await automations.notification_block_id(webhook_block)
        return await automations.apply(
            automations.definitions(
                block_id,
                stale_after=stale,
                running_longer_than=running,
                pod_start_within=pod_start,
                namespace=namespace or automations.NAMESPACE,
            )
        )

    try:
        done = asyncio.run(_apply())
    except Exception as exc:
        from prefect.exceptions import ObjectNotFound

        if isinstance(exc, ObjectNotFound):
            console.print(
                f"[bold red]error:[/] no notification block {webhook_block!r}: create it first, "
                "or pass --webhook-url to save one"
            )
        else:
            console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}")
        raise typer.Exit(3) from None
    if as_json:
        out = [{"name": a.name, "action": a.action, "id": str(a.id)} for a in done]
        sys.stdout.write(json.dumps({"automations": out}) + "\n")
    else:
        for applied in done:
            console.print(f"{applied.action:>9}  {applied.name}  ({applied.id})")


if __name__ == "__main__":
    ops_app()
