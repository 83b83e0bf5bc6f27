"""tests/ops: automations, the process work pool end to end, the janitor.

Uses the session's real Prefect server (``prefect_server`` in tests/conftest.py): it is started
with ``prefect server start``, whose services (triggers, actions, event persister, ...) are all on
by default in Prefect 3.9.1 (``PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED`` and
``PREFECT_SERVER_SERVICES_ACTIONS_ENABLED`` default to true), so automations fire on it. Every
test here removes what it created on that shared server (automations, blocks, deployments, pool).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Received:
    at: float  # time.time() when the POST arrived
    path: str
    body: dict[str, Any]


@dataclass
class Receiver:
    """A local HTTP receiver (127.0.0.1) recording every POST: where notifications land."""

    url: str
    posts: list[Received] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, predicate: Callable[[Received], bool], timeout: float) -> Received:
        """The first POST matching ``predicate``, waiting up to ``timeout`` seconds for it."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for post in self.posts:
                    if predicate(post):
                        return post
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [p.body.get("subject") for p in self.posts]
                    raise AssertionError(f"no matching notification in {timeout}s; got {seen}")
                self.changed.wait(left)

    def add_listener(self, callback: Callable[[Received], None]) -> None:
        self._listeners.append(callback)

    def __post_init__(self) -> None:
        self._listeners: list[Callable[[Received], None]] = []

    def record(self, post: Received) -> None:
        with self.changed:
            self.posts.append(post)
            self.changed.notify_all()
        for listener in list(self._listeners):
            listener(post)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            at = time.time()
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = {"raw": raw.decode("utf-8", "replace")}
            holder[0].record(Received(at, self.path, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(Receiver(url=f"http://127.0.0.1:{server.server_address[1]}/notify"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()
    server.server_close()
