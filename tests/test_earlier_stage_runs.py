"""flows.stages.wait_for_earlier_stage_runs on a real Prefect server: a run of a day dispatches no
stage while an earlier stage run of that day, on the same staging, has not ended (the live proof,
with a daily pod killed mid-stage: tests/cluster/test_fault_daily_killed.py).

The stage deployments here are test-only ones (``flows.stages.STAGE_DEPLOYMENTS`` pointed at
deployments named ``test-earlier-*``, so the session's other deployments are untouched); their
flow runs are created in the states a worker and a stage pod would give them.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import date
from types import SimpleNamespace
from typing import Any

import pytest
from prefect import get_client
from prefect.states import Completed, Running

from flows import stages
from tasks.errors import InfrastructureError

DAY = date(1999, 3, 1)
STAGING = "s3://earlier-stage-runs/trips"


async def _deploy(suffix: str, deadline: int) -> dict[str, uuid.UUID]:
    async with get_client() as client:
        ids = {}
        for stage in ("extract", "transform"):
            flow_id = await client.create_flow_from_name(f"tripflow-{stage}")
            ids[stage] = await client.create_deployment(
                flow_id=flow_id,
                name=f"test-earlier-{stage}-{suffix}",
                job_variables={"active_deadline_seconds": deadline},
            )
        return ids


async def _run(deployment_id: uuid.UUID, state: Any, **parameters: Any) -> uuid.UUID:
    async with get_client() as client:
        run = await client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
        await client.set_flow_run_state(run.id, state, force=True)
        return run.id


async def _set(flow_run_id: uuid.UUID, state: Any) -> None:
    async with get_client() as client:
        await client.set_flow_run_state(flow_run_id, state, force=True)


@pytest.fixture
def deployments(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, uuid.UUID]:
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setattr(
        stages,
        "STAGE_DEPLOYMENTS",
        {s: f"tripflow-{s}/test-earlier-{s}-{suffix}" for s in ("extract", "transform", "load")},
    )  # load: not deployed, so it has no runs
    return asyncio.run(_deploy(suffix, deadline=3600))


def _ctx(day: date = DAY, staging: str = STAGING) -> Any:
    return SimpleNamespace(run_date=day, settings=SimpleNamespace(staging=staging))


def test_a_stage_run_of_the_day_still_running_holds_the_day_back(
    deployments: dict[str, uuid.UUID],
) -> None:
    day = {"run_date": DAY.isoformat(), "run_id": "killed-run"}
    running = asyncio.run(_run(deployments["transform"], Running(), **day, staging=STAGING))
    # Not earlier writers of this day: another day, another staging, an ended run.
    asyncio.run(_run(deployments["extract"], Running(), **day, staging=STAGING + "-other"))
    asyncio.run(
        _run(deployments["extract"], Running(), run_date="1999-03-02", run_id="x", staging=STAGING)
    )
    asyncio.run(_run(deployments["extract"], Completed(), **day, staging=STAGING))

    with pytest.raises(InfrastructureError) as raised:
        stages.wait_for_earlier_stage_runs(_ctx(), wait_seconds=0)
    assert f"transform (flow run {running})" in str(raised.value)
    assert "extract" not in str(raised.value)

    asyncio.run(_set(running, Completed()))
    stages.wait_for_earlier_stage_runs(_ctx(), wait_seconds=0)  # nothing left: no wait


def test_a_run_started_before_its_jobs_deadline_ran_out_is_not_waited_for(
    deployments: dict[str, uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run left Running after its pod is gone (PrefectHQ/prefect#21022): once its Job's
    deadline (and the pod's grace period) has passed since it started, Kubernetes has ended it."""
    asyncio.run(_run(deployments["extract"], Running(), run_date=DAY.isoformat(), staging=STAGING))
    with pytest.raises(InfrastructureError):
        stages.wait_for_earlier_stage_runs(_ctx(), wait_seconds=0)
    monkeypatch.setattr(stages, "DEADLINE_GRACE_SECONDS", -3600.0)  # its deadline has passed
    stages.wait_for_earlier_stage_runs(_ctx(), wait_seconds=0)
