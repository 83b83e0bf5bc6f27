"""Landing and the downstream refresh, on the session's real Prefect server.

``tripflow land`` (a real subprocess) stages the raw day and emits ``tripflow.raw.landed``; the
event is read back from the server. A daily run given the landing's ``landed_run_id`` (what the
deployment trigger passes) starts from the landed raw day; if the raw day was replaced since, it
extracts again. The downstream refresh builds its rolling summary from published days only.
"""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from helpers import TLC_CSV, shared_folder, tripflow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter

from flows.daily import daily_trip_etl
from flows.downstream import downstream_refresh
from tasks.config import load_settings
from tasks.marts import MART
from tasks.staging import Staging
from tasks.transforms import region_window

DAY = date(2025, 11, 15)

pytestmark = pytest.mark.usefixtures("prefect_server")


def _events(api: str, name: str) -> list[dict[str, Any]]:
    body = {"filter": {"event": {"name": [name]}, "order": "DESC"}, "limit": 50}
    found = httpx.post(f"{api}/events/filter", json=body, timeout=30).json()["events"]
    return [e for e in found if e["payload"].get("landed_run_id")]


def _task_names(flow_run_id: str) -> set[str]:
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
    return {t.name.rsplit("-", 1)[0] for t in tasks}


def test_land_emits_the_event_and_the_run_starts_from_the_landed_day(
    workdir: Path, prefect_server: str
) -> None:
    staging = str(workdir / "staging")
    done = tripflow(
        "land",
        "--date",
        "2025-11-15",
        "--source",
        "sample",
        "--staging",
        staging,
        "--json",
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr
    event = json.loads(done.stdout)
    payload = event["payload"]
    landed = payload["landed_run_id"]
    assert event["event"] == "tripflow.raw.landed"
    assert event["resource"]["prefect.resource.id"] == "tripflow.source.sample"
    assert payload["run_date"] == "2025-11-15" and payload["rows"] == 10
    assert payload["staging"] == staging and payload["files"] >= 1 and payload["bytes"] > 0
    raw = Staging(staging).read("raw", DAY)
    assert raw.manifest["run_id"] == landed

    # The event reached the server (what the deployment trigger reacts to).
    deadline = time.monotonic() + 30
    while not any(
        e["payload"]["landed_run_id"] == landed
        for e in _events(prefect_server, "tripflow.raw.landed")
    ):
        assert time.monotonic() < deadline, "tripflow.raw.landed not on the server"
        time.sleep(0.5)

    # The run the trigger starts: no extract, the landed raw day as it was.
    report = daily_trip_etl(run_date=DAY, source="sample", staging=staging, landed_run_id=landed)
    assert report["status"] == "published"
    assert report["rows"] == {"extracted": 10, "quarantined": 0, "loaded": 10}
    names = _task_names(report["flow_run_id"])
    assert "extract-landed" in names and "extract" not in names
    assert Staging(staging).read("raw", DAY).manifest["run_id"] == landed


def _land(workdir: Path, staging: str) -> dict[str, Any]:
    """``tripflow land`` of the sample day, without emitting; the event it would emit."""
    done = tripflow(
        "land",
        "--date",
        "2025-11-15",
        "--source",
        "sample",
        "--staging",
        staging,
        "--no-emit",
        "--json",
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr
    event: dict[str, Any] = json.loads(done.stdout)
    return event


def test_a_replaced_landing_is_extracted_again(workdir: Path) -> None:
    staging = str(workdir / "staging")
    landed = _land(workdir, staging)["payload"]["landed_run_id"]
    _land(workdir, staging)  # a second landing replaces the raw day
    report = daily_trip_etl(run_date=DAY, source="sample", staging=staging, landed_run_id=landed)
    assert report["status"] == "published"
    names = _task_names(report["flow_run_id"])
    assert "extract" in names  # the first landing's raw day is gone: read the source again
    assert Staging(staging).read("raw", DAY).manifest["run_id"] == report["run_id"]


def test_a_landing_without_its_record_fails_naming_it(workdir: Path) -> None:
    from tasks.errors import InfrastructureError

    staging = str(workdir / "staging")
    with pytest.raises(InfrastructureError, match="landing land-missing of 2025-11-15"):
        daily_trip_etl(run_date=DAY, source="sample", staging=staging, landed_run_id="land-missing")


class InProcessDeployments:
    """A stand-in for ``run_deployment`` (named so): runs the stage deployment's flow in this
    process, as a subflow of the daily run, and records what was dispatched with which
    parameters. The real dispatch, on a worker, is in tests/ops/test_stage_pods.py."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, *, parameters: dict[str, Any], **_: Any) -> Any:
        from types import SimpleNamespace

        from flows import stages

        self.calls.append((name, parameters))
        [stage] = [s for s, d in stages.STAGE_DEPLOYMENTS.items() if d == name]
        flow = getattr(stages, f"{stage}_stage")
        state = flow(**parameters, return_state=True)
        # The stage's own (sub)flow run on the server: the dispatch reads its final state there.
        return SimpleNamespace(id=state.state_details.flow_run_id, state=state)

    def stages(self) -> list[str]:
        return [name.split("/")[1] for name, _ in self.calls]


@pytest.fixture
def shared() -> Any:
    """A folder the stage "pods" share (stage_deployments refuses one under /tmp)."""
    import shutil

    folder = shared_folder("landing")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def deployments(monkeypatch: pytest.MonkeyPatch) -> InProcessDeployments:
    import flows.stages

    stand_in = InProcessDeployments()
    monkeypatch.setattr(flows.stages, "run_deployment", stand_in)
    return stand_in


def test_per_stage_run_of_a_landed_day_dispatches_no_extract(
    workdir: Path, shared: Path, deployments: InProcessDeployments
) -> None:
    """The landed-event trigger with stage_deployments: the daily pod checks the landed raw day
    and starts at transform; the landing machine's source path reaches no stage (here it is gone
    by the time the day runs)."""
    import shutil

    landing = workdir / "landing"
    landing.mkdir()
    shutil.copy(TLC_CSV, landing / "trips.csv")
    staging = str(shared / "staging")
    done = tripflow(
        "land",
        "--date",
        "2019-01-01",
        "--source",
        f"file:{landing / 'trips.csv'}",
        "--format",
        "nyc-tlc-yellow",
        "--staging",
        staging,
        "--no-emit",
        "--json",
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr
    event = json.loads(done.stdout)
    landed = event["payload"]["landed_run_id"]
    shutil.rmtree(landing)  # the landing machine's files: not on any pod

    report = daily_trip_etl(
        run_date=date(2019, 1, 1),
        source=event["payload"]["source"],
        source_format="nyc-tlc-yellow",
        staging=staging,
        warehouse=f"duckdb:{shared / 'warehouse.duckdb'}",
        landed_run_id=landed,
        stage_deployments=True,
    )
    assert report["status"] == "published"
    assert deployments.stages() == ["transform", "load", "validate"]
    for _, parameters in deployments.calls:
        assert "source" not in parameters, parameters
    assert report["rows"]["extracted"] == event["payload"]["rows"]
    assert Staging(staging).read("raw", date(2019, 1, 1)).manifest["run_id"] == landed
    assert "extract-landed" in _task_names(report["flow_run_id"])


def test_per_stage_run_of_a_replaced_landing_extracts_again(
    workdir: Path, shared: Path, deployments: InProcessDeployments
) -> None:
    staging = str(shared / "staging")
    landed = _land(workdir, staging)["payload"]["landed_run_id"]
    _land(workdir, staging)  # a second landing replaces the raw day
    report = daily_trip_etl(
        run_date=DAY,
        source="sample",
        staging=staging,
        warehouse=f"duckdb:{shared / 'warehouse.duckdb'}",
        landed_run_id=landed,
        stage_deployments=True,
    )
    assert report["status"] == "published"
    assert deployments.stages() == ["extract", "transform", "load", "validate"]
    assert deployments.calls[0][1]["source"] == "sample"
    assert Staging(staging).read("raw", DAY).manifest["run_id"] == report["run_id"]


def test_region_window_sums_the_days_of_the_window() -> None:
    days = pl.LazyFrame(
        {
            "trip_date": [date(2025, 11, 1), date(2025, 11, 14), date(2025, 11, 15)] * 2,
            "region": ["a", "a", "a", "b", "b", "b"],
            "trip_count": [100, 2, 3, 7, 0, 1],
            "total_distance_km": [1.0, 10.0, 20.0, 5.0, 0.0, 3.0],
            "total_fare_usd": [9.0, 15.0, 30.0, 10.0, 0.0, 2.0],
            "avg_fare_per_km": [None] * 6,
        },
        schema_overrides={"total_fare_usd": pl.Decimal(18, 2)},
    )
    out = region_window(days, date(2025, 11, 15), 2).collect()
    assert out.select("region", "days_covered", "trip_count").to_dicts() == [
        {"region": "a", "days_covered": 2, "trip_count": 5},
        {"region": "b", "days_covered": 2, "trip_count": 1},
    ]
    a = out.row(0, named=True)
    assert a["avg_fare_per_km"] == 1.5 and a["window_start"] == date(2025, 11, 14)


def test_downstream_refresh_uses_published_days_only(workdir: Path) -> None:
    staging = str(workdir / "staging")
    warehouse = f"duckdb:{workdir / 'warehouse.duckdb'}"
    published = daily_trip_etl(run_date=DAY, source="sample", staging=staging, warehouse=warehouse)
    assert published["status"] == "published"
    result = downstream_refresh(staging=staging, warehouse=warehouse)
    assert result["days_used"] == ["2025-11-15"] and result["days_skipped"] == {}
    assert sum(r["trip_count"] for r in result["regions"]) == 10

    # A later run of the day that fails its checks re-stages region_daily but publishes nothing:
    # the refresh skips the day rather than show unpublished numbers.
    with pytest.raises(Exception, match="min_rows"):
        daily_trip_etl(
            run_date=DAY, source="sample", staging=staging, warehouse=warehouse, min_rows=1000
        )
    result = downstream_refresh(staging=staging, warehouse=warehouse)
    assert result["days_used"] == []
    assert "not the published run" in result["days_skipped"]["2025-11-15"]
    mart = Staging(load_settings({"staging": staging}).staging).read(MART, DAY)
    assert mart.scan({}).collect().height == 0
