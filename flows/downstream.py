"""``downstream-refresh``: rebuild the dashboards' rolling regional summary after a day publishes.

Its deployment (prefect.yaml) has a trigger on ``prefect.flow-run.Completed`` of any run of the
``daily-trip-etl`` deployment: Completed means the day was published (a failed check fails the
run), so the refresh never sees a partial day. The same trigger, for other teams' deployments, is
``deployments/downstream-refresh.trigger.yaml``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from tasks.config import load_settings
from tasks.marts import refresh_region_window
from tasks.stage_tasks import NO_FLOW_RETRIES


@flow(name="downstream-refresh", log_prints=True, **NO_FLOW_RETRIES)
def downstream_refresh(
    days: int = 30,
    staging: str | None = None,
    warehouse: str | None = None,
    triggered_by: str | None = None,
) -> dict[str, Any]:
    """Rebuild ``region_30d`` (the last ``days`` published days, per region) in staging.

    Args:
        days: How many days the rolling window covers, ending at the latest published day.
        staging: Where the published days' region_daily was staged (default from configuration).
        warehouse: The warehouse whose ledger says which runs were published.
        triggered_by: The flow run that triggered this refresh (from the event), for the record.
    """
    settings = load_settings({"staging": staging or None, "warehouse": warehouse or None})
    result = refresh_region_window(settings, str(flow_run.id or "local"), days)
    logger = get_run_logger()
    logger.info(
        "region_30d ending %s from %d published day(s)%s",
        result.end,
        len(result.days_used),
        f" (triggered by {triggered_by})" if triggered_by else "",
    )
    for day, why in result.days_skipped.items():
        logger.warning("skipped %s: %s", day, why)
    if result.regions:
        create_table_artifact(
            key="region-30d",
            table=[{k: str(v) for k, v in r.items()} for r in result.regions],
            description=f"Regions over the {days} days ending {result.end}",
        )
    return asdict(result)
