"""tests/cluster: the shipped Kubernetes configuration on a REAL Kubernetes 1.20 control plane.

Session fixtures, each built on the previous one:

- ``control_plane``: ``scripts/cluster build`` (builds etcd/apiserver/controller-manager/scheduler
  into the cache when it is empty — minutes — and fails the tests with its output if it cannot),
  then ``scripts/cluster start`` on 127.0.0.1.
- ``kubelet``: fake_kubelet.py, the one STAND-IN (see its docstring), with its two Nodes Ready.
- ``cluster``: namespace ``data-pipeline``; the SHIPPED work_pools/rbac.yaml and
  service-accounts.yaml applied unchanged; the PII-key Secret created as an operator would; a
  kubeconfig holding the ``tripflow-worker`` ServiceAccount's token (its Role, nothing more).
- ``deployed``: S3 staging on moto's server (a stand-in for Amazon S3, tests/storage/s3stand.py)
  with the bucket of the shipped ``TRIPFLOW_STAGING``; the ``tripflow`` TripWarehouse block; the
  pool from the SHIPPED work_pools/kubernetes.json; the real ``prefect worker`` authenticated as
  the worker's ServiceAccount with worker-values.yaml's env; ``prefect deploy --all`` of the
  SHIPPED prefect.yaml with only the overrides of overrides.py applied (to a copy).

The Prefect server is the session's (tests/conftest.py ``prefect_server``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cluster import overrides
from helpers import ROOT, prefect_cli, shared_folder
from ops.conftest import receiver  # noqa: F401 - the local webhook receiver, a fixture
from storage.s3stand import DUMMY_KEYS, S3
from storage.s3stand import start as start_s3

NAMESPACE = "data-pipeline"
POOL = "tripflow-k8s"
WORKER_SA = "tripflow-worker"
PII_SECRET = "tripflow-pii-key"
NODES = ("tripflow-ondemand", "tripflow-spot")
SCRIPT = ROOT / "scripts" / "cluster"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/" in str(item.fspath) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(1800))


@dataclass
class Kube:
    """A client of the apiserver with one identity (admin, or the worker's ServiceAccount)."""

    client: httpx.Client

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        response = self.client.get(path, params=params)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def status(self, method: str, path: str, body: Any = None, **params: Any) -> int:
        return self.client.request(method, path, json=body, params=params).status_code

    def jobs(self, **params: Any) -> list[dict[str, Any]]:
        found = self.get(f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs", **params)["items"]
        return found  # type: ignore[no-any-return]

    def pods(self, **params: Any) -> list[dict[str, Any]]:
        return self.get(f"/api/v1/namespaces/{NAMESPACE}/pods", **params)["items"]  # type: ignore[no-any-return]

    def events(self, **params: Any) -> list[dict[str, Any]]:
        return self.get(f"/api/v1/namespaces/{NAMESPACE}/events", **params)["items"]  # type: ignore[no-any-return]


def _client(server: str, ca: str, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server,
        verify=ssl.create_default_context(cafile=ca),
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


@dataclass
class ControlPlane:
    run: Path
    env: dict[str, str]
    admin: Kube

    def kubeconfig(self, path: Path, token: str) -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "local",
                            "cluster": {
                                "server": self.env["KUBE_SERVER"],
                                "certificate-authority": self.env["KUBE_CA"],
                            },
                        }
                    ],
                    "users": [{"name": "user", "user": {"token": token}}],
                    "contexts": [
                        {"name": "local", "context": {"cluster": "local", "user": "user"}}
                    ],
                    "current-context": "local",
                }
            )
        )
        return path


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    t0 = time.monotonic()
    built = subprocess.run([str(SCRIPT), "build"], capture_output=True, text=True, check=False)
    if built.returncode != 0:
        pytest.fail(f"scripts/cluster build failed:\n{built.stdout}\n{built.stderr}"[-6000:])
    print(f"\n[cluster] build step: {time.monotonic() - t0:.1f} s\n{built.stderr[-600:]}")
    run = tmp_path_factory.mktemp("k8s")
    t0 = time.monotonic()
    started = subprocess.run(
        [str(SCRIPT), "start", str(run)], capture_output=True, text=True, check=False
    )
    if started.returncode != 0:
        subprocess.run([str(SCRIPT), "stop", str(run)], check=False)
        pytest.fail(f"scripts/cluster start failed:\n{started.stderr}"[-6000:])
    print(f"[cluster] control plane started in {time.monotonic() - t0:.1f} s")
    env = dict(line.split("=", 1) for line in (run / "env").read_text().splitlines() if "=" in line)
    admin = Kube(_client(env["KUBE_SERVER"], env["KUBE_CA"], env["KUBE_ADMIN_TOKEN"]))
    try:
        yield ControlPlane(run, env, admin)
    finally:
        admin.client.close()
        subprocess.run([str(SCRIPT), "stop", str(run)], check=False)


