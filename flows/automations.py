"""tripflow's automations, as code: who is told what, and when, about ``daily-trip-etl``.

Four automations, each a Prefect 3 ``Automation`` (an event trigger plus a ``SendNotification``
action to one notification block), applied idempotently by name (``apply``; the CLI's
``tripflow automations apply``):

- ``tripflow-daily-failed`` (reactive): a ``daily-trip-etl`` flow run entered Failed or Crashed.
  The message names the run, its ``run_date``, the state message (the failed check, e.g.
  ``checks failed: min_rows``, or the error) and a link to the run in the Prefect UI.
- ``tripflow-daily-stale`` (proactive): no ``daily-trip-etl`` run reached Completed in the last
  26 hours (a daily schedule that silently stopped, a worker that is gone, a run stuck forever).
- ``tripflow-k8s-pod-failed`` (reactive): a pipeline pod failed. prefect-kubernetes' observer
  emits ``prefect.kubernetes.pod.failed``, but for a pod whose container terminated with a reason
  (``OOMKilled``, ``Error``) it emits ``prefect.kubernetes.pod.evicted`` with the reason in the
  resource label ``kubernetes.reason`` and its diagnosis in ``kubernetes.diagnosis``
  (prefect-kubernetes 0.8.0, ``observer.py``): both are matched, and the message carries both.
- ``tripflow-daily-running-long`` (proactive, per flow run): a run of ``daily-trip-etl`` or of one
  of its stage flows (``tripflow-extract`` …) entered Pending (the worker submits its Job) or
  Running and reached no final state within 45 minutes. The window is shorter than every one of
  these deployments' Job ``activeDeadlineSeconds`` (stages 1 to 2 h; the daily run's covers its
  stages' deadlines twice over, ``tests/k8s/test_deadlines.py``), and it starts at Pending, before
  the Job exists, while the deadline counts from the Job's start: so a stuck stage, or a run that
  lost its pod (PrefectHQ/prefect#21022: OOM-killed runs left Running forever), is alerted before
  any deadline ends it, however long its pod took to start. (Counted from Running, the window
  ended that start-up time later: a pod slow to start — an image pull, a node scaling up — could
  reach its deadline first, and the Crashed run was never alerted as running long.)

Proactive triggers are evaluated by the server's triggers service every 5 seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect.automations import (
    Automation,
    AutomationCore,
    EventTrigger,
    Posture,
    SendNotification,
)

from flows.stages import STAGE_DEPLOYMENTS

FLOW_NAME = "daily-trip-etl"
#: Every automation's name starts with this; ``apply`` manages exactly these names.
PREFIX = "tripflow-"
TAGS = ["tripflow"]

FAILED = f"{PREFIX}daily-failed"
STALE = f"{PREFIX}daily-stale"
POD_FAILED = f"{PREFIX}k8s-pod-failed"
RUNNING_LONG = f"{PREFIX}daily-running-long"
POD_UNSCHEDULABLE = f"{PREFIX}k8s-pod-cannot-start"
POD_NOT_STARTED = f"{PREFIX}k8s-pod-not-started"

#: The defaults: no Completed run for 26 hours; Running for longer than 45 minutes (less than the
#: shortest Job deadline of the flows it watches: tests/k8s/test_deadlines.py).
STALE_AFTER = timedelta(hours=26)
RUNNING_LONGER_THAN = timedelta(minutes=45)
#: A pipeline pod still Pending (not Running, nor ended) this long after it was created is alerted:
#: a missing Secret, an image that cannot be pulled, a node that never comes. Longer than a spot
#: node's scale-up; far shorter than the pod watch and Job deadlines that would end it otherwise.
POD_START_WITHIN = timedelta(minutes=5)
#: The flows whose runs "Running longer than" watches: the day and each of its stages.
RUNNING_LONG_FLOWS = (FLOW_NAME, *(name.split("/")[0] for name in STAGE_DEPLOYMENTS.values()))
#: The pipeline's Kubernetes namespace (prefect.yaml): a failed pod there is one of ours.
NAMESPACE = "data-pipeline"

#: The flow the daily runs belong to, as a related resource of every flow-run event.
_DAILY_FLOW = {"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME}
_DAILY_AND_STAGE_FLOWS = {
    "prefect.resource.role": "flow",
    "prefect.resource.name": list(RUNNING_LONG_FLOWS),
}
#: A run's "Running longer than" window starts at the first of these (Pending: the worker is
#: submitting its Job; Running: a run that had no Pending state seen).
RUNNING_LONG_STARTS = {"prefect.flow-run.Pending", "prefect.flow-run.Running"}
_FINAL_STATES = {
    "prefect.flow-run.Completed",
    "prefect.flow-run.Failed",
    "prefect.flow-run.Crashed",
    "prefect.flow-run.Cancelled",
    "prefect.flow-run.Cancelling",
    # A flow-level retry goes Running -> AwaitingRetry -> Running: a new window starts.
    "prefect.flow-run.AwaitingRetry",
}

FAILED_SUBJECT = "tripflow: {{ flow_run.name }} {{ flow_run.state.name }}"
FAILED_BODY = """\
tripflow daily run {{ flow_run.state.name }}: {{ flow_run.name }}
run_date: {{ flow_run.parameters.get('run_date') or 'default (yesterday)' }}
state: {{ flow_run.state.name }}
error: {{ flow_run.state.message }}
link: {{ flow_run|ui_url }}
flow run id: {{ flow_run.id }}
event: {{ event.event }} at {{ event.occurred }}"""

STALE_SUBJECT = "tripflow: no Completed daily-trip-etl run in {{ automation.trigger.within }}"
STALE_BODY = """\
tripflow: no daily-trip-etl flow run has reached Completed for {{ automation.trigger.within }}.
The warehouse is missing at least one day. Check the schedule, the work pool's worker and recent
runs of the deployment daily-trip-etl/daily-trip-etl.
automation: {{ automation.name }} ({{ automation|ui_url }})"""

POD_FAILED_SUBJECT = (
    "tripflow: pod {{ event.resource.name }} failed"
    "{% if event.resource.get('kubernetes.reason') %}"
    " ({{ event.resource['kubernetes.reason'] }}){% endif %}"
)
POD_FAILED_BODY = """\
tripflow pipeline pod failed: {{ event.resource.name }} \
(namespace {{ event.resource.get('kubernetes.namespace') }})
reason: {{ event.resource.get('kubernetes.reason') or 'unknown' }}
diagnosis: {{ event.resource.get('kubernetes.diagnosis') or 'none' }}
{% if event.resource.get('kubernetes.reason') == 'OOMKilled' -%}
The container was killed for exceeding its memory limit: raise the stage's memory_limit job \
variable (prefect.yaml; deployments/README.md, "Memory") or give it less data per run.
{% endif -%}
flow run: {{ flow_run.name }} ({{ flow_run|ui_url }})
state: {{ flow_run.state.name }}
event: {{ event.event }} at {{ event.occurred }}"""

POD_CANNOT_START_SUBJECT = (
    "tripflow: pod {{ event.resource.name }} cannot start "
    "({{ event.resource.get('kubernetes.diagnosis') }})"
)
POD_CANNOT_START_BODY = """\
tripflow pipeline pod {{ event.resource.name }} \
(namespace {{ event.resource.get('kubernetes.namespace') }}) is Pending and Kubernetes says why:
diagnosis: {{ event.resource.get('kubernetes.diagnosis') }}
Unschedulable: no node fits its requests, node selector or tolerations (a spot pool that cannot
scale up, requests above every node); ImagePullError: the image cannot be pulled.
flow run: {{ flow_run.name }} ({{ flow_run|ui_url }})
event: {{ event.event }} at {{ event.occurred }}"""

POD_NOT_STARTED_SUBJECT = (
    "tripflow: pod {{ event.resource.name }} not started after {{ automation.trigger.within }}"
)
POD_NOT_STARTED_BODY = """\
tripflow pipeline pod {{ event.resource.name }} \
(namespace {{ event.resource.get('kubernetes.namespace') }}) has been Pending for \
{{ automation.trigger.within }} without starting.
diagnosis: {{ event.resource.get('kubernetes.diagnosis') or 'none reported by the worker' }}
The reason is in the pod's status and events (kubectl -n \
{{ event.resource.get('kubernetes.namespace') }} describe pod {{ event.resource.name }}): a \
missing Secret or ConfigMap, an image that cannot be pulled, no node that fits.
flow run: {{ flow_run.name }} ({{ flow_run|ui_url }})
event: {{ event.event }} at {{ event.occurred }}"""

RUNNING_LONG_SUBJECT = (
    "tripflow: {{ flow_run.name }} Running longer than {{ automation.trigger.within }}"
)
RUNNING_LONG_BODY = """\
tripflow run {{ flow_run.name }} has been Running (counted from its Pending state, when its pod \
was submitted) for more than {{ automation.trigger.within }} without finishing.
run_date: {{ flow_run.parameters.get('run_date') or 'default (yesterday)' }}
A day's stages take minutes: this run is stuck, or has lost its pod (OOM-killed, evicted, node \
gone). Its Job's activeDeadlineSeconds ends it later; check the pod now, then cancel or re-run \
the day.
link: {{ flow_run|ui_url }}"""


def definitions(
    block_document_id: UUID,
    *,
    stale_after: timedelta = STALE_AFTER,
    running_longer_than: timedelta = RUNNING_LONGER_THAN,
    pod_start_within: timedelta = POD_START_WITHIN,
    namespace: str = NAMESPACE,
) -> list[Automation]:
    """The automations, all notifying through the notification block ``block_document_id``."""

    def notify(subject: str, body: str) -> SendNotification:
        return SendNotification(block_document_id=block_document_id, subject=subject, body=body)

    #: The pipeline's pods, as the worker's observer names them in its events.
    pods: dict[str, str | list[str]] = {
        "prefect.resource.id": "prefect.kubernetes.pod.*",
        "kubernetes.namespace": namespace,
    }

    return [
        Automation(
            name=FAILED,
            description=f"Notify when a {FLOW_NAME} flow run fails or crashes.",
            tags=TAGS,
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related=_DAILY_FLOW,  # type: ignore[arg-type]
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
                for_each={"prefect.resource.id"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[notify(FAILED_SUBJECT, FAILED_BODY)],
        ),
        Automation(
            name=STALE,
            description=f"Notify when no {FLOW_NAME} flow run has Completed for {stale_after}.",
            tags=TAGS,
            trigger=EventTrigger(
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related=_DAILY_FLOW,  # type: ignore[arg-type]
                expect={"prefect.flow-run.Completed"},
                posture=Posture.Proactive,
                threshold=1,
                within=stale_after,
            ),
            actions=[notify(STALE_SUBJECT, STALE_BODY)],
        ),
        Automation(
            name=POD_FAILED,
            description="Notify when a tripflow pod fails on Kubernetes (OOMKilled diagnosed).",
            tags=TAGS,
            trigger=EventTrigger(
                match=pods,
                expect={"prefect.kubernetes.pod.failed", "prefect.kubernetes.pod.evicted"},
                for_each={"prefect.resource.id"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[notify(POD_FAILED_SUBJECT, POD_FAILED_BODY)],
        ),
        Automation(
            name=RUNNING_LONG,
            description=f"Notify when a {FLOW_NAME} run or one of its stages' runs is Running "
            f"for over {running_longer_than}.",
            tags=TAGS,
            trigger=EventTrigger(
                # From Pending (before the Job exists), not Running: see the module docstring.
                after=RUNNING_LONG_STARTS,
                match={"prefect.resource.id": "prefect.flow-run.*"},
                match_related=_DAILY_AND_STAGE_FLOWS,  # type: ignore[arg-type]
                expect=_FINAL_STATES,
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=running_longer_than,
            ),
            actions=[notify(RUNNING_LONG_SUBJECT, RUNNING_LONG_BODY)],
        ),
        Automation(
            name=POD_UNSCHEDULABLE,
            description="Notify at once when a tripflow pod is Pending with a Kubernetes "
            "diagnosis (Unschedulable, ImagePullError).",
            tags=TAGS,
            trigger=EventTrigger(
                # The worker's observer labels a Pending pod it can diagnose; "*" needs the label
                # to be there (prefect.events.schemas.events.matches).
                match={**pods, "kubernetes.diagnosis": "*"},
                expect={"prefect.kubernetes.pod.pending"},
                for_each={"prefect.resource.id"},
                posture=Posture.Reactive,
                threshold=1,
                within=timedelta(0),
            ),
            actions=[notify(POD_CANNOT_START_SUBJECT, POD_CANNOT_START_BODY)],
        ),
        Automation(
            name=POD_NOT_STARTED,
            description=f"Notify when a tripflow pod is still Pending {pod_start_within} after "
            "it was created.",
            tags=TAGS,
            trigger=EventTrigger(
                after={"prefect.kubernetes.pod.pending"},
                match=pods,
                expect={
                    "prefect.kubernetes.pod.running",
                    "prefect.kubernetes.pod.succeeded",
                    "prefect.kubernetes.pod.failed",
                    "prefect.kubernetes.pod.evicted",
                },
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=pod_start_within,
            ),
            actions=[notify(POD_NOT_STARTED_SUBJECT, POD_NOT_STARTED_BODY)],
        ),
    ]


@dataclass(frozen=True)
class Applied:
    name: str
    action: str  # "created", "updated" or "unchanged"
    id: UUID


def comparable(automation: Automation) -> dict[str, Any]:
    """The definition as JSON, with the trigger's sets sorted (a set's order varies by process)."""
    data = automation.model_dump(mode="json", exclude={"id", "owner_resource"})
    for key in ("expect", "after", "for_each"):
        if isinstance(data["trigger"].get(key), list):
            data["trigger"][key] = sorted(data["trigger"][key])
    return data


async def apply(automations: list[Automation]) -> list[Applied]:
    """Create each automation, or update the one of the same name; returns what was done.

    Idempotent: applying the same definitions twice leaves one automation of each name and
    changes nothing the second time. Duplicates of a name (made by hand) are deleted.
    """
    from prefect import get_client

    done: list[Applied] = []
    async with get_client() as client:
        for automation in automations:
            existing = await client.read_automations_by_name(automation.name)
            if not existing:
                created = await client.create_automation(
                    AutomationCore(**automation.model_dump(exclude={"id"}))
                )
                done.append(Applied(automation.name, "created", created))
                continue
            keep, *extra = sorted(existing, key=lambda a: str(a.id))
            for duplicate in extra:
                await client.delete_automation(duplicate.id)
            current = Automation(**keep.model_dump())
            if comparable(current) == comparable(automation):
                done.append(Applied(automation.name, "unchanged", keep.id))
                continue
            await client.update_automation(
                keep.id, AutomationCore(**automation.model_dump(exclude={"id", "owner_resource"}))
            )
            done.append(Applied(automation.name, "updated", keep.id))
    return done


async def notification_block_id(name: str) -> UUID:
    """The id of a saved notification block: ``SLUG/NAME`` or a ``custom-webhook`` ``NAME``."""
    from prefect import get_client

    slug, _, block_name = name.rpartition("/")
    async with get_client() as client:
        document = await client.read_block_document_by_name(
            block_name, block_type_slug=slug or "custom-webhook"
        )
    return document.id


async def save_webhook_block(name: str, url: str) -> UUID:
    """Save (or overwrite) a ``CustomWebhookNotificationBlock`` POSTing subject and body as JSON."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name=name,
        url=url,
        method="POST",
        json_data={"subject": "{{subject}}", "body": "{{body}}", "source": "{{name}}"},
        headers=None,
        cookies=None,
    )
    block_id: UUID = await block.asave(name, overwrite=True)
    return block_id


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def duration_text(delta: timedelta) -> str:
    """The shortest ``parse_duration`` text for ``delta``: ``26h``, ``45m``, ``20s``."""
    seconds = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_duration(text: str) -> timedelta:
    """``26h``, ``90m``, ``20s``, ``2d`` or plain seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (e.g. 26h, 90m, 20s)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return timedelta(seconds=value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])
