"""A STAND-IN for the kubelet: the one part of the cluster in tests/cluster that is not real.

Everything else (etcd, kube-apiserver, kube-controller-manager with its Job, TTL, garbage-collector
and node-lifecycle controllers, kube-scheduler) is the real Kubernetes 1.20 control plane
(scripts/cluster). This process plays the kubelet of two Nodes, all on this host, and does only:

- registers two Nodes: ``tripflow-ondemand`` and ``tripflow-spot`` (label ``workload=analytics``,
  taint ``analytics=true:NoSchedule``), each with capacity = allocatable (8 CPU, 32Gi memory,
  110 pods, 100Gi ephemeral storage: numbers for the scheduler, not this machine's), InternalIP
  127.0.0.1 and the port of its log server; heartbeats their ``Ready`` condition every 5 s (the
  real node-lifecycle controller then lifts the ``node.kubernetes.io/not-ready`` taint);
- watches the pods the real scheduler bound to those Nodes and, for each, runs the FIRST
  container's ``command + args`` as a local process (``prefect ...`` -> this interpreter's
  ``-m prefect``; the image is ignored: this checkout and its venv stand in for it), in its own
  process group, with an environment of only PATH (the venv first), HOME (the pod's folder),
  LANG, PYTHONUNBUFFERED plus the container's ``env`` and ``envFrom``:
  ``value``; ``valueFrom.secretKeyRef`` / ``configMapKeyRef``; ``fieldRef`` (metadata.name,
  namespace, uid, labels[...], annotations[...], spec.nodeName, spec.serviceAccountName,
  status.hostIP, status.podIP); ``resourceFieldRef`` (requests/limits of cpu, memory,
  ephemeral-storage, with ``divisor``, rounded up like the kubelet); ``envFrom`` Secrets and
  ConfigMaps (with ``prefix``). A missing Secret/ConfigMap/key (not ``optional``) leaves the pod
  ``Pending`` with the container ``Waiting``/``CreateContainerConfigError`` and a Warning Event
  ``Failed``, as a real kubelet reports it, and is retried every 2 s;
- maps each ``emptyDir`` volume to a folder ``<workdir>/pods/<uid>/<volume>`` (``hostPath``: the
  path itself); a value (env, args, ``workingDir``) equal to or under a volume mount's
  ``mountPath`` is rewritten to the mapped folder; a mount at ``/tmp`` also sets ``TMPDIR``; the
  process starts in the mapped ``workingDir``, else in the pod's folder;
- reports the pod's phase (Pending, Running, Succeeded, Failed), its conditions, podIP/hostIP
  127.0.0.1 and the container's state (waiting, running, terminated with exit code and reason
  ``Completed``/``Error``/``OOMKilled``);
- enforces the container's ``limits.memory``: polls the RSS of the process tree every 0.2 s and,
  above the limit, SIGKILLs the group and reports ``OOMKilled``, exit code 137 (the kernel would
  stop it at the allocation that crosses the limit; a burst shorter than the poll can slip by);
- on the pod's deletion (``deletionTimestamp``): SIGTERM to the group, SIGKILL after the grace
  period, then the final ``DELETE`` with grace period 0 as the kubelet does;
- serves ``/containerLogs/NS/POD/CONTAINER`` (``follow``, ``tailLines``, ``limitBytes``) over HTTPS
  on the Nodes' kubelet port, so ``pods/log`` works through the apiserver.

It does NOT: pull or run images, isolate anything (no namespaces, cgroups, users, read-only root,
seccomp, capabilities: the security context is ignored), limit CPU or disk (``sizeLimit`` is not
enforced), run init or other containers, restart containers (``restartPolicy`` is treated as
Never), expand ``$(VAR)`` references, mount Secret/ConfigMap/projected volumes, run probes, post
Events other than that ``Failed`` one, evict pods under pressure, report metrics, or authenticate
log requests; and it talks to the apiserver as ``admin``, not as ``system:node:NAME``.

Run: ``python fake_kubelet.py RUNDIR/env WORKDIR`` (RUNDIR/env as written by scripts/cluster).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx

SPOT = "tripflow-spot"
ONDEMAND = "tripflow-ondemand"
NODES: dict[str, dict[str, Any]] = {
    ONDEMAND: {"labels": {}, "taints": []},
    SPOT: {
        "labels": {"workload": "analytics"},
        "taints": [{"key": "analytics", "value": "true", "effect": "NoSchedule"}],
    },
}
CAPACITY = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
HEARTBEAT_S = 5.0
_SUFFIX = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": 10**-3,
}  # fmt: skip


def quantity(text: str) -> float:
    """A Kubernetes quantity ("512Mi", "250m", "2") as a number."""
    text = str(text)
    for suffix in sorted(_SUFFIX, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _SUFFIX[suffix]
    return float(text)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ConfigError(Exception):
    """The container's config cannot be made (a missing Secret/ConfigMap/key)."""


