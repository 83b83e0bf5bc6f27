"""``daily-trip-etl`` on the Kubernetes pool: each stage as its own deployment run, in its own pod.

The daily flow's run (a small pod) starts ``tripflow-extract/extract``, then transform, load and
validate with ``run_deployment`` — each a child flow run of the day, rendered by the worker into a
Job with that stage's own job variables (size, spot node pool, deadline) — and waits for each. A
stage hands its output to the next through staging (``tasks.staging`` run records), never through
memory. Publishing is one small warehouse transaction: it runs here, in the daily run's pod.

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

from dataclasses import asdict
from typing import Any, Final

from prefect.deployments import run_deployment

from tasks import steps
from tasks.checks import CheckResult
from tasks.errors import InfrastructureError, error_from_dict
from tasks.report import RunReport
from tasks.sources import make_source
from tasks.stages import ExtractOutput, RunContext, TransformOutput
from tasks.warehouses import LoadResult

#: The stage deployments of prefect.yaml (flow name / deployment name).
STAGE_DEPLOYMENTS: Final = {
    "extract": "tripflow-extract/extract",
    "transform": "tripflow-transform/transform",
    "load": "tripflow-load/load",
    "validate": "tripflow-validate/validate",
}
#: Dispatches of one stage when its pod crashes (evicted, spot reclaimed, OOM-killed).
CRASH_ATTEMPTS: Final = 2


def run_stage(ctx: RunContext, stage: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Run one stage's deployment as a child of this flow run; its recorded output."""
    name = STAGE_DEPLOYMENTS[stage]
    params = {"run_date": ctx.run_date.isoformat(), "run_id": ctx.run_id, **parameters}
    for attempt in range(1, CRASH_ATTEMPTS + 1):
        child = run_deployment(name, parameters=params, timeout=None, as_subflow=True)
        state = child.state  # type: ignore[union-attr]
        if state is not None and state.is_completed():
            return ctx.staging.get_record(ctx.run_id, stage)
        if state is not None and state.is_crashed() and attempt < CRASH_ATTEMPTS:
            continue
        try:
            failure = ctx.staging.get_record(ctx.run_id, f"{stage}-error")
        except InfrastructureError:
            failure = {
                "kind": "infrastructure",
                "message": f"stage {stage} ({name}, flow run {child.id}) ended "  # type: ignore[union-attr]
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

    landed = steps.landed_extract(ctx, landed_run_id) if landed_run_id else None
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
