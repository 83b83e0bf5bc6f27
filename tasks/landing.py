"""Landing: stage a day's raw files ahead of the pipeline and announce it with an event.

``tripflow land --date D --source SPEC`` runs the extract stage alone (a run id of its own,
``land-<uuid>``), records its output in staging, then emits ``tripflow.raw.landed``. The
``daily-trip-etl`` deployment's trigger runs the day with ``landed_run_id`` from the event, and
that run starts from the landed raw day instead of extracting again. The event comes from the
landing command, never from a ``daily-trip-etl`` run, so a run cannot re-trigger itself.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Final

from tasks import stages
from tasks.errors import InfrastructureError
from tasks.stages import ExtractOutput, RunContext

EVENT: Final = "tripflow.raw.landed"
#: The resource every landing event is about: ``tripflow.source.<name>`` (the trigger matches
#: ``tripflow.source.*``).
RESOURCE_PREFIX: Final = "tripflow.source."


def source_name(source: str) -> str:
    """``file:/landing/x.csv`` -> ``file``; ``kafka:trips`` -> ``kafka-trips``."""
    kind, _, rest = source.partition(":")
    if kind in ("kafka", "postgres") and rest:
        return f"{kind}-{rest}".replace(".", "-")
    return kind


def landed_event(ctx: RunContext, out: ExtractOutput) -> dict[str, Any]:
    """The event's resource and payload (no secret: the source spec is already redacted)."""
    name = source_name(ctx.settings.source)
    files = ctx.staging.read("raw", ctx.run_date).manifest["files"]
    return {
        "event": EVENT,
        "resource": {
            "prefect.resource.id": RESOURCE_PREFIX + name,
            "prefect.resource.name": name,
        },
        "payload": {
            "run_date": ctx.run_date.isoformat(),
            "source": ctx.settings.source,
            "format": ctx.settings.format,
            "staging": ctx.settings.staging,
            "landed_run_id": ctx.run_id,
            "rows": out.rows,
            "files": len(files),
            "bytes": sum(int(f["bytes"]) for f in files),
        },
    }


def land(ctx: RunContext) -> tuple[ExtractOutput, dict[str, Any]]:
    """Extract the day into ``raw/`` and record the output; returns it and the event to emit."""
    out = stages.extract(ctx)
    ctx.staging.put_record(ctx.run_id, "extract", {"output": asdict(out)})
    return out, landed_event(ctx, out)


def landed_extract(ctx: RunContext, landed_run_id: str) -> ExtractOutput | None:
    """The landed extract's output, if the day's raw folder is still the one it landed.

    None when the raw day was replaced since (another extract or landing ran): the caller then
    extracts again. A landing whose record is missing is an error naming it.
    """
    try:
        record = ctx.staging.get_record(landed_run_id, "extract")
    except InfrastructureError as exc:
        raise InfrastructureError(
            f"landing {landed_run_id} of {ctx.run_date}: no record in {ctx.settings.staging} "
            f"({exc.message})"
        ) from exc
    raw = ctx.staging.read("raw", ctx.run_date)
    if raw.manifest.get("run_id") != landed_run_id:
        return None
    return ExtractOutput(**record["output"])
