"""prefect.yaml: real entry points, valid parameters and job variables, schedules and triggers.

Everything is checked with Prefect's own models and validators (the ones ``prefect deploy`` and
the server use); nothing needs a server. The per-stage flows are also run on the sample day, one
after the other, handing each other staging paths, to prove they fit together.
"""

from __future__ import annotations

import inspect
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s.k8s_support import (
    MANIFEST_VARIABLES,
    ROOT,
    automations_of,
    deployments_by_name,
    flow_name_of,
    load_template,
)

#: job variables every deployment spells out in full (a YAML merge would be shallow).
FULL_JOB_VARIABLES = MANIFEST_VARIABLES | {"image_pull_policy", "env", "pod_watch_timeout_seconds"}


def _flow(entrypoint: str) -> Any:
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(ROOT / entrypoint))


def _parameter_schema(flow: Any) -> dict[str, Any]:
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(flow.fn).model_dump_for_openapi()


def _validate_parameters(flow: Any, parameters: dict[str, Any], *, partial: bool) -> None:
    from prefect.utilities.schema_tools.validation import validate

    validate(parameters, _parameter_schema(flow), raise_on_error=True, ignore_required=partial)


def test_entry_points_are_real_flows_with_the_expected_names() -> None:
    names = {
        "daily-trip-etl": ("flows/daily.py:daily_trip_etl", "daily-trip-etl"),
        "backfill": ("flows/backfill.py:backfill", "backfill"),
        "extract": ("flows/stages.py:extract_stage", "tripflow-extract"),
        "transform": ("flows/stages.py:transform_stage", "tripflow-transform"),
        "load": ("flows/stages.py:load_stage", "tripflow-load"),
        "validate": ("flows/stages.py:validate_stage", "tripflow-validate"),
        "region-30d": ("flows/downstream.py:downstream_refresh", "downstream-refresh"),
        "backfill-day": ("flows/daily.py:daily_trip_etl", "daily-trip-etl"),
    }
    deployments = deployments_by_name()
    assert set(deployments) == set(names)
    for name, (entrypoint, flow_name) in names.items():
        assert deployments[name]["entrypoint"] == entrypoint
        assert _flow(entrypoint).name == flow_name


@pytest.mark.parametrize("name", sorted(deployments_by_name()))
def test_parameters_and_job_variables_are_valid(name: str) -> None:
    from prefect.utilities.schema_tools.validation import validate

    deployment = deployments_by_name()[name]
    flow = _flow(deployment["entrypoint"])
    _validate_parameters(flow, deployment.get("parameters") or {}, partial=True)

    pool = deployment["work_pool"]
    assert pool["name"] == "tripflow-k8s"
    variables = pool["job_variables"]
    assert set(variables) >= FULL_JOB_VARIABLES, FULL_JOB_VARIABLES - set(variables)
    # The server validates a deployment's job variables against the pool's schema like this.
    validate(variables, load_template()["variables"], raise_on_error=True, ignore_required=True)
    assert set(variables) <= set(load_template()["variables"]["properties"])
    for var in variables["env"]:
        assert not any(w in var for w in ("PII_KEY", "PASSWORD", "SECRET", "TOKEN")), var
        assert var != "PREFECT_API_KEY", var


def test_daily_deployment_schedule_retries_and_limits() -> None:
    daily = deployments_by_name()["daily-trip-etl"]
    assert daily["schedules"] == [{"cron": "0 6 * * *", "timezone": "UTC", "active": True}]
    # run_date defaults to yesterday in the flow; each stage runs as its own deployment's run.
    assert daily["parameters"] == {"stage_deployments": True}
    assert inspect.signature(_flow(daily["entrypoint"]).fn).parameters["run_date"].default is None
    assert {"tripflow", "production"} <= set(daily["tags"])
    assert daily["work_pool"]["job_variables"]["active_deadline_seconds"] > 0
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    ConcurrencyLimitConfig.model_validate(daily["concurrency_limit"])


