"""A local STAND-IN for the BigQuery REST API: bqemulator behind a recording proxy.

Not BigQuery. ``bqemulator`` (PyPI, DuckDB-backed, SQLGlot-translated) serves BigQuery's REST API
on 127.0.0.1; the real ``google-cloud-bigquery`` client talks to it through
``client_options.api_endpoint``.
It runs for real: dataset and table DDL (``PARTITION BY`` / ``CLUSTER BY``), Parquet load jobs from
uploads and from ``gs://`` URIs (mapped onto a local folder, ``BQEMU_GCS_LOCAL_ROOT``), queries with
parameters, and multi-statement transactions with rollback.

What it does NOT model, and how the tests deal with it:

- dry-run estimates and bytes processed/billed: it reports 0. The proxy can state figures
  (``estimates``: a dry run's ``totalBytesProcessed`` for queries containing a given text;
  ``billed``: the bytes a finished query job reports), and the tests assert on the requests the
  client sent (a dry run before each query, ``maximumBytesBilled`` on each job);
- ``maximumBytesBilled`` enforcement, table expiration, IAM, quotas, concurrent-transaction
  conflicts;
- partition decorators: it refuses ``table$YYYYMMDD``. The proxy forwards a load job into
  ``run_table$YYYYMMDD`` as a load into ``run_table`` (the same thing for a table that holds one
  day, minus BigQuery's check that every row belongs to that day); the tests assert the decorator
  the client sent;
- a dry run of a multi-statement script: bqemulator 1.4.0 EXECUTES the script when asked for a
  dry run (measured: a dry-run ``INSERT`` script inserts). The proxy answers those dry runs itself
  (state DONE, statement type SCRIPT, 0 bytes or the stated estimate) and does not forward them;
- OAuth: the proxy answers ``POST /token`` (a test service account's ``token_uri``) with a
  fixed access token without checking the JWT (the tests verify its signature themselves);
- a slow job: ``hold`` makes the proxy report matching query jobs as RUNNING (and their results
  as not complete) whatever the emulator says, so a test can reach a job timeout;
- hive partitioning: it reads a ``date=...`` folder of a ``gs://`` path as a column (BigQuery
  does not without ``hivePartitioningOptions``), so the tests' GCS keys have no ``key=`` folders.

The emulator needs its own virtualenv (``duckdb==1.5.5`` beside the project's DuckDB 2) and the
DuckDB spatial extension installed beforehand under a private ``HOME`` (it cannot download it
here). ``emulator_venv()`` builds that once with ``uv`` from PyPI, cached under
``~/.cache/tripflow-bqemulator/<key>`` (the key hashes the pinned requirements and the Python).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

#: The emulator's working set, every package pinned as measured on this project's machines (the
#: emulator's SQL translation depends on sqlglot's exact version).
EMULATOR_REQUIREMENTS: Final = (
    "alembic==1.20.1",
    "annotated-doc==0.0.7",
    "annotated-types==0.8.0",
    "anyio==4.16.0",
    "asgiref==3.13.0",
    "bqemulator==1.4.0",
    "certifi==2026.10.19.post1",
    "cffi==2.1.1",
    "charset-normalizer==3.5.3",
    "click==8.5.1",
    "cryptography==50.0.2",
    "duckdb==1.5.5",
    "duckdb-extension-spatial==1.5.5",
    "duckdb-extensions==1.5.5",
    "fastapi==0.165.0",
    "fastavro==1.13.1",
    "google-api-core==2.44.0",
    "google-auth==2.63.0",
    "google-cloud-bigquery-storage==2.43.0",
    "googleapis-common-protos==1.76.0",
    "grpcio==1.85.3",
    "grpcio-health-checking==1.80.1",
    "grpcio-status==1.85.3",
    "grpcio-tools==1.80.1",
    "h11==0.16.0",
    "httpcore==1.0.9",
    "httptools==0.9.0",
    "httpx==0.28.1",
    "idna==3.20",
    "mako==1.4.3",
    "markupsafe==3.0.4",
    "numpy==2.4.6",
    "opentelemetry-api==1.45.2",
    "opentelemetry-exporter-http-transport==0.66b2",
    "opentelemetry-exporter-otlp==1.45.2",
    "opentelemetry-exporter-otlp-common==0.66b2",
    "opentelemetry-exporter-otlp-proto-common==1.45.2",
    "opentelemetry-exporter-otlp-proto-grpc==1.45.2",
    "opentelemetry-exporter-otlp-proto-http==1.45.2",
    "opentelemetry-instrumentation==0.66b2",
    "opentelemetry-instrumentation-asgi==0.66b2",
    "opentelemetry-instrumentation-fastapi==0.66b2",
    "opentelemetry-instrumentation-grpc==0.66b2",
    "opentelemetry-proto==1.45.2",
    "opentelemetry-sdk==1.45.2",
    "opentelemetry-semantic-conventions==0.66b2",
    "opentelemetry-util-http==0.66b2",
    "orjson==3.13.0",
    "packaging==26.4",
    "prometheus-client==0.26.0",
    "proto-plus==1.29.0",
    "protobuf==6.33.6",
    "pyarrow==26.0.1",
    "pyasn1==0.6.5",
    "pyasn1-modules==0.4.2",
    "pycparser==3.12",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "pydantic-settings==2.16.3",
    "pyjwt==2.15.1",
    "python-dotenv==1.2.4",
    "pytz==2026.6",
    "pyyaml==6.0.4",
    "requests==2.34.2",
    "setuptools==84.2.1",
    "sqlalchemy==2.1.9",
    "sqlglot==30.11.0",
    "starlette==1.10.0",
    "structlog==26.1.0",
    "typing-extensions==4.16.0",
    "typing-inspection==0.4.5",
    "urllib3==2.8.0",
    "uvicorn==0.54.0",
    "uvloop==0.23.0",
    "watchfiles==1.3.0",
    "websockets==17.4",
    "wrapt==2.5.2",
)  # fmt: skip
CACHE_ROOT: Final = Path(
    os.environ.get("TRIPFLOW_BQEMULATOR_CACHE", Path.home() / ".cache" / "tripflow-bqemulator")
)
START_TIMEOUT_S: Final = 60.0
#: The proxy also stands in for Google's OAuth token endpoint (a service account's ``token_uri``
#: may point here): it answers every JWT-bearer grant with this access token, and records it.
TOKEN_PATH: Final = "/token"
STANDIN_TOKEN: Final = "standin-access-token"
INSTALL_SPATIAL: Final = (
    "import duckdb, duckdb_extensions\n"
    "con = duckdb.connect()\n"
    "duckdb_extensions.import_extension('spatial', con=con)\n"
    "con.sql('LOAD spatial')\n"
)


def _uv() -> list[str]:
    """``uv`` on the PATH, else the ``uv`` module of a Python that has it."""
    found = shutil.which("uv")
    if found:
        return [found]
    for python in (sys.executable, shutil.which("python3") or "python3"):
        probe = subprocess.run([python, "-m", "uv", "--version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return [python, "-m", "uv"]
    raise RuntimeError("the BigQuery stand-in needs uv to build its virtualenv (pip install uv)")


def emulator_venv() -> Path:
    """The emulator's virtualenv (built once, then reused); its ``home/`` holds the extension."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = hashlib.sha256("\n".join((python, *EMULATOR_REQUIREMENTS)).encode()).hexdigest()[:16]
    root = CACHE_ROOT / key
    ready = root / ".ready"
    if ready.exists():
        return root
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # one builder at a time
        if ready.exists():
            return root
        shutil.rmtree(root, ignore_errors=True)
        uv = _uv()
        subprocess.run([*uv, "venv", "-q", "--python", python, str(root)], check=True)
        subprocess.run(
            [*uv, "pip", "install", "-q", "--python", str(root / "bin" / "python"),
             *EMULATOR_REQUIREMENTS],
            check=True,
        )  # fmt: skip
        (root / "home").mkdir()
        subprocess.run(
            [str(root / "bin" / "python"), "-c", INSTALL_SPATIAL],
            check=True,
            env={**_clean_env(), "HOME": str(root / "home")},
        )
        ready.write_text("\n".join(EMULATOR_REQUIREMENTS) + "\n")
    return root


