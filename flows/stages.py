"""A stage as its own flow, and the dispatch that runs each as a deployment run in its own pod.

The flows: one per stage, so each stage can run as its own deployment in its own, right-sized pod.
Each calls the matching stage task of ``tasks.stage_tasks`` (the plain function of
``tasks.stages``, measured, its infrastructure errors retried inside the pod) with a
``RunContext``, and hands its output to the next stage through staging as a run record
(``<staging>/_runs/<run_id>/<stage>.json``; a failure as ``<stage>-error.json``). Stages hand
each other paths in staging, never frames, so ``staging`` must be a store every pod can reach
(S3 or GCS, or a folder on a volume every pod mounts; ``tasks.pod.require_shared`` refuses what
no pod could share). ``run_id`` names the pipeline run the stages belong to.

The dispatch (``run_stages_as_deployments``): ``daily-trip-etl`` on the Kubernetes pool. The daily
flow's run (a small pod) starts ``tripflow-extract/extract``, then transform, load and validate
with ``run_deployment`` — each a child flow run of the day, rendered by the worker into a Job with
that stage's own job variables (size, spot node pool, deadline) — and waits for each. A stage hands
its output to the next through staging (``tasks.staging`` run records), never through memory.
Publishing is one small warehouse transaction: it runs in the daily run's pod.

A stage run that *crashed* (its pod evicted, a spot node reclaimed, OOM-killed) is dispatched once
more: every stage is idempotent. A stage that *failed* already had its in-pod retries; its
recorded error (schema, checks, infrastructure) becomes the day's error.

A day that ``tripflow land`` staged already (``landed_run_id``, from the ``tripflow.raw.landed``
event) starts at transform: the daily run's own pod checks that the landed raw day is still the
one staged (``tasks.landing``) and dispatches no extract; if it was replaced since, the extract
deployment runs as usual. The transform of a landed day is given the accepted regions, not the
source: a landed source's path may exist only on the landing machine.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import date
from typing import Any, Final
from uuid import UUID

from prefect import flow, get_client, get_run_logger
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import MissingContextError, ObjectNotFound
from prefect.logging import get_logger
from prefect.states import Cancelling

from tasks import stage_tasks
from tasks.checks import CheckResult
from tasks.config import load_settings
from tasks.errors import ChecksFailed, InfrastructureError, TripflowError, error_from_dict
from tasks.locks import WAIT_SECONDS
from tasks.report import RunReport
from tasks.sources import make_source
from tasks.stage_tasks import NO_FLOW_RETRIES
from tasks.stages import ExtractOutput, RunContext, TransformOutput
from tasks.warehouses import LoadResult


def _context(run_date: date, run_id: str, **overrides: Any) -> RunContext:
    return RunContext.create(run_id, run_date, load_settings(overrides))


def _record_failure(ctx: RunContext, stage: str, exc: TripflowError) -> None:
    failure = {**exc.as_dict(), "failed": getattr(exc, "failed", None)}
    ctx.staging.put_record(ctx.run_id, f"{stage}-error", failure)


def _stage(ctx: RunContext, stage: str, run: Callable[[], tuple[Any, dict[str, Any]]]) -> Any:
    """Run the stage's task (its in-pod retries of infrastructure errors included); record its
    output and measure in staging for the next stage, or its failure for the daily run."""
    try:
        out, measure = run()
    except TripflowError as exc:
        _record_failure(ctx, stage, exc)
        raise
    output = asdict(out)
    ctx.staging.put_record(ctx.run_id, stage, {"output": output, "measure": measure})
    return output


@flow(name="tripflow-extract", **NO_FLOW_RETRIES)
def extract_stage(
    run_date: date,
    run_id: str,
    source: str = "synthetic",
    source_format: str = "trips",
    rows: int | None = None,
    staging: str | None = None,
) -> dict[str, Any]:
    """Read the day from the source into ``raw/``."""
    ctx = _context(
        run_date, run_id, source=source, format=source_format, rows=rows, staging=staging
    )
    return dict(_stage(ctx, "extract", lambda: stage_tasks.extract(ctx)))


@flow(name="tripflow-transform", **NO_FLOW_RETRIES)
def transform_stage(
    run_date: date,
    run_id: str,
    source: str | None = None,
    source_format: str = "trips",
    staging: str | None = None,
    regions: list[str] | None = None,
) -> dict[str, Any]:
    """``raw/`` to ``clean/``, ``quarantine/`` and ``region_daily/``.

    The transform reads the staged raw day; of the source it only needs the accepted regions. A
    landed day's source may exist only on the landing machine: the daily run then passes the
    accepted ``regions`` instead of the ``source``.
    """
    ctx = _context(
        run_date, run_id, source=source, format=source_format, staging=staging, regions=regions
    )
    return dict(_stage(ctx, "transform", lambda: stage_tasks.transform(ctx)))


@flow(name="tripflow-load", **NO_FLOW_RETRIES)
def load_stage(
    run_date: date, run_id: str, staging: str | None = None, warehouse: str | None = None
) -> dict[str, Any]:
    """Bulk-load the staged day into this run's own warehouse staging tables."""
    ctx = _context(run_date, run_id, staging=staging, warehouse=warehouse)
    return dict(_stage(ctx, "load", lambda: stage_tasks.load(ctx)))