def _stop(proc: subprocess.Popen[bytes], signals: int = 1) -> None:
    for _ in range(signals):
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=15)


@dataclass
class Kubelet:
    proc: subprocess.Popen[bytes]
    workdir: Path
    log: Path


@pytest.fixture(scope="session")
def kubelet(control_plane: ControlPlane) -> Iterator[Kubelet]:
    """The fake kubelet (a STAND-IN), its two Nodes Ready and schedulable."""
    workdir = control_plane.run / "kubelet"
    workdir.mkdir()
    log = control_plane.run / "logs" / "fake-kubelet.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).parent / "fake_kubelet.py"),
             str(control_plane.run / "env"), str(workdir)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            nodes = {
                n["metadata"]["name"]: n for n in control_plane.admin.get("/api/v1/nodes")["items"]
            }
            if all(_schedulable(nodes.get(name)) for name in NODES):
                break
            assert time.monotonic() < deadline, f"nodes not schedulable: {json.dumps(nodes)[:3000]}"
            time.sleep(1)
        yield Kubelet(proc, workdir, log)
    finally:
        _stop(proc)


def _schedulable(node: dict[str, Any] | None) -> bool:
    """Ready, and the node-lifecycle controller has lifted its not-ready taint."""
    if node is None:
        return False
    ready = [c for c in node.get("status", {}).get("conditions", []) if c["type"] == "Ready"]
    taints = {t["key"] for t in node["spec"].get("taints") or []}
    return (
        bool(ready)
        and ready[0]["status"] == "True"
        and not any(t.startswith("node.kubernetes.io/") for t in taints)
    )


_PATHS = {
    "Namespace": "/api/v1/namespaces",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "Secret": "/api/v1/namespaces/{ns}/secrets",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
}


def apply(kube: Kube, obj: dict[str, Any]) -> None:
    """Create ``obj`` (as ``kubectl create`` would) through the admin identity."""
    path = _PATHS[obj["kind"]].format(ns=obj["metadata"].get("namespace", ""))
    response = kube.client.post(path, json=obj)
    assert response.status_code in (201, 409), response.text


def create_pii_secret(kube: Kube) -> None:
    """``kubectl -n data-pipeline create secret generic tripflow-pii-key --from-literal=key=…``"""
    key = base64.b64encode(secrets.token_hex(32).encode()).decode()
    apply(
        kube,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": PII_SECRET, "namespace": NAMESPACE},
            "type": "Opaque",
            "data": {"key": key},
        },
    )


@dataclass
class Cluster:
    control_plane: ControlPlane
    kubelet: Kubelet
    admin: Kube
    worker: Kube  # as the tripflow-worker ServiceAccount
    worker_kubeconfig: Path
    folder: Path