def _clean_env() -> dict[str, str]:
    """The environment without this project's virtualenv or Python settings leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Recorded:
    """One request the client sent (``body``: its JSON, or a multipart upload's JSON part)."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    authorization: str | None = None

    @property
    def job_configuration(self) -> dict[str, Any] | None:
        """A ``jobs.insert`` request's ``configuration`` (query, load, copy), else None."""
        if self.method != "POST" or not self.path.rstrip("/").endswith("/jobs"):
            return None
        if not isinstance(self.body, dict):
            return None
        config = self.body.get("configuration")
        return config if isinstance(config, dict) else None


@dataclass
class Proxy:
    """The recording proxy's state: what was sent, and the figures it states for the emulator."""

    upstream: str
    requests: list[Recorded] = field(default_factory=list)
    #: (text in the query, bytes a dry run of it reports), first match wins.
    estimates: list[tuple[str, int]] = field(default_factory=list)
    #: Bytes processed and billed that a finished (non-dry-run) query job reports.
    billed: int | None = None
    #: Query jobs whose SQL contains one of these texts are reported as still RUNNING, forever.
    hold: list[str] = field(default_factory=list)
    held_jobs: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def jobs(self) -> list[dict[str, Any]]:
        """Every job configuration the client sent, in order."""
        with self.lock:
            configs = [r.job_configuration for r in self.requests]
        return [c for c in configs if c is not None]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.estimates.clear()
            self.billed = None
            self.hold.clear()
            self.held_jobs.clear()

    def script_dry_run(self, body: Any, project: str) -> dict[str, Any] | None:
        """The answer to a dry run of a multi-statement script (never forwarded), else None."""
        config = body.get("configuration") if isinstance(body, dict) else None
        if not isinstance(config, dict) or not config.get("dryRun"):
            return None
        query = (config.get("query") or {}).get("query")
        if not isinstance(query, str) or ";" not in query.strip().rstrip(";"):
            return None
        reference = dict(body.get("jobReference") or {})
        reference.setdefault("projectId", project)
        reference.setdefault("jobId", f"standin-dry-run-{uuid.uuid4().hex}")
        reference.setdefault("location", "US")
        answer = {
            "kind": "bigquery#job",
            "id": f"{reference['projectId']}:{reference['jobId']}",
            "jobReference": reference,
            "configuration": config,
            "status": {"state": "DONE"},
            "statistics": {
                "totalBytesProcessed": "0",
                "query": {"totalBytesProcessed": "0", "statementType": "SCRIPT"},
            },
        }
        return dict(self.patch(answer))

    def patch(self, payload: Any) -> Any:
        """State the configured figures in a job resource the emulator answered with."""
        if not isinstance(payload, dict):
            return payload
        job_id = (payload.get("jobReference") or {}).get("jobId")
        if payload.get("kind") == "bigquery#getQueryResultsResponse" and job_id in self.held_jobs:
            return {"kind": payload["kind"], "jobReference": payload["jobReference"],
                    "jobComplete": False}  # fmt: skip
        if payload.get("kind") != "bigquery#job":
            return payload
        config = payload.get("configuration") or {}
        query = (config.get("query") or {}).get("query")
        if not isinstance(query, str):
            return payload
        if not config.get("dryRun") and any(text in query for text in self.hold):
            self.held_jobs.add(str(job_id))
            payload["status"] = {"state": "RUNNING"}
            return payload
        stats = payload.setdefault("statistics", {})
        stats_query = stats.setdefault("query", {})
        if config.get("dryRun"):
            for text, estimate in self.estimates:
                if text in query:
                    stats["totalBytesProcessed"] = str(estimate)
                    stats_query["totalBytesProcessed"] = str(estimate)
                    break
        elif self.billed is not None and (payload.get("status") or {}).get("state") == "DONE":
            stats["totalBytesProcessed"] = str(self.billed)
            stats_query["totalBytesProcessed"] = str(self.billed)
            stats_query["totalBytesBilled"] = str(self.billed)
        return payload


_HOP_BY_HOP: Final = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "accept-encoding",
    "host",
}


