"""The day, pod by pod, on the real control plane (pods played by the fake kubelet, a STAND-IN).

``prefect deployment run 'daily-trip-etl/daily-trip-etl' --param run_date=…`` as an operator
would: the real worker creates the daily Job, whose pod starts each stage as a run of its
deployment, each its own Job and pod with that deployment's requests and limits; the real
scheduler puts transform on the spot node (node selector + toleration) and the rest on the
on-demand node; the day is published once in the warehouse's ledger; the real TTL controller
deletes every finished Job.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import duckdb
import pytest
from cluster import overrides
from cluster.conftest import Deployed, Recorder, child_runs, run_deployment_cli, wait_final

pytestmark = pytest.mark.timeout(1800)

DAY = "2025-11-14"
STAGES = ("extract", "transform", "load", "validate")


def _ledger(deployed: Deployed, day: str) -> list[tuple[str, str, str]]:
    """(run_id, status, stages JSON) of the day's ledger rows (retried: one writer at a time)."""
    for _ in range(60):
        try:
            with duckdb.connect(str(deployed.warehouse), read_only=True) as con:
                return con.execute(
                    "SELECT run_id, status, stages::VARCHAR FROM analytics.runs WHERE run_date = ?",
                    [day],
                ).fetchall()
        except duckdb.IOException:
            time.sleep(1)
    raise AssertionError("the warehouse file stayed locked for 60 s")


def test_the_day_pod_by_pod(deployed: Deployed) -> None:
    with Recorder(deployed.admin) as seen:
        started = time.monotonic()
        flow_run_id = run_deployment_cli(
            "daily-trip-etl/daily-trip-etl", "--param", f"run_date={DAY}", "--param", "rows=20000"
        )
        daily = deployed.deployment("daily-trip-etl")["work_pool"]["job_variables"]
        run = wait_final(deployed, flow_run_id, daily["active_deadline_seconds"] + 120)
        took = time.monotonic() - started
        assert run.state.name == "Completed", deployed.worker_log.read_text()[-4000:]
        print(f"the day, pod by pod: {took:.0f} s to Completed")

        children = child_runs(flow_run_id)
        runs = {str(flow_run_id): "daily-trip-etl", **{str(c.id): c.name for c in children}}
        assert len(children) == len(STAGES), [(c.name, c.state_name) for c in children]
        # A run is Completed a moment before its process (the pod) exits.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(
            p["status"].get("phase") not in ("Succeeded", "Failed")
            for rid in runs
            for p in seen.of_flow_run("Pod", rid)
        ):
            time.sleep(1)
        jobs = {rid: seen.of_flow_run("Job", rid) for rid in runs}
        pods = {rid: seen.of_flow_run("Pod", rid) for rid in runs}
        # One Job and one pod per run: the day's and each stage's.
        assert all(len(j) == 1 for j in jobs.values()), {runs[r]: len(j) for r, j in jobs.items()}
        assert all(len(p) == 1 for p in pods.values()), {runs[r]: len(p) for r, p in pods.items()}

        shipped_env = overrides.expected_env(deployed.shipped["definitions"]["pod_env"])
        placed = {}
        for rid in runs:
            [job], [pod] = jobs[rid], pods[rid]
            stage = job["metadata"]["labels"]["tripflow.io/stage"]
            name = "daily-trip-etl" if stage == "orchestrate" else stage
            spec = deployed.deployment(name)["work_pool"]["job_variables"]
            container = pod["spec"]["containers"][0]
            assert container["resources"] == {
                "requests": {"cpu": spec["cpu_request"], "memory": spec["memory_request"]},
                "limits": {"cpu": spec["cpu_limit"], "memory": spec["memory_limit"]},
            }, name
            assert container["image"] == spec["image"], name  # shipped; ignored by the stand-in
            assert job["spec"]["backoffLimit"] == spec["backoff_limit"], name
            assert job["spec"]["activeDeadlineSeconds"] == spec["active_deadline_seconds"], name
            assert job["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tripflow", name
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert {k: env.get(k) for k in shipped_env} == shipped_env, name
            assert pod["status"]["phase"] == "Succeeded", (name, pod["status"])
            placed[stage] = pod["spec"]["nodeName"]
        assert placed == {
            "orchestrate": "tripflow-ondemand",
            "extract": "tripflow-ondemand",
            "transform": "tripflow-spot",
            "load": "tripflow-ondemand",
            "validate": "tripflow-ondemand",
        }

        rows = _ledger(deployed, DAY)
        published = [r for r in rows if r[1] == "published"]
        assert [r[0] for r in published] == [str(flow_run_id)], rows
        measures = {s["name"]: s for s in json.loads(published[0][2])["measures"]}
        print("peak RSS per stage, each measured in its own pod (MiB):",
              {s: measures[s]["peak_rss_mb"] for s in STAGES if s in measures})  # fmt: skip
        assert all(measures[s]["peak_rss_mb"] > 0 for s in STAGES), measures

        # The TTL controller deletes each finished Job (and its pod) ttlSecondsAfterFinished after
        # it finished; the resync of the controllers is the backstop for a late deletion.
        job_uids = {j[0]["metadata"]["uid"]: j[0] for j in jobs.values()}
        deadline = (
            time.monotonic()
            + max(j["spec"]["ttlSecondsAfterFinished"] for j in job_uids.values())
            + 120
        )
        while set(job_uids) - set(seen.deleted) and time.monotonic() < deadline:
            time.sleep(2)
        assert not set(job_uids) - set(seen.deleted), "finished Jobs not deleted by their TTL"
        for uid, job in job_uids.items():
            last = seen.objects[uid]
            finished = last["status"].get("completionTime") or max(
                c["lastTransitionTime"] for c in last["status"].get("conditions", [])
            )
            at = datetime.fromisoformat(finished.replace("Z", "+00:00")).timestamp()
            # Deleted no earlier than its TTL (so by the TTL controller, not by the worker).
            assert seen.deleted[uid] >= at + job["spec"]["ttlSecondsAfterFinished"] - 1, uid
