"""``tripflow-k8s-janitor``: delete Kubernetes Jobs left behind by finished Prefect flow runs.

Every Job the Kubernetes worker creates carries the label ``prefect.io/flow-run-id``. Its
``ttlSecondsAfterFinished`` removes it once the Job itself finishes, but a Job whose flow run was
cancelled, or whose pod never reported (PrefectHQ/prefect#21863, #21022), can outlive its run.
This flow lists the namespace's Jobs with that label and deletes (with their pods, propagation
``Background``) those whose flow run is in a final state, or no longer exists. Jobs of runs that
are still scheduled, pending or running are kept; Jobs without the label are never touched.

Run it on a schedule from the worker's namespace (its RBAC already allows jobs list/delete):
``prefect deploy`` an entry point ``flows/janitor.py:k8s_janitor``, or ``python -m flows.janitor``.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger

LABEL = "prefect.io/flow-run-id"
#: Prefect state types after which a run's Job has nothing left to do.
FINAL_STATE_TYPES = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})

#: Looks a flow run's state type up by id; None when the run does not exist (deleted).
StateLookup = Callable[[str], Awaitable[str | None]]


@dataclass
class JanitorReport:
    deleted: list[str] = field(default_factory=list)  # Job names
    kept: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # Job name -> why deleted or kept

    def as_dict(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "kept": self.kept, "reasons": self.reasons}


def _labels(job: Any) -> dict[str, str]:
    metadata = job.get("metadata", {}) if isinstance(job, dict) else job.metadata
    labels = metadata.get("labels") if isinstance(metadata, dict) else metadata.labels
    return dict(labels or {})


def _name(job: Any) -> str:
    metadata = job.get("metadata", {}) if isinstance(job, dict) else job.metadata
    return str(metadata.get("name") if isinstance(metadata, dict) else metadata.name)


async def sweep(
    batch_api: Any, namespace: str, state_of: StateLookup, *, dry_run: bool = False
) -> JanitorReport:
    """Delete the namespace's Jobs whose flow run is finished or gone.

    ``batch_api`` is a ``kubernetes_asyncio`` ``BatchV1Api`` (or anything with the same
    ``list_namespaced_job`` / ``delete_namespaced_job``). The label selector is also checked
    here: an API server stand-in may ignore it, and a Job without the label is never ours.
    """
    report = JanitorReport()
    listed = await batch_api.list_namespaced_job(namespace=namespace, label_selector=LABEL)
    for job in listed.items:
        name = _name(job)
        run_id = _labels(job).get(LABEL)
        if not run_id:
            continue
        state = await state_of(run_id)
        if state is not None and state not in FINAL_STATE_TYPES:
            report.kept.append(name)
            report.reasons[name] = f"flow run {run_id} is {state}"
            continue
        report.reasons[name] = (
            f"flow run {run_id} is {state}" if state else f"flow run {run_id} no longer exists"
        )
        if not dry_run:
            await batch_api.delete_namespaced_job(
                name=name, namespace=namespace, propagation_policy="Background"
            )
        report.deleted.append(name)
    return report


async def prefect_state_of(run_id: str) -> str | None:
    """The flow run's state type from the Prefect API (None if it does not exist)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        flow_run_id = uuid.UUID(run_id)
    except ValueError:
        return None
    async with get_client() as client:
        try:
            run = await client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            return None
    return run.state.type.value if run.state else "PENDING"


async def _kubernetes_batch_api() -> Any:
    """A BatchV1Api the way the Kubernetes worker connects: in-cluster, else the kubeconfig."""
    from kubernetes_asyncio import config
    from kubernetes_asyncio.client import ApiClient, BatchV1Api

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        api_client = ApiClient()
    except config.ConfigException:
        # KUBECONFIG is read now (kubernetes_asyncio reads it once, at import, by default).
        api_client = await config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))
    return BatchV1Api(api_client)


@flow(name="tripflow-k8s-janitor", log_prints=True)
async def k8s_janitor(namespace: str = "data-pipeline", dry_run: bool = False) -> dict[str, Any]:
    """Delete Jobs whose ``prefect.io/flow-run-id`` points at a finished (or deleted) flow run."""
    logger = get_run_logger()
    batch_api = await _kubernetes_batch_api()
    try:
        report = await sweep(batch_api, namespace, prefect_state_of, dry_run=dry_run)
    finally:
        await batch_api.api_client.close()
    for name in report.deleted:
        verb = "would delete" if dry_run else "deleted"
        logger.info("%s Job %s/%s: %s", verb, namespace, name, report.reasons[name])
    logger.info("kept %d Job(s) of unfinished runs", len(report.kept))
    return report.as_dict()


if __name__ == "__main__":
    asyncio.run(k8s_janitor())
