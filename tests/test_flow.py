"""The Prefect flow against a real Prefect server: states, names, artifacts, retry policy."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from uuid import UUID

import pytest
from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
)
from prefect.states import Completed, Failed

from flows.cli import RUN_TAGS
from flows.daily import daily_trip_etl
from tasks.errors import ChecksFailed, InfrastructureError, SchemaError
from tasks.stage_tasks import transient

pytestmark = pytest.mark.usefixtures("prefect_server")

ARTIFACT_KEYS = (
    "regional-summary",
    "quality-report",
    "run-ledger",
    "cost-report",
    "run-history-chart",
)


def _artifacts(flow_run_id: str) -> dict[str, object]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=list(ARTIFACT_KEYS)),
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(flow_run_id)]),
            ),
        )
    return {a.key: a for a in found if str(a.flow_run_id) == flow_run_id}


def test_flow_run_completes_with_its_name_and_artifacts(workdir: Path) -> None:
    report = daily_trip_etl(run_date=date(2025, 11, 15), source="sample")
    assert report["status"] == "published"
    run_id = report["flow_run_id"]
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run_id]}))
    assert flow_run.name == "daily-trip-etl/2025-11-15"
    assert flow_run.state is not None and flow_run.state.is_completed()
    assert {t.name.rsplit("-", 1)[0] for t in tasks} >= {
        "extract",
        "transform",
        "load",
        "validate",
        "publish",
    }
    artifacts = _artifacts(run_id)
    assert set(artifacts) == set(ARTIFACT_KEYS)
    ledger = str(artifacts["run-ledger"].data)
    assert "fare_usd_sum=211.40" in ledger and "| raw | 10 |" in ledger
    cost = str(artifacts["cost-report"].data)
    assert "estimated total" in cost and "## Right-sizing" in cost
    chart = str(artifacts["run-history-chart"].data)
    assert "(file://" in chart and chart.endswith("tripflow-report.svg)")
    summary = str(artifacts["regional-summary"].data)
    assert "us-east" in summary and "51.4" in summary
    quality = str(artifacts["quality-report"].data)
    assert "min_rows" in quality and "volume_7d" in quality


def test_the_callers_tags_tag_the_flow_run_and_no_task_run(workdir: Path) -> None:
    """``tripflow run`` tags its flow run (RUN_TAGS); a tagged task run would have Prefect lease
    a tag concurrency slot through the API around every stage (~4 s of an 8M day)."""
    with tags(*RUN_TAGS):
        report = daily_trip_etl(run_date=date(2025, 11, 15), source="sample")
    run_id = report["flow_run_id"]
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run_id]}))
    assert set(RUN_TAGS) <= set(flow_run.tags)
    assert {t.name.rsplit("-", 1)[0] for t in tasks} >= {"extract", "transform", "publish"}
    assert {t.name: t.tags for t in tasks if t.tags} == {}


def test_failed_check_fails_the_flow_run(workdir: Path) -> None:
    with pytest.raises(ChecksFailed) as err:
        daily_trip_etl(run_date=date(2025, 11, 15), source="sample", min_rows=1000)
    report = err.value.tripflow_report  # type: ignore[attr-defined]
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(report["flow_run_id"])
    assert flow_run.state is not None and flow_run.state.is_failed()
    assert "quality-report" in _artifacts(report["flow_run_id"])


@pytest.mark.parametrize(
    ("exc", "retried"),
    [
        (InfrastructureError("warehouse down"), True),
        (SchemaError("bad column", file="f.csv", column="x"), False),
        (ChecksFailed(["min_rows"]), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_infrastructure_failures_are_retried(exc: Exception, retried: bool) -> None:
    assert transient(None, None, Failed(data=exc)) is retried  # type: ignore[arg-type]
    assert transient(None, None, Completed()) is False  # type: ignore[arg-type]
