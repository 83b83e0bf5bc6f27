"""tripflow's automations (flows/automations.py) applied to the session's server for a live test,
with their windows scaled by overrides.TIME_SCALE, notifying a local HTTP receiver."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from cluster import overrides
from helpers import ROOT

from flows import automations

BLOCK = "tripflow-cluster-alerts"


@contextmanager
def applied(receiver_url: str) -> Iterator[None]:
    """``tripflow automations apply`` (flows/ops_cli.py) with scaled windows; removed after."""
    done = subprocess.run(
        [sys.executable, "-m", "flows.ops_cli", "apply", "--webhook-block", BLOCK,
         "--webhook-url", receiver_url,
         "--stale-after", f"{overrides.scaled(automations.STALE_AFTER.total_seconds())}s",
         "--running-longer-than",
         f"{overrides.scaled(automations.RUNNING_LONGER_THAN.total_seconds())}s",
         "--pod-start-within",
         f"{overrides.scaled(automations.POD_START_WITHIN.total_seconds())}s"],
        cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        yield
    finally:
        asyncio.run(_remove())


async def _remove() -> None:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        for name in (automations.FAILED, automations.STALE, automations.POD_FAILED,
                     automations.RUNNING_LONG, automations.POD_UNSCHEDULABLE,
                     automations.POD_NOT_STARTED):  # fmt: skip
            for automation in await client.read_automations_by_name(name):
                await client.delete_automation(automation.id)
        try:
            block = await client.read_block_document_by_name(BLOCK, "custom-webhook")
        except ObjectNotFound:
            return
        await client.delete_block_document(block.id)