@flow(name="tripflow-validate", **NO_FLOW_RETRIES)
def validate_stage(
    run_date: date,
    run_id: str,
    extracted: int,
    quarantined: int,
    loaded: dict[str, Any],
    staging: str | None = None,
    warehouse: str | None = None,
    min_rows: int | None = None,
) -> list[dict[str, Any]]:
    """Run the checks on this run's staging tables; fail if any check fails."""
    ctx = _context(run_date, run_id, staging=staging, warehouse=warehouse, min_rows=min_rows)
    try:
        checks, measure = stage_tasks.validate(ctx, extracted, quarantined, LoadResult(**loaded))
    except TripflowError as exc:
        _record_failure(ctx, "validate", exc)
        raise
    output = [c.as_dict() for c in checks]
    # Every check's result is recorded, failed or not: the day's report shows them all.
    ctx.staging.put_record(run_id, "validate", {"output": output, "measure": measure})
    failed = [c.name for c in checks if not c.passed]
    if failed:
        error = ChecksFailed(failed)
        _record_failure(ctx, "validate", error)
        raise error
    return output


#: The stage deployments of prefect.yaml (flow name / deployment name).
STAGE_DEPLOYMENTS: Final = {
    "extract": "tripflow-extract/extract",
    "transform": "tripflow-transform/transform",
    "load": "tripflow-load/load",
    "validate": "tripflow-validate/validate",
}
#: Dispatches of one stage when its pod crashes (evicted, spot reclaimed, OOM-killed).
CRASH_ATTEMPTS: Final = 2
#: Seconds between reads of a running stage's state.
POLL_SECONDS: Final = 2.0
#: How long a daily run that is ending (its pod terminated: SIGTERM) waits for the stage run it
#: started to end after cancelling it: within Kubernetes' default termination grace period (30 s).
CANCEL_WAIT_SECONDS: Final = 25.0


def _wait_for_stage(flow_run_id: UUID) -> FlowRun:
    """The stage's run once final. If this run ends first (its pod terminated, or cancelled), the
    stage run is set Cancelling and waited for a while before the day's lock is let go. Not a
    guarantee: Prefect 3.9.1's worker stops only runs that have not started, and a started stage
    ends on its own (its engine sees Cancelling when it next runs; a stalled one does not), so the
    next run of the day waits for it: ``wait_for_earlier_stage_runs``."""
    with get_client(sync_client=True) as client:
        try:
            while True:
                run = client.read_flow_run(flow_run_id)
                if run.state is not None and run.state.is_final():
                    return run
                time.sleep(POLL_SECONDS)
        except BaseException:
            _cancel_stage(client, flow_run_id)
            raise


def _cancel_stage(client: SyncPrefectClient, flow_run_id: UUID) -> None:
    deadline = time.monotonic() + CANCEL_WAIT_SECONDS
    with contextlib.suppress(Exception):  # the day's own error is the one to report
        run = client.read_flow_run(flow_run_id)
        if run.state is None or not run.state.is_final():
            client.set_flow_run_state(
                flow_run_id, Cancelling(message="its daily run ended while it ran")
            )
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return
            time.sleep(0.5)


#: Seconds after a stage run's Job deadline by which Kubernetes has ended its pod (the deadline
#: deletes it; the default termination grace period is 30 s).
DEADLINE_GRACE_SECONDS: Final = 60.0
_NOT_ENDED: Final = [
    StateType.SCHEDULED,
    StateType.PENDING,
    StateType.RUNNING,
    StateType.PAUSED,
    StateType.CANCELLING,
]


def _stage_deployments(client: SyncPrefectClient) -> dict[UUID, tuple[str, Any]]:
    """The deployed stage deployments: id -> (stage, its Job's deadline in seconds or None)."""
    deployments = {}
    for stage, name in STAGE_DEPLOYMENTS.items():
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:  # not deployed: no run of it
            continue
        deadline = (deployment.job_variables or {}).get("active_deadline_seconds")
        deployments[deployment.id] = (stage, deadline)
    return deployments


def _earlier_stage_runs(
    client: SyncPrefectClient, ctx: RunContext, deployments: dict[UUID, tuple[str, Any]]
) -> list[tuple[str, FlowRun]]:
    """Stage runs of this day on this staging that have not ended and may still have a pod:
    (stage, run). A run started longer ago than its deployment's Job deadline (plus the pod's
    grace period) has no pod any more, whatever its state says (PrefectHQ/prefect#21022)."""
    if not deployments:
        return []
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_NOT_ENDED))
        ),
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(deployments))),
    )
    now = time.time()
    found = []
    for run in runs:
        stage, deadline = deployments[run.deployment_id]  # type: ignore[index]
        params = run.parameters or {}
        if str(params.get("run_date")) != ctx.run_date.isoformat():
            continue
        if str(params.get("staging") or "").rstrip("/") != ctx.settings.staging.rstrip("/"):
            continue
        if (
            deadline is not None
            and run.start_time is not None
            and run.start_time.timestamp() + float(deadline) + DEADLINE_GRACE_SECONDS < now
        ):
            continue
        found.append((stage, run))
    return found