@pytest.fixture(scope="session")
def cluster(control_plane: ControlPlane, kubelet: Kubelet) -> Iterator[Cluster]:
    admin = control_plane.admin
    apply(admin, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    for name in ("rbac.yaml", "service-accounts.yaml"):
        for obj in yaml.safe_load_all((ROOT / "work_pools" / name).read_text()):
            apply(admin, obj)
    create_pii_secret(admin)
    # The tokens controller (controller-manager) gives the ServiceAccount a token Secret.
    deadline = time.monotonic() + 60
    while True:
        sa = admin.get(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{WORKER_SA}")
        if sa.get("secrets"):
            break
        assert time.monotonic() < deadline, "no token Secret for the worker's ServiceAccount"
        time.sleep(0.5)
    secret = admin.get(f"/api/v1/namespaces/{NAMESPACE}/secrets/{sa['secrets'][0]['name']}")
    token = base64.b64decode(secret["data"]["token"]).decode()
    folder = control_plane.run / "tripflow"
    folder.mkdir()
    kubeconfig = control_plane.kubeconfig(folder / "worker.kubeconfig", token)
    env = control_plane.env
    worker = Kube(_client(env["KUBE_SERVER"], env["KUBE_CA"], token))
    try:
        yield Cluster(control_plane, kubelet, admin, worker, kubeconfig, folder)
    finally:
        worker.client.close()


@dataclass
class Deployed:
    cluster: Cluster
    s3: S3
    warehouse: Path
    worker: subprocess.Popen[bytes]
    worker_log: Path
    shipped: dict[str, Any]
    patched: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def admin(self) -> Kube:
        return self.cluster.admin

    def deployment(self, name: str) -> dict[str, Any]:
        return next(d for d in self.patched["deployments"] if d["name"] == name)


def _save_warehouse_block(path: Path) -> None:
    from tasks.warehouses.blocks import TripWarehouse

    TripWarehouse(target="duckdb", path=str(path)).save(overrides.WAREHOUSE_BLOCK, overwrite=True)


async def _delete_deployments_and_pool(names: list[str]) -> None:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        for name in names:
            with contextlib.suppress(ObjectNotFound):
                found = await client.read_deployment_by_name(name)
                await client.delete_deployment(found.id)
        with contextlib.suppress(ObjectNotFound):
            await client.delete_work_pool(POOL)


@pytest.fixture(scope="session")
def deployed(
    prefect_server: str, cluster: Cluster, monkeypatch_session: pytest.MonkeyPatch
) -> Iterator[Deployed]:
    for name, value in DUMMY_KEYS.items():
        monkeypatch_session.setenv(name, value)
    monkeypatch_session.setenv("AWS_EC2_METADATA_DISABLED", "true")
    s3 = start_s3()
    s3.make_bucket(overrides.STAGING_BUCKET)
    folder = cluster.folder
    # The STAND-IN for a shared warehouse: one DuckDB file every pod (a local process) reaches.
    # Outside /tmp: with stage pods, a DuckDB file under a pod's own emptyDir mounts (/tmp,
    # /home/tripflow) is refused as one no other pod could share (tasks/pod.py).
    shared = shared_folder("cluster-warehouse")
    warehouse = shared / "warehouse.duckdb"
    prefect_cli("block", "register", "-m", "tasks.warehouses.blocks")
    _save_warehouse_block(warehouse)

    prefect_cli(
        "work-pool", "create", POOL, "--type", "kubernetes",
        "--base-job-template", str(ROOT / "work_pools" / "kubernetes.json"), "--overwrite",
    )  # fmt: skip
    shipped = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    patched = overrides.patch_prefect_yaml(
        shipped, ROOT, overrides.staging_env(s3.endpoint, DUMMY_KEYS)
    )
    patched_file = folder / "prefect.yaml"
    patched_file.write_text(yaml.safe_dump(patched, sort_keys=False))
    deployments = [f"{_flow_name(d)}/{d['name']}" for d in patched["deployments"]]

    values = yaml.safe_load((ROOT / "work_pools" / "worker-values.yaml").read_text())
    worker_env = {
        **os.environ,
        **overrides.worker_env(values, folder / "worker-home"),
        "KUBECONFIG": str(cluster.worker_kubeconfig),
    }
    worker_env.pop("KUBERNETES_SERVICE_HOST", None)
    config = values["worker"]["config"]
    worker_log = folder / "worker.log"
    with open(worker_log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", config["workPool"],
             "--type", config["type"], "--limit", str(config["limit"])],
            cwd=folder, env=worker_env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
             "--prefect-file", str(patched_file)],
            cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=600,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        yield Deployed(cluster, s3, warehouse, worker, worker_log, shipped, patched)
    finally:
        _stop(worker, signals=2)
        asyncio.run(_delete_deployments_and_pool(deployments))
        s3.stop()
        shutil.rmtree(shared, ignore_errors=True)


def _flow_name(deployment: dict[str, Any]) -> str:
    """The flow's name of a deployment's entrypoint (e.g. daily-trip-etl)."""
    import importlib

    path, function = deployment["entrypoint"].split(":")
    module = path.removesuffix(".py").replace("/", ".")
    flow_obj = getattr(importlib.import_module(module), function)
    return str(flow_obj.name)


@pytest.fixture(scope="session")
def monkeypatch_session() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


class Recorder:
    """Every Job and pod of the namespace seen by a watch (admin), with when each was deleted.

    Jobs go away by their TTL while a day still runs: a test reads them from here, not from the
    apiserver at the end.
    """

    def __init__(self, admin: Kube) -> None:
        self.admin = admin
        self.objects: dict[str, dict[str, Any]] = {}  # uid -> last seen object
        self.deleted: dict[str, float] = {}  # uid -> time.time() of the DELETED event
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._watch, args=(path,), daemon=True)
            for path in (f"/apis/batch/v1/namespaces/{NAMESPACE}/jobs",
                         f"/api/v1/namespaces/{NAMESPACE}/pods")
        ]  # fmt: skip

    def __enter__(self) -> Recorder:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()

    def _watch(self, path: str) -> None:
        while not self.stop.is_set():
            try:
                listed = self.admin.get(path)
                for obj in listed["items"]:
                    self.objects[obj["metadata"]["uid"]] = {**obj, "kind": _kind(path)}
                params = {"watch": "1", "resourceVersion": listed["metadata"]["resourceVersion"],
                          "timeoutSeconds": "30"}  # fmt: skip
                with self.admin.client.stream("GET", path, params=params, timeout=None) as stream:
                    for line in stream.iter_lines():
                        if self.stop.is_set():
                            return
                        if not line:
                            continue
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            break
                        obj = {**event["object"], "kind": _kind(path)}
                        self.objects[obj["metadata"]["uid"]] = obj
                        if event["type"] == "DELETED":
                            self.deleted[obj["metadata"]["uid"]] = time.time()
            except (httpx.HTTPError, ValueError):
                time.sleep(0.5)

    def of_flow_run(self, kind: str, flow_run_id: Any) -> list[dict[str, Any]]:
        return [
            o
            for o in list(self.objects.values())
            if o["kind"] == kind
            and o["metadata"].get("labels", {}).get("prefect.io/flow-run-id") == str(flow_run_id)
        ]