def _decode_body(content_type: str, raw: bytes) -> Any:
    if not raw:
        return None
    if content_type.startswith("application/json"):
        try:
            return json.loads(raw)
        except ValueError:
            return None
    if content_type.startswith("multipart/"):
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw
        )
        for part in message.iter_parts():
            if part.get_content_type() == "application/json":
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    return json.loads(payload)
    return None


def _without_partition_decorator(body: Any, raw: bytes) -> bytes:
    """A load job's destination ``table$YYYYMMDD`` as plain ``table`` (the emulator has no
    partition decorators; for a table holding one day it is the same load, minus BigQuery's check
    that every row belongs to that day)."""
    load = (body.get("configuration") or {}).get("load") if isinstance(body, dict) else None
    destination = (load or {}).get("destinationTable") or {}
    table = destination.get("tableId")
    if not isinstance(table, str) or "$" not in table:
        return raw
    forwarded = json.loads(json.dumps(body))
    forwarded["configuration"]["load"]["destinationTable"]["tableId"] = table.split("$")[0]
    return json.dumps(forwarded).encode()


def _handler(proxy: Proxy) -> type[BaseHTTPRequestHandler]:
    upstream = urlsplit(proxy.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            content_type = self.headers.get("Content-Type", "")
            if url.path == TOKEN_PATH:
                body: Any = parse_qs(raw.decode())
            else:
                body = _decode_body(content_type, raw)
            recorded = Recorded(
                self.command, url.path, parse_qs(url.query), body, self.headers.get("Authorization")
            )
            with proxy.lock:
                proxy.requests.append(recorded)
            if url.path == TOKEN_PATH and self.command == "POST":
                token = {"access_token": STANDIN_TOKEN, "expires_in": 3600, "token_type": "Bearer"}
                self._reply(200, [("Content-Type", "application/json")], json.dumps(token))
                return
            if recorded.job_configuration is not None:
                project = url.path.split("/projects/")[-1].split("/")[0]
                answer = proxy.script_dry_run(recorded.body, project)
                if answer is not None:
                    self._reply(200, [("Content-Type", "application/json")], json.dumps(answer))
                    return
                raw = _without_partition_decorator(recorded.body, raw)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            conn = http.client.HTTPConnection(upstream.netloc, timeout=300)
            try:
                conn.request(self.command, self.path, body=raw or None, headers=headers)
                response = conn.getresponse()
                body = response.read()
                out_headers = [
                    (k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP
                ]
            finally:
                conn.close()
            if response.getheader("Content-Type", "").startswith("application/json") and body:
                with contextlib.suppress(ValueError):
                    body = json.dumps(proxy.patch(json.loads(body))).encode()
            own = f"http://127.0.0.1:{self.server.server_port}"  # type: ignore[attr-defined]
            headers_out = [
                (k, v.replace(proxy.upstream, own) if k.lower() == "location" else v)
                for k, v in out_headers
            ]
            self._reply(response.status, headers_out, body)

        def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes | str) -> None:
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

    return Handler


@dataclass
class StandIn:
    """A running stand-in: the proxy's URL (give it to the client) and what it recorded."""

    endpoint: str
    project: str
    gcs_root: Path
    proxy: Proxy


@contextlib.contextmanager
def bigquery_standin(workdir: Path, project: str = "tripflow-test") -> Iterator[StandIn]:
    """Start bqemulator on free 127.0.0.1 ports with the recording proxy in front; stop both."""
    venv = emulator_venv()
    gcs_root = workdir / "gcs"
    gcs_root.mkdir(parents=True, exist_ok=True)
    rest_port, grpc_port = _free_port(), _free_port()
    log = open(workdir / "bqemulator.log", "wb")  # noqa: SIM115 - closed below
    emulator = subprocess.Popen(
        [
            str(venv / "bin" / "bqemulator"), "start",
            "--rest-host", "127.0.0.1", "--rest-port", str(rest_port),
            "--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port),
            "--project", project, "--ephemeral", "--log-level", "warning",
        ],
        env={**_clean_env(), "HOME": str(venv / "home"), "BQEMU_GCS_LOCAL_ROOT": str(gcs_root)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    upstream = f"http://127.0.0.1:{rest_port}"
    server: ThreadingHTTPServer | None = None
    try:
        _wait_ready(emulator, f"{upstream}/bigquery/v2/projects/{project}/datasets", workdir)
        proxy = Proxy(upstream)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        yield StandIn(endpoint, project, gcs_root, proxy)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        emulator.terminate()
        try:
            emulator.wait(timeout=15)
        except subprocess.TimeoutExpired:
            emulator.kill()
            emulator.wait()
        log.close()


def _wait_ready(process: subprocess.Popen[bytes], url: str, workdir: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            text = (workdir / "bqemulator.log").read_text(errors="replace")[-4000:]
            raise RuntimeError(f"bqemulator did not start:\n{text}")
        time.sleep(0.2)