def _tree_rss(root: int) -> int:
    """RSS in bytes of ``root`` and all its descendants (from /proc)."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
            for task in os.listdir(f"/proc/{pid}/task"):
                todo.extend(
                    int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()
                )
        except (OSError, ValueError, IndexError):
            continue
    return total


_PAGE = os.sysconf("SC_PAGE_SIZE")


class Pod:
    """One pod's process and what the kubelet reports about it."""

    def __init__(self, obj: dict[str, Any], folder: Path) -> None:
        self.obj = obj
        self.uid = obj["metadata"]["uid"]
        self.name = obj["metadata"]["name"]
        self.namespace = obj["metadata"]["namespace"]
        self.container = obj["spec"]["containers"][0]
        self.folder = folder
        self.log = folder / "container.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = ""
        self.oom_killed = False
        self.deleting = False
        self.done = threading.Event()
        self.lock = threading.Lock()  # deleting vs. starting the process


class FakeKubelet:
    def __init__(self, env_file: Path, workdir: Path) -> None:
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
        self.api = httpx.Client(
            base_url=env["KUBE_SERVER"],
            verify=ssl.create_default_context(cafile=env["KUBE_CA"]),
            headers={"Authorization": f"Bearer {env['KUBE_ADMIN_TOKEN']}"},
            timeout=httpx.Timeout(30.0, read=None),
        )
        self.cert, self.key = env["KUBELET_CERT"], env["KUBELET_KEY"]
        self.workdir = workdir
        self.pods: dict[str, Pod] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.port = 0
        self.ready_since = _now()

    # --- Nodes -------------------------------------------------------------------------------
    def register(self) -> None:
        for name, spec in NODES.items():
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "tripflow.io/fake-kubelet": "true",
                        **spec["labels"],
                    },
                },
                "spec": {"taints": spec["taints"]},
            }
            response = self.api.post("/api/v1/nodes", json=body)
            if response.status_code != 409:
                response.raise_for_status()
            self.heartbeat(name)

    def heartbeat(self, name: str) -> None:
        now = _now()
        status = {
            "capacity": CAPACITY,
            "allocatable": CAPACITY,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "kubeletVersion": "v1.20.2-fake",
                "kubeProxyVersion": "v1.20.2-fake",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "fake://local-processes",
                "osImage": "tripflow fake kubelet (a stand-in)",
                "kernelVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "fake kubelet (a stand-in) is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": self.ready_since,
                }
            ],
        }
        self.api.patch(
            f"/api/v1/nodes/{name}/status",
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        ).raise_for_status()

    def heartbeats(self) -> None:
        while not self.stopping.wait(HEARTBEAT_S):
            for name in NODES:
                with contextlib.suppress(httpx.HTTPError):
                    self.heartbeat(name)

    # --- Pods --------------------------------------------------------------------------------
    def watch_pods(self) -> None:
        while not self.stopping.is_set():
            try:
                listed = self.api.get("/api/v1/pods").json()
                seen = set()
                for obj in listed["items"]:
                    seen.add(obj["metadata"]["uid"])
                    self.on_pod(obj)
                with self.lock:
                    gone = [uid for uid in self.pods if uid not in seen]
                for uid in gone:
                    self.on_gone(uid)
                version = listed["metadata"]["resourceVersion"]
                params = {"watch": "1", "resourceVersion": version, "timeoutSeconds": "60"}
                with self.api.stream("GET", "/api/v1/pods", params=params) as stream:
                    for line in stream.iter_lines():
                        if not line:
                            continue
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            break
                        if event["type"] == "DELETED":
                            self.on_gone(event["object"]["metadata"]["uid"])
                        else:
                            self.on_pod(event["object"])
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                print(f"fake-kubelet: pod watch restarts ({type(exc).__name__})", flush=True)
                time.sleep(1)

    def on_pod(self, obj: dict[str, Any]) -> None:
        if obj["spec"].get("nodeName") not in NODES:
            return
        uid = obj["metadata"]["uid"]
        with self.lock:
            pod = self.pods.get(uid)
            if pod is None:
                if obj["status"].get("phase") in ("Succeeded", "Failed"):
                    return  # finished before this kubelet started
                pod = self.pods[uid] = Pod(obj, self.workdir / "pods" / uid)
                threading.Thread(target=self.run_pod, args=(pod,), daemon=True).start()
            pod.obj = obj
        if obj["metadata"].get("deletionTimestamp"):
            with pod.lock:
                first, pod.deleting = not pod.deleting, True
            if first:
                threading.Thread(target=self.delete_pod, args=(pod,), daemon=True).start()

    def on_gone(self, uid: str) -> None:
        with self.lock:
            pod = self.pods.pop(uid, None)
        if pod is None:
            return
        with pod.lock:  # a process not yet started never starts (``run_pod`` checks ``deleting``)
            pod.deleting = True
            if pod.proc is not None and pod.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pod.proc.pid, signal.SIGKILL)

    def report(self, pod: Pod, phase: str, state: dict[str, Any], ready: bool = False) -> None:
        now = _now()
        ready_status = "True" if ready else "False"
        status = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": pod.obj["status"].get("startTime") or now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready_status, "lastTransitionTime": now},
                {"type": "Ready", "status": ready_status, "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": pod.container["name"],
                    "image": pod.container.get("image", ""),
                    "imageID": "",
                    "ready": ready,
                    "restartCount": 0,
                    "started": ready,
                    "state": state,
                }
            ],
        }
        with contextlib.suppress(httpx.HTTPError):
            self.api.patch(
                f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status",
                json={"metadata": {"uid": pod.uid}, "status": status},
                headers={"Content-Type": "application/merge-patch+json"},
            )

    def event(self, pod: Pod, reason: str, message: str) -> None:
        now = _now()
        body = {
            "metadata": {"generateName": f"{pod.name}.", "namespace": pod.namespace},
            "involvedObject": {
                "kind": "Pod",
                "namespace": pod.namespace,
                "name": pod.name,
                "uid": pod.uid,
                "apiVersion": "v1",
                "fieldPath": f"spec.containers{{{pod.container['name']}}}",
            },
            "reason": reason,
            "message": message,
            "type": "Warning",
            "source": {"component": "kubelet", "host": pod.obj["spec"]["nodeName"]},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with contextlib.suppress(httpx.HTTPError):
            self.api.post(f"/api/v1/namespaces/{pod.namespace}/events", json=body)

    def _object(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        response = self.api.get(f"/api/v1/namespaces/{namespace}/{kind}/{name}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def _ref(self, kind: str, ref: dict[str, Any], namespace: str) -> str | None:
        singular = "secret" if kind == "secrets" else "configmap"
        obj = self._object(kind, namespace, ref["name"])
        if obj is None:
            if ref.get("optional"):
                return None
            raise ConfigError(f'{singular} "{ref["name"]}" not found')
        data = obj.get("data") or {}
        if ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise ConfigError(
                f"couldn't find key {ref['key']} in {singular} {namespace}/{ref['name']}"
            )
        value = data[ref["key"]]
        if kind == "secrets":
            import base64

            value = base64.b64decode(value).decode()
        return str(value)

    def _field(self, pod: Pod, path: str) -> str:
        meta = pod.obj["metadata"]
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": pod.obj["spec"].get("nodeName", ""),
            "spec.serviceAccountName": pod.obj["spec"].get("serviceAccountName", ""),
            "status.hostIP": "127.0.0.1",
            "status.podIP": "127.0.0.1",
        }
        if path in simple:
            return str(simple[path])
        for prefix, mapping in (
            ("metadata.labels", "labels"),
            ("metadata.annotations", "annotations"),
        ):
            if path.startswith(prefix + "['"):
                return str((meta.get(mapping) or {}).get(path[len(prefix) + 2 : -2], ""))
        raise ConfigError(f"unsupported fieldRef {path}")

    def _resource(self, ref: dict[str, Any], resources: dict[str, Any]) -> str:
        section, _, name = ref["resource"].partition(".")
        value = (resources.get(section) or {}).get(name)
        if value is None and section == "limits":
            value = CAPACITY.get(name)  # no limit: the node's allocatable, as the kubelet does
        if value is None:
            return "0"
        divisor = quantity(ref.get("divisor") or "1")
        return str(math.ceil(quantity(value) / divisor - 1e-9))

    def environment(self, pod: Pod, mounts: dict[str, Path]) -> dict[str, str]:
        c = pod.container
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(pod.folder),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
        }
        if "/tmp" in mounts:
            env["TMPDIR"] = str(mounts["/tmp"])
        for source in c.get("envFrom") or []:
            kind, ref = (
                ("secrets", source["secretRef"])
                if "secretRef" in source
                else ("configmaps", source["configMapRef"])
            )
            obj = self._object(kind, pod.namespace, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind[:-1]} "{ref["name"]}" not found')
            for key, value in (obj.get("data") or {}).items():
                if kind == "secrets":
                    import base64

                    value = base64.b64decode(value).decode()
                env[source.get("prefix", "") + key] = value
        for var in c.get("env") or []:
            source = var.get("valueFrom")
            if source is None:
                value: str | None = var.get("value", "")
            elif "secretKeyRef" in source:
                value = self._ref("secrets", source["secretKeyRef"], pod.namespace)
            elif "configMapKeyRef" in source:
                value = self._ref("configmaps", source["configMapKeyRef"], pod.namespace)
            elif "fieldRef" in source:
                value = self._field(pod, source["fieldRef"]["fieldPath"])
            else:
                value = self._resource(source["resourceFieldRef"], c.get("resources") or {})
            if value is not None:
                env[var["name"]] = _remap(value, mounts)
        return env

    def run_pod(self, pod: Pod) -> None:
        pod.folder.mkdir(parents=True, exist_ok=True)
        volumes = {v["name"]: v for v in pod.obj["spec"].get("volumes") or []}
        mounts: dict[str, Path] = {}
        for mount in pod.container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"], {})
            if "hostPath" in volume:
                mounts[mount["mountPath"]] = Path(volume["hostPath"]["path"])
            else:
                folder = pod.folder / mount["name"]
                folder.mkdir(exist_ok=True)
                mounts[mount["mountPath"]] = folder
        waiting_reported = ""
        while True:
            if pod.deleting or self.stopping.is_set():
                pod.done.set()
                return
            try:
                env = self.environment(pod, mounts)
                break
            except ConfigError as exc:
                if waiting_reported != str(exc):
                    waiting_reported = str(exc)
                    self.report(
                        pod,
                        "Pending",
                        {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}},
                    )
                    self.event(pod, "Failed", f"Error: {exc}")
                time.sleep(2)
            except httpx.HTTPError:
                time.sleep(1)
        argv = [*(pod.container.get("command") or []), *(pod.container.get("args") or [])]
        argv = [_remap(a, mounts) for a in argv]
        if argv and argv[0] == "prefect":
            argv = [sys.executable, "-m", "prefect", *argv[1:]]
        cwd = pod.container.get("workingDir")
        cwd_path = Path(_remap(cwd, mounts)) if cwd else pod.folder
        with pod.lock, open(pod.log, "wb") as log:
            # Checked under the pod's lock, which ``stop`` takes too: a pod whose process would
            # start while the kubelet stops is never started (it would outlive the session).
            if pod.deleting or self.stopping.is_set():
                pod.done.set()
                return
            pod.proc = subprocess.Popen(
                argv, cwd=cwd_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        pod.started = _now()
        self.report(pod, "Running", {"running": {"startedAt": pod.started}}, ready=True)
        limit = (pod.container.get("resources") or {}).get("limits", {}).get("memory")
        limit_bytes = quantity(limit) if limit else None
        while pod.proc.poll() is None:
            if limit_bytes and _tree_rss(pod.proc.pid) > limit_bytes:
                pod.oom_killed = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pod.proc.pid, signal.SIGKILL)
                pod.proc.wait()
                break
            time.sleep(0.2)
        # The container's other processes go with it (a container's PID namespace ends).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pod.proc.pid, signal.SIGKILL)
        code = pod.proc.returncode
        code = 128 - code if code < 0 else code
        reason = "OOMKilled" if pod.oom_killed else ("Completed" if code == 0 else "Error")
        terminated = {
            "exitCode": 137 if pod.oom_killed else code,
            "reason": reason,
            "startedAt": pod.started,
            "finishedAt": _now(),
        }
        self.report(pod, "Succeeded" if code == 0 else "Failed", {"terminated": terminated})
        pod.done.set()

    def delete_pod(self, pod: Pod) -> None:
        grace = pod.obj["metadata"].get("deletionGracePeriodSeconds")
        if grace is None:
            grace = pod.obj["spec"].get("terminationGracePeriodSeconds", 30)
        with pod.lock:
            proc = pod.proc  # None: never started, and now never will be
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        pod.done.wait(timeout=10)
        with contextlib.suppress(httpx.HTTPError):
            self.api.request(
                "DELETE",
                f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}",
                json={"gracePeriodSeconds": 0, "preconditions": {"uid": pod.uid}},
            )

    # --- Logs --------------------------------------------------------------------------------
    def log_lines(self, namespace: str, name: str, query: dict[str, list[str]]) -> Iterator[bytes]:
        with self.lock:
            pod = next(
                (p for p in self.pods.values() if (p.namespace, p.name) == (namespace, name)),
                None,
            )
        if pod is None or not pod.log.exists():
            return
        follow = query.get("follow", ["false"])[0] == "true"
        tail = int(query["tailLines"][0]) if "tailLines" in query else None
        limit = int(query["limitBytes"][0]) if "limitBytes" in query else None
        sent = 0
        with open(pod.log, "rb") as log:
            lines = log.readlines()
            if tail is not None:
                lines = lines[-tail:] if tail else []
            for line in lines:
                if limit is not None and sent + len(line) > limit:
                    yield line[: limit - sent]
                    return
                sent += len(line)
                yield line
            while follow and not self.stopping.is_set():
                line = log.readline()
                if line:
                    yield line
                elif pod.done.is_set():
                    rest = log.read()
                    if rest:
                        yield rest
                    return
                else:
                    time.sleep(0.2)

    def serve_logs(self) -> ThreadingHTTPServer:
        kubelet = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                url = urlparse(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in kubelet.log_lines(parts[1], parts[2], parse_qs(url.query)):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            pods = list(self.pods.values())
        for pod in pods:
            # Under the pod's lock: a process being started now is started before this looks
            # (and is killed), or sees ``stopping`` and is never started.
            with pod.lock:
                if pod.proc is not None and pod.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pod.proc.pid, signal.SIGKILL)


def _remap(value: str, mounts: dict[str, Path]) -> str:
    """``value`` with a volume's mountPath prefix replaced by the folder it is mapped to."""
    for mount_path, folder in sorted(mounts.items(), key=lambda m: -len(m[0])):
        if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
            return str(folder) + value[len(mount_path.rstrip("/")) :]
    return value


def main() -> None:
    kubelet = FakeKubelet(Path(sys.argv[1]), Path(sys.argv[2]))
    kubelet.serve_logs()
    kubelet.register()
    threading.Thread(target=kubelet.heartbeats, daemon=True).start()
    threading.Thread(target=kubelet.watch_pods, daemon=True).start()
    print(
        f"fake-kubelet (a stand-in): nodes {', '.join(NODES)} on log port {kubelet.port}",
        flush=True,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    kubelet.stop()


if __name__ == "__main__":
    main()