def _kind(path: str) -> str:
    return "Job" if path.endswith("/jobs") else "Pod"


async def _read_flow_run(flow_run_id: Any) -> Any:
    from prefect import get_client

    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


async def _child_runs(flow_run_id: Any) -> list[Any]:
    """The flow runs started by ``flow_run_id`` (its stage runs), oldest first."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
    return sorted(runs, key=lambda r: r.created)


def iso_seconds(text: str) -> float:
    """A Kubernetes timestamp (``2026-12-06T05:00:00Z``) as seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def wait_final(deployed: Deployed, flow_run_id: Any, timeout: float) -> Any:
    """The flow run once final (the worker must stay up meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        run = asyncio.run(_read_flow_run(flow_run_id))
        if run.state is not None and run.state.is_final():
            return run
        assert deployed.worker.poll() is None, deployed.worker_log.read_text()[-3000:]
        assert time.monotonic() < deadline, (
            f"flow run still {run.state.name if run.state else None} after {timeout} s"
        )
        time.sleep(1)


def child_runs(flow_run_id: Any) -> list[Any]:
    return asyncio.run(_child_runs(flow_run_id))


def run_deployment_cli(name: str, *args: str) -> Any:
    """``prefect deployment run NAME ARGS…``: the new flow run's id."""
    import re
    import uuid

    done = prefect_cli("deployment", "run", name, *args)
    found = re.search(r"UUID:\s*([0-9a-f-]{36})", done.stdout)
    assert found, done.stdout
    return uuid.UUID(found.group(1))
