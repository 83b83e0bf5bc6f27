"""Deadlines, dispatch attempts and the "Running longer than" alert fit together.

Every figure is read where it is defined, never copied: the Jobs' ``active_deadline_seconds`` and
``pod_watch_timeout_seconds`` from prefect.yaml, the dispatch attempts of a crashed stage from
``flows.stages``, the publish and landed-extract task timeouts from ``tasks.stage_tasks``, the
worker's polling interval from work_pools/worker-values.yaml (or Prefect's default), the alert's
window and watched flows from ``flows.automations`` and the server's proactive evaluation period
from Prefect's settings. deployments/AUTOMATIONS.md must say the same.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
import yaml
from k8s.k8s_support import ROOT, WORKER_VALUES, deployments_by_name, flow_name_of
from prefect.events.schemas.automations import EventTrigger

from flows import automations
from flows.stages import CRASH_ATTEMPTS, STAGE_DEPLOYMENTS
from tasks import stage_tasks

_BLOCK = uuid.UUID(int=1)  # any notification block id: only the triggers are read

#: The deployments that run daily-trip-etl with its stages as their own deployments' runs.
ORCHESTRATORS = [
    name
    for name, d in deployments_by_name().items()
    if (d.get("parameters") or {}).get("stage_deployments")
]


def _job_variables(name: str) -> dict[str, Any]:
    return dict(deployments_by_name()[name]["work_pool"]["job_variables"])


def _stage_deployments() -> dict[str, str]:
    """stage -> its deployment's name in prefect.yaml, checked against the flow it runs."""
    out = {}
    for stage, full in STAGE_DEPLOYMENTS.items():
        flow, name = full.split("/")
        assert flow_name_of(deployments_by_name()[name]["entrypoint"]) == flow
        out[stage] = name
    return out


def _worker_query_seconds() -> float:
    """How long a scheduled stage run may wait for the worker to pick it up."""
    values = yaml.safe_load(WORKER_VALUES.read_text(encoding="utf-8"))["worker"]
    env = {e["name"]: e["value"] for e in values.get("extraEnvVars", [])}
    if "PREFECT_WORKER_QUERY_SECONDS" in env:
        return float(env["PREFECT_WORKER_QUERY_SECONDS"])
    from prefect.settings import get_current_settings

    return float(get_current_settings().worker.query_seconds)


def daily_budget_seconds(orchestrator: str) -> float:
    """The longest a day may legitimately take in its orchestrating pod: each stage dispatched
    CRASH_ATTEMPTS times, each time waiting for the worker, for its pod to start (the pod watch)
    and for its Job's deadline; the landed-day check; publish; this pod's own start."""
    stages = 0.0
    for name in _stage_deployments().values():
        jv = _job_variables(name)
        attempt = (
            _worker_query_seconds()
            + jv["pod_watch_timeout_seconds"]
            + jv["active_deadline_seconds"]
        )
        stages += CRASH_ATTEMPTS * attempt
    own = _job_variables(orchestrator)["pod_watch_timeout_seconds"]
    timeouts = stage_tasks.landed_extract.timeout_seconds, stage_tasks.publish.timeout_seconds
    assert all(t is not None for t in timeouts)
    return stages + sum(t for t in timeouts if t is not None) + own


@pytest.mark.parametrize("orchestrator", ORCHESTRATORS)
def test_daily_deadline_covers_its_stages_attempts(orchestrator: str) -> None:
    """A day whose stages all use their full deadlines, each dispatched twice, is not killed by
    its own Job's deadline first (the seed's issue: 4 h against 4.5 h of stage deadlines)."""
    assert CRASH_ATTEMPTS >= 2
    deadline = _job_variables(orchestrator)["active_deadline_seconds"]
    budget = daily_budget_seconds(orchestrator)
    assert deadline >= budget, f"{orchestrator}: {deadline} s < {budget:.0f} s"


def test_orchestrators_are_the_daily_and_the_backfill_day() -> None:
    assert sorted(ORCHESTRATORS) == ["backfill-day", "daily-trip-etl"]


def _watched_deployments() -> list[str]:
    """The deployments whose runs the "Running longer than" alert watches (by flow name)."""
    flows = set(automations.RUNNING_LONG_FLOWS)
    return [
        name for name, d in deployments_by_name().items() if flow_name_of(d["entrypoint"]) in flows
    ]


def test_running_long_alert_watches_the_day_and_every_stage() -> None:
    watched = set(_watched_deployments())
    assert watched >= set(ORCHESTRATORS) | set(_stage_deployments().values())
    [automation] = [
        a for a in automations.definitions(_BLOCK) if a.name == automations.RUNNING_LONG
    ]
    related = automation.trigger.match_related
    assert not isinstance(related, list)
    names = related.root["prefect.resource.name"]
    assert sorted(names) == sorted(automations.RUNNING_LONG_FLOWS)


@pytest.mark.parametrize("name", _watched_deployments())
def test_running_long_alert_fires_before_any_deadline(name: str) -> None:
    """A stuck stage (or day) is alerted as running too long before its Job's deadline kills it:
    the alert's window plus one evaluation period of the server's proactive triggers ends before
    the shortest deadline of any run it watches. A Job's deadline counts from the Job's start;
    the alert's window must start no later, or the pod's start-up time eats the margin (counted
    from Running, a stage pod slow to start reached its deadline un-alerted on the live cluster,
    tests/cluster/test_fault_deadlines.py): it starts at the run's Pending state, which the worker
    sets before it creates the Job."""
    from prefect.settings import get_current_settings

    [automation] = [
        a for a in automations.definitions(_BLOCK) if a.name == automations.RUNNING_LONG
    ]
    assert isinstance(automation.trigger, EventTrigger)
    assert "prefect.flow-run.Pending" in automation.trigger.after
    granularity = get_current_settings().server.events.proactive_granularity
    fires_by = automations.RUNNING_LONGER_THAN + granularity
    deadline = timedelta(seconds=_job_variables(name)["active_deadline_seconds"])
    assert fires_by < deadline, f"{name}: alert after {fires_by}, deadline {deadline}"


def test_automations_doc_states_the_codes_windows_and_deadlines() -> None:
    """deployments/AUTOMATIONS.md says what the code and prefect.yaml say."""
    text = (ROOT / "deployments" / "AUTOMATIONS.md").read_text(encoding="utf-8")
    running = automations.duration_text(automations.RUNNING_LONGER_THAN)
    stale = automations.duration_text(automations.STALE_AFTER)
    assert f"--running-longer-than {running}" in text
    assert f"--stale-after {stale}" in text
    row = next(line for line in text.splitlines() if f"`{automations.RUNNING_LONG}`" in line)
    assert f"within {running}" in row
    listed = row.split("`activeDeadlineSeconds`:", 1)[1].split(")", 1)[0]
    stated = {name: int(seconds) for name, seconds in re.findall(r"([\w-]+) (\d+)", listed)}
    actual = {n: _job_variables(n)["active_deadline_seconds"] for n in _watched_deployments()}
    assert stated == actual, (stated, actual)
    assert "PREFECT_FLOWS_DEFAULT_RETRIES=1" not in text
