"""A transient infrastructure error, live: S3 refusing for a few seconds while the transform pod
works. It is retried inside the stage (botocore's retries under the stage task's retries of
``InfrastructureError``), the stage is not re-dispatched, and the day publishes once.

Test-only override (stated here, in the style of overrides.py): the ``tripflow-transform/
transform`` deployment's ``TRIPFLOW_STAGING_ENDPOINT_URL`` (itself an override: the local S3
stand-in) points at a TCP proxy in front of the same moto server (faults_support.RefusingProxy),
restored after. The proxy resets every connection from the first one the transform pod opens
until ``REFUSE_S`` seconds later, then forwards again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cluster.conftest import Deployed, Recorder, child_runs, run_deployment_cli, wait_final
from cluster.faults_support import (
    RefusingProxy,
    job_variables,
    published_runs,
    shared_warehouse_fixture,  # noqa: F401 - a fixture
    stages_of,
    state_names,
    task_state_names,
)

pytestmark = pytest.mark.timeout(1800)

DAY = "2025-11-06"
#: How long S3 refuses every connection, counted from the transform pod's first one.
REFUSE_S = 15.0


def test_s3_refusing_for_seconds_is_retried_inside_the_stage_and_the_day_publishes_once(
    deployed: Deployed,
    shared_warehouse: Path,
) -> None:
    proxy = RefusingProxy(deployed.s3.endpoint)
    transform = deployed.deployment("transform")["work_pool"]["job_variables"]
    env = {**transform["env"], "TRIPFLOW_STAGING_ENDPOINT_URL": proxy.endpoint}
    try:
        with (
            Recorder(deployed.admin) as seen,
            job_variables("tripflow-transform/transform", env=env),
        ):
            proxy.refuse_from_first(REFUSE_S)  # only the transform pod talks through the proxy
            flow_run_id = run_deployment_cli(
                "daily-trip-etl/daily-trip-etl",
                "--param",
                f"run_date={DAY}",
                "--param",
                "rows=20000",
            )
            daily = deployed.deployment("daily-trip-etl")["work_pool"]["job_variables"]
            final = wait_final(deployed, flow_run_id, daily["active_deadline_seconds"] + 120)
            assert final.state.name == "Completed", deployed.worker_log.read_text()[-3000:]
    finally:
        proxy.close()

    # S3 did refuse the stage, for REFUSE_S seconds, and then served it again.
    assert proxy.refused >= 1 and proxy.first_refused is not None, "the stage never met the fault"
    assert proxy.forwarded >= 1, "the stage never reached S3 after the fault"
    children = child_runs(flow_run_id)
    stages = stages_of(children)
    # Retried inside the stage: one transform run, one transform pod, never crashed or re-run.
    assert stages == ["extract", "transform", "load", "validate"], stages
    [transform_run] = [c for c, s in zip(children, stages, strict=True) if s == "transform"]
    assert len(seen.of_flow_run("Pod", transform_run.id)) == 1
    history = state_names(transform_run.id)
    assert "Crashed" not in history and "Failed" not in history, history
    assert history[-1] == "Completed", history
    env_seen = {
        e["name"]: e.get("value")
        for e in seen.of_flow_run("Pod", transform_run.id)[0]["spec"]["containers"][0]["env"]
    }
    assert env_seen["TRIPFLOW_STAGING_ENDPOINT_URL"] == proxy.endpoint
    print(
        f"S3 refused {proxy.refused} connections over {REFUSE_S:.0f} s; transform's task states: "
        f"{task_state_names(transform_run.id)}"
    )
    published = published_runs(shared_warehouse, DAY)
    assert published == [str(flow_run_id)], published
