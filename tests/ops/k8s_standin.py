"""A STAND-IN for a Kubernetes cluster: ``kmock``'s API emulator plus a tiny "kubelet".

What it is: ``kmock.KubernetesEmulator`` (an in-memory imitation of the Kubernetes REST API: stores
JSON objects, serves get/list/watch/create/patch/delete, API discovery) on 127.0.0.1, with:

- names filled from ``metadata.generateName`` and a ``uid`` added on create (kmock keys by name);
- a "kubelet" that, for every Job created, creates its Pod (the Job's pod template, labels
  ``job-name``/``controller-uid``), runs the container's ``command + args`` **as a local process**
  (``prefect`` becomes this interpreter's ``-m prefect``) with the container's literal ``env``
  values, and reports the pod's phase, container state and exit code, then the Job's status;
- a memory limit "enforced" like the kernel's OOM killer would: the process is SIGKILLed when its
  RSS passes the container's ``resources.limits.memory``, and reported ``OOMKilled``/137;
- the pod's log (the process's stdout+stderr) served at ``pods/NAME/log``.

What it does NOT do: scheduling, images (the local interpreter and this checkout run instead),
``valueFrom`` env (Secrets; those variables are left unset and listed in ``skipped_env``),
volumes, security contexts, resource requests, TTL deletion of finished Jobs, Job retries
(``backoffLimit``), ``activeDeadlineSeconds``, server-side label selectors (kmock ignores them),
admission or schema validation, resourceVersions (kmock serves a placeholder).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import secrets
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import kmock
from aiohttp import web

_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}


def memory_bytes(quantity: str | None) -> int | None:
    if not quantity:
        return None
    for unit, factor in _UNITS.items():
        if quantity.endswith(unit):
            return int(float(quantity[: -len(unit)]) * factor)
    return int(quantity)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Emulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    logs: dict[tuple[str, str], str]

    async def _handle(self, request: Any) -> web.StreamResponse:
        if request.resource is not None and request.subresource == "log":
            text = self.logs.get((request.namespace, request.name), "")
            return web.Response(text=text)
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("namespace", request.namespace)
            meta.setdefault("creationTimestamp", _now())
            meta.setdefault("resourceVersion", "1")
        return await super()._handle(request)  # type: ignore[no-any-return]


class KubernetesStandIn:
    """Runs the emulator and the kubelet in a background thread; ``url`` is the API server."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.url = ""
        self.jobs: list[dict[str, Any]] = []  # every Job as the worker POSTed it
        self.pods: dict[str, dict[str, Any]] = {}  # pod name -> its last reported status
        self.skipped_env: list[str] = []
        self.peak_rss: dict[str, int] = {}  # pod name -> the highest RSS seen (bytes)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="k8s-standin", daemon=True)
        self._pod_tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> KubernetesStandIn:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes stand-in did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                    "users": [{"name": "standin", "user": {"token": "stand-in"}}],
                    "contexts": [
                        {"name": "standin", "context": {"cluster": "standin", "user": "standin"}}
                    ],
                    "current-context": "standin",
                }
            )
        )
        return path

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        emulator = _Emulator()
        emulator.logs = {}
        async with emulator, kmock.Server(emulator) as server:
            emulator.resources.load_bundled()
            self.url = str(server.url).rstrip("/")
            self._emulator = emulator
            async with aiohttp.ClientSession(base_url=self.url) as http:
                self._http = http
                self._ready.set()
                kubelet = asyncio.create_task(self._kubelet())
                await self._stop.wait()
                kubelet.cancel()
                for task in list(self._pod_tasks):
                    task.cancel()
                await asyncio.gather(kubelet, *self._pod_tasks, return_exceptions=True)

    def pod_of(self, job_name: str, phases: tuple[str, ...], timeout: float) -> dict[str, Any]:
        """The status of the Job's pod once its phase is one of ``phases``."""
        deadline = time.monotonic() + timeout
        while True:
            for name, status in list(self.pods.items()):
                if name.startswith(job_name + "-") and status["phase"] in phases:
                    return status
            if time.monotonic() > deadline:
                raise AssertionError(f"no pod of {job_name} in {phases}: {self.pods}")
            time.sleep(0.1)

    def job_of(self, flow_run_id: str) -> dict[str, Any]:
        """The Job the worker created for a flow run (by its ``prefect.io/flow-run-id`` label)."""
        [job] = [
            j
            for j in self.jobs
            if j["metadata"].get("labels", {}).get("prefect.io/flow-run-id") == flow_run_id
        ]
        return job

    async def _kubelet(self) -> None:
        seen: set[str] = set()
        while True:
            async with self._http.get("/apis/batch/v1/jobs") as response:
                listing = await response.json()
            for job in listing.get("items", []):
                uid = job["metadata"]["uid"]
                if uid not in seen:
                    seen.add(uid)
                    self.jobs.append(job)
                    task = asyncio.create_task(self._play_pod(job))
                    self._pod_tasks.add(task)
                    task.add_done_callback(self._pod_tasks.discard)
            await asyncio.sleep(0.2)

    async def _patch(self, path: str, body: dict[str, Any]) -> None:
        async with self._http.patch(
            path, json=body, headers={"Content-Type": "application/merge-patch+json"}
        ) as response:
            response.raise_for_status()

    async def _play_pod(self, job: dict[str, Any]) -> None:
        ns, job_name = job["metadata"]["namespace"], job["metadata"]["name"]
        template = job["spec"]["template"]
        labels = {
            **(template.get("metadata", {}).get("labels") or {}),
            "job-name": job_name,
            "controller-uid": job["metadata"]["uid"],
        }
        pod_name = f"{job_name}-{secrets.token_hex(3)}"
        container = template["spec"]["containers"][0]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": ns,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": job_name,
                        "uid": job["metadata"]["uid"],
                        "controller": True,
                    }
                ],
            },
            "spec": template["spec"],
            "status": {"phase": "Pending", "conditions": [], "containerStatuses": []},
        }
        async with self._http.post(f"/api/v1/namespaces/{ns}/pods", json=pod) as response:
            response.raise_for_status()
        pod_path = f"/api/v1/namespaces/{ns}/pods/{pod_name}"
        job_path = f"/apis/batch/v1/namespaces/{ns}/jobs/{job_name}"
        await self._patch(job_path, {"status": {"active": 1, "startTime": _now()}})

        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        if argv and argv[0] == "prefect":
            argv = [sys.executable, "-m", "prefect", *argv[1:]]
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(self.workdir)}
        for entry in container.get("env") or []:
            if "value" in entry:
                env[entry["name"]] = str(entry["value"])
            else:
                self.skipped_env.append(entry["name"])
        limit = memory_bytes(container.get("resources", {}).get("limits", {}).get("memory"))
        started = _now()
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.workdir,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        running = {
            "name": container["name"],
            "image": container.get("image", ""),
            "imageID": "",
            "ready": True,
            "restartCount": 0,
            "started": True,
            "state": {"running": {"startedAt": started}},
        }
        status = {
            "phase": "Running",
            "startTime": started,
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [running],
        }
        await self._patch(pod_path, {"status": status})
        self.pods[pod_name] = status

        chunks: list[bytes] = []
        oom = False

        async def read() -> None:
            assert process.stdout is not None
            while chunk := await process.stdout.read(4096):
                chunks.append(chunk)
                self._emulator.logs[(ns, pod_name)] = b"".join(chunks).decode("utf-8", "replace")

        async def watch_memory() -> None:
            nonlocal oom
            while process.returncode is None:
                rss = _rss(process.pid)
                self.peak_rss[pod_name] = max(rss, self.peak_rss.get(pod_name, 0))
                if limit is not None and rss > limit:
                    oom = True
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    return
                await asyncio.sleep(0.05)

        reader, watcher = asyncio.create_task(read()), asyncio.create_task(watch_memory())
        try:
            code = await process.wait()
            await reader
        finally:
            watcher.cancel()
            if process.returncode is None:  # the stand-in is stopping: no orphan processes
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
                reader.cancel()
        exit_code = 137 if oom else code
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        phase = "Succeeded" if exit_code == 0 else "Failed"
        terminated = {
            **running,
            "ready": False,
            "started": False,
            "state": {
                "terminated": {
                    "exitCode": exit_code,
                    "reason": reason,
                    "startedAt": started,
                    "finishedAt": _now(),
                }
            },
        }
        status = {
            "phase": phase,
            "startTime": started,
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [terminated],
        }
        await self._patch(pod_path, {"status": status})
        self.pods[pod_name] = status
        if phase == "Succeeded":
            job_status = {
                "active": 0,
                "succeeded": 1,
                "completionTime": _now(),
                "conditions": [{"type": "Complete", "status": "True"}],
            }
        else:
            job_status = {
                "active": 0,
                "failed": 1,
                "conditions": [
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}
                ],
            }
        await self._patch(job_path, {"status": job_status})


def _rss(pid: int) -> int:
    """Resident memory of the process group led by ``pid`` (what a container's cgroup counts)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total