def wait_for_earlier_stage_runs(ctx: RunContext, wait_seconds: float = WAIT_SECONDS) -> None:
    """Before this run of the day dispatches any stage, wait until no earlier stage run of the day
    (on the same staging) can still be writing: one whose daily run was killed mid-stage runs on
    in its own pod (a cancel does not stop a started Kubernetes run), and the day's lock, held by
    the daily run, was let go when that run's pod ended. Never two writers on one day; a stage
    run that never ends is an error naming it once ``wait_seconds`` have passed."""
    try:
        logger: Any = get_run_logger()
    except MissingContextError:
        logger = get_logger(__name__)
    deadline = time.monotonic() + wait_seconds
    reported: set[UUID] = set()
    with get_client(sync_client=True) as client:
        deployments = _stage_deployments(client)  # once: they do not change while we wait
        while True:
            earlier = _earlier_stage_runs(client, ctx, deployments)
            if not earlier:
                return
            for stage, run in earlier:
                if run.id not in reported:
                    reported.add(run.id)
                    logger.warning(
                        "day %s: waiting for an earlier %s stage run (flow run %s, %s) to end "
                        "before writing its staging",
                        ctx.run_date,
                        stage,
                        run.id,
                        run.state.name if run.state else "no state",
                    )
            if time.monotonic() > deadline:
                runs = ", ".join(f"{stage} (flow run {run.id})" for stage, run in earlier)
                raise InfrastructureError(
                    f"day {ctx.run_date}: earlier stage runs still not ended after "
                    f"{wait_seconds:.0f}s: {runs}; end them (cancel or mark them Crashed) "
                    "once their pods are gone"
                )
            time.sleep(POLL_SECONDS)


def run_stage(ctx: RunContext, stage: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Run one stage's deployment as a child of this flow run; its recorded output."""
    name = STAGE_DEPLOYMENTS[stage]
    params = {"run_date": ctx.run_date.isoformat(), "run_id": ctx.run_id, **parameters}
    for attempt in range(1, CRASH_ATTEMPTS + 1):
        started = run_deployment(name, parameters=params, timeout=0, as_subflow=True)
        child = _wait_for_stage(started.id)  # type: ignore[union-attr]
        state = child.state
        if state is not None and state.is_completed():
            return ctx.staging.get_record(ctx.run_id, stage)
        if state is not None and state.is_crashed() and attempt < CRASH_ATTEMPTS:
            continue
        try:
            failure = ctx.staging.get_record(ctx.run_id, f"{stage}-error")
        except InfrastructureError:
            failure = {
                "kind": "infrastructure",
                "message": f"stage {stage} ({name}, flow run {child.id}) ended "
                f"{state.name if state else 'without a state'}: "
                f"{state.message if state else ''}",
            }
        raise error_from_dict(failure)
    raise AssertionError("unreachable")


def run_stages_as_deployments(
    ctx: RunContext, report: RunReport, params: dict[str, Any], landed_run_id: str | None = None
) -> None:
    """extract (unless the day landed), transform, load and validate as deployment runs; fills
    ``report`` as they end."""
    source = {k: params[k] for k in ("source", "source_format")}
    staging = {"staging": ctx.settings.staging}
    warehouse = {"warehouse": ctx.settings.warehouse}

    wait_for_earlier_stage_runs(ctx)
    landed = stage_tasks.landed_extract(ctx, landed_run_id) if landed_run_id else None
    if landed is not None:
        report.extracted, measure = landed
        report.add_stage(measure)
        regions = make_source(ctx.settings).region_set
        transform_source = {
            "source_format": params["source_format"],
            "regions": sorted(regions) if regions is not None else [],
        }
    else:
        done = run_stage(ctx, "extract", {**source, **staging, "rows": ctx.settings.rows})
        report.extracted = ExtractOutput(**done["output"])
        report.add_stage(done["measure"])
        transform_source = source

    done = run_stage(ctx, "transform", {**transform_source, **staging})
    report.transformed = TransformOutput(**done["output"])
    report.add_stage(done["measure"])
    report.read_regions()

    done = run_stage(ctx, "load", {**staging, **warehouse})
    report.loaded = LoadResult(**done["output"])
    report.add_stage(done["measure"])

    try:
        done = run_stage(
            ctx,
            "validate",
            {
                **staging,
                **warehouse,
                "min_rows": ctx.settings.min_rows,
                "extracted": report.rows["extracted"],
                "quarantined": report.rows["quarantined"],
                "loaded": asdict(report.loaded),
            },
        )
    finally:
        # A failed check still recorded every check's result: the report shows them all.
        checked: dict[str, Any] | None
        try:
            checked = ctx.staging.get_record(ctx.run_id, "validate")
        except InfrastructureError:
            checked = None
        if checked is not None:
            report.checks = [CheckResult(**c) for c in checked["output"]]
            report.add_stage(checked["measure"])
