"""The stages as Prefect tasks: thin wrappers over the plain stage functions in ``tasks.stages``.

Each stage task retries twice with backoff, but only on ``InfrastructureError`` (a schema error
or a failed check will not fix itself), has a timeout, and never caches: every stage has side
effects, and Prefect 3 would otherwise skip a re-run of the same inputs. The flows that run them
are ``flows.daily`` (all stages in one process) and ``flows.stages`` (one flow per stage, each in
its own pod); what a run shows in the UI is ``tasks.artifacts``.
"""

from __future__ import annotations

from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun

from tasks import landing, stages
from tasks.checks import CheckResult
from tasks.config import retry_delays
from tasks.errors import InfrastructureError, input_withheld
from tasks.metrics import measure
from tasks.stages import ExtractOutput, RunContext, TransformOutput
from tasks.warehouses import LedgerRow, LoadResult

RETRY_DELAYS = retry_delays()


def transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only what may succeed next time: an unreachable source, store or warehouse."""
    try:
        state.result()
    except InfrastructureError:
        return True
    except Exception:
        return False
    return False


#: Every flow of ours sets these, whatever a cluster-wide ``PREFECT_FLOWS_DEFAULT_RETRIES`` says:
#: infrastructure errors are retried inside a stage (``STAGE_TASK``), a crashed stage pod is
#: dispatched again (``flows.stages``), and a failed check or a schema error fails the day at
#: once — never after a flow-level retry delay.
NO_FLOW_RETRIES: dict[str, Any] = {"retries": 0, "retry_delay_seconds": 0}

STAGE_TASK: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": RETRY_DELAYS,
    "retry_condition_fn": transient,
    "cache_policy": NO_CACHE,
}


@task(name="extract", timeout_seconds=3 * 3600, **STAGE_TASK)
def extract(
    ctx: RunContext, transform_in_pass: bool = False
) -> tuple[ExtractOutput, dict[str, Any]]:
    with measure("extract") as m, input_withheld("extract"):
        out = stages.extract(ctx, transform_in_pass=transform_in_pass)
    return out, m.as_dict()


@task(name="extract-landed", timeout_seconds=600, **STAGE_TASK)
def landed_extract(
    ctx: RunContext, landed_run_id: str
) -> tuple[ExtractOutput, dict[str, Any]] | None:
    """The raw day ``tripflow land`` staged (None if it was replaced since: extract again)."""
    with measure("extract") as m, input_withheld("extract"):
        out = landing.landed_extract(ctx, landed_run_id)
    return None if out is None else (out, m.as_dict())


@task(name="transform", timeout_seconds=3 * 3600, **STAGE_TASK)
def transform(ctx: RunContext) -> tuple[TransformOutput, dict[str, Any]]:
    with measure("transform") as m, input_withheld("transform"):
        out = stages.transform(ctx)
    return out, m.as_dict()


@task(name="load", timeout_seconds=2 * 3600, **STAGE_TASK)
def load(ctx: RunContext) -> tuple[LoadResult, dict[str, Any]]:
    with measure("load") as m, input_withheld("load"):
        out = stages.load(ctx, m.warehouse)
    return out, m.as_dict()


@task(name="validate", timeout_seconds=3600, **STAGE_TASK)
def validate(
    ctx: RunContext, extracted: int, quarantined: int, loaded: LoadResult
) -> tuple[list[CheckResult], dict[str, Any]]:
    with measure("validate") as m, input_withheld("validate"):
        out = stages.validate(ctx, extracted, quarantined, loaded, m.warehouse)
    return out, m.as_dict()


#: Publishing is one warehouse transaction in the daily run's pod; its timeout is part of that
#: pod's deadline (tests/k8s/test_deadlines.py).
@task(name="publish", timeout_seconds=1800, **STAGE_TASK)
def publish(ctx: RunContext, loaded: LoadResult, ledger: LedgerRow) -> tuple[int, dict[str, Any]]:
    with measure("publish") as m, input_withheld("publish"):
        out = stages.publish(ctx, loaded, ledger, m.warehouse)
    return out, m.as_dict()