def test_no_flow_retries_even_under_a_cluster_wide_default() -> None:
    """Every flow of every deployment sets retries=0: a PREFECT_FLOWS_DEFAULT_RETRIES set on the
    cluster (the env var Prefect reads for flows that set none) cannot re-run a failed check."""
    import json
    import os
    import subprocess
    import sys

    entrypoints = sorted({d["entrypoint"] for d in deployments_by_name().values()})
    code = (
        "import json, sys\n"
        "from prefect.flows import load_flow_from_entrypoint\n"
        "out = {}\n"
        "for e in sys.argv[1:]:\n"
        "    f = load_flow_from_entrypoint(e)\n"
        "    out[e] = [f.retries, f.retry_delay_seconds]\n"
        "print(json.dumps(out))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *entrypoints],
        cwd=ROOT,
        env={
            **os.environ,
            "PREFECT_FLOWS_DEFAULT_RETRIES": "2",
            "PREFECT_FLOWS_DEFAULT_RETRY_DELAY_SECONDS": "300",
        },
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    found = json.loads(out.strip().splitlines()[-1])
    assert set(found) == set(entrypoints)
    assert {e: r for e, (r, _) in found.items() if r != 0} == {}


def test_backfill_runs_under_a_concurrency_limit() -> None:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    backfill = deployments_by_name()["backfill"]
    limit = ConcurrencyLimitConfig.model_validate(backfill["concurrency_limit"])
    assert limit.limit == 1 and limit.collision_strategy.value == "ENQUEUE"
    jv = backfill["work_pool"]["job_variables"]
    assert limit.grace_period_seconds is not None
    assert limit.grace_period_seconds >= jv["pod_watch_timeout_seconds"]
    assert backfill["parameters"]["concurrency"] >= 1
    # Each day is a run of backfill-day (its own pods), capped by that deployment's own limit.
    flow, name = backfill["parameters"]["day_deployment"].split("/")
    day = deployments_by_name()[name]
    assert flow_name_of(day["entrypoint"]) == flow == "daily-trip-etl"
    day_limit = ConcurrencyLimitConfig.model_validate(day["concurrency_limit"])
    assert day_limit.limit >= backfill["parameters"]["concurrency"]
    assert day["parameters"] == {"stage_deployments": True} and not day.get("schedules")


def _event(name: str, resource: dict[str, str], payload: dict[str, Any]) -> Any:
    from prefect.server.events.schemas.events import ReceivedEvent

    return ReceivedEvent(
        occurred=datetime(2025, 11, 16, 5, 0, tzinfo=UTC),
        event=name,
        resource=resource,
        payload=payload,
        id=uuid.UUID(int=7),
    )


def test_raw_landed_trigger_runs_the_landed_day() -> None:
    """The tripflow.raw.landed trigger matches the documented event and turns its payload into
    valid daily-trip-etl parameters (rendered with the server's own template engine)."""
    from prefect.server.utilities.user_templates import render_user_template_sync

    daily = deployments_by_name()["daily-trip-etl"]
    [automation] = automations_of(daily)
    trigger = automation["trigger"]
    assert trigger["expect"] == ["tripflow.raw.landed"]
    assert trigger["posture"] == "Reactive" and trigger["threshold"] == 1

    # The event exactly as deployments/README.md documents it.
    event = _event(
        "tripflow.raw.landed",
        {"prefect.resource.id": "tripflow.source.nyc-tlc", "prefect.resource.name": "nyc-tlc"},
        {
            "run_date": "2025-11-15",
            "source": "file:/data/landing/2025-11-15/*.parquet",
            "format": "nyc-tlc-yellow",
            "files": 3,
            "bytes": 123456,
        },
    )
    [pattern] = trigger["match"].values()
    assert event.resource.id.startswith(pattern.rstrip("*"))
    [action] = automation["actions"]
    assert action["type"] == "run-deployment"
    params = {
        k: render_user_template_sync(v, {"event": event}) for k, v in action["parameters"].items()
    }
    assert params == {
        "run_date": "2025-11-15",
        "source": "file:/data/landing/2025-11-15/*.parquet",
        "source_format": "nyc-tlc-yellow",
        "staging": "",  # not given by this emitter: the flow's configured staging
        "landed_run_id": "",  # not landed by `tripflow land`: the flow extracts
    }
    _validate_parameters(_flow(daily["entrypoint"]), params, partial=True)

    # The event `tripflow land` emits: the run starts from the landed raw day.
    event = _event(
        "tripflow.raw.landed",
        {"prefect.resource.id": "tripflow.source.file", "prefect.resource.name": "file"},
        {
            "run_date": "2025-11-15",
            "source": "file:/landing/trips.csv",
            "format": "trips",
            "staging": "s3://tripflow-staging/trips",
            "landed_run_id": "land-1234",
            "rows": 10,
            "files": 1,
            "bytes": 2048,
        },
    )
    params = {
        k: render_user_template_sync(v, {"event": event}) for k, v in action["parameters"].items()
    }
    assert params["staging"] == "s3://tripflow-staging/trips"
    assert params["landed_run_id"] == "land-1234"
    _validate_parameters(_flow(daily["entrypoint"]), params, partial=True)


@pytest.mark.parametrize("where", ["prefect.yaml", "trigger file"])
def test_downstream_refresh_trigger_fires_on_daily_completion(where: str) -> None:
    from prefect.cli.deploy._triggers import _gather_deployment_trigger_definitions

    path = ROOT / "deployments" / "downstream-refresh.trigger.yaml"
    if where == "prefect.yaml":
        [automation] = automations_of(deployments_by_name()["region-30d"])
        assert automation["actions"][0]["parameters"] == {
            "triggered_by": "{{ event.resource.name }}"
        }
    else:
        specs = _gather_deployment_trigger_definitions([str(path)], [])
        [automation] = automations_of({"name": "downstream-refresh", "triggers": specs})
    trigger = automation["trigger"]
    assert trigger["expect"] == ["prefect.flow-run.Completed"]
    assert trigger["match"] == {"prefect.resource.id": "prefect.flow-run.*"}
    assert trigger["match_related"] == {
        "prefect.resource.role": "deployment",
        "prefect.resource.name": "daily-trip-etl",
    }
    assert yaml.safe_load(path.read_text())["triggers"][0]["enabled"] is True


@pytest.mark.usefixtures("prefect_server")  # each stage flow runs its stage as a Prefect task
def test_stage_flows_hand_each_other_staging_paths(workdir: Path) -> None:
    """extract -> transform -> load -> validate, each called as its own flow would run in its
    own pod (here: the flow functions, in one process), on the seed's sample day."""
    from flows import stages as stage_flows

    day = date(2025, 11, 15)
    common = {"staging": str(workdir / "staging")}
    warehouse = f"duckdb:{workdir / 'warehouse.duckdb'}"
    run_id = "stage-test-run"
    extracted = stage_flows.extract_stage.fn(day, run_id, source="sample", **common)
    assert extracted["rows"] == 10 and extracted["raw"].startswith(common["staging"])
    transformed = stage_flows.transform_stage.fn(day, run_id, source="sample", **common)
    assert transformed["rows_clean"] == 10
    loaded = stage_flows.load_stage.fn(day, run_id, warehouse=warehouse, **common)
    assert loaded["rows"] == 10
    checks = stage_flows.validate_stage.fn(
        day,
        run_id,
        extracted["rows"],
        transformed["rows_quarantined"],
        loaded,
        warehouse=warehouse,
        **common,
    )
    assert checks and all(c["passed"] for c in checks)
