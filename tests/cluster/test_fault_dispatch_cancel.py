"""The fix behind test_fault_daily_killed.py, in isolation (no cluster, no server): when the daily
run ends while its stage run is still running (its pod's SIGTERM surfaces as Prefect's
``TerminationSignal`` in the waiting loop), ``flows.stages.run_stage`` cancels the stage run
and waits for it to be final before the error goes on (and the day's lock with it).

The Prefect client and ``run_deployment`` are replaced by a small in-memory STAND-IN that records
what is asked of it; the live test proves the same on the real control plane.
"""

from __future__ import annotations

import signal
import time
import uuid
from datetime import date
from types import SimpleNamespace
from typing import Any

import pytest
from prefect.exceptions import TerminationSignal
from prefect.states import Cancelled, Running, State

from flows import stages as dispatch


class _Server:
    """A stage run's state as the server holds it; the 'worker' ends a Cancelling run later."""

    def __init__(self) -> None:
        self.id = uuid.uuid4()
        self.state: State[Any] = Running()
        self.asked: list[str] = []
        self.reads_after_cancel = 0

    def run(self) -> Any:
        return SimpleNamespace(id=self.id, state=self.state)


class _Client:
    def __init__(self, server: _Server) -> None:
        self.server = server

    def __enter__(self) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read_flow_run(self, flow_run_id: uuid.UUID) -> Any:
        assert flow_run_id == self.server.id
        if self.server.asked:
            self.server.reads_after_cancel += 1
            if self.server.reads_after_cancel >= 3:  # the worker deleted the Job: Cancelled
                self.server.state = Cancelled()
        return self.server.run()

    def set_flow_run_state(self, flow_run_id: uuid.UUID, state: State[Any]) -> None:
        assert flow_run_id == self.server.id
        self.server.asked.append(state.type.value)
        self.server.state = state


def test_daily_run_ending_mid_stage_cancels_its_stage_run_and_waits_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = _Server()
    sleeps = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:  # the daily pod's SIGTERM, while it waits on its stage
            raise TerminationSignal(signal.SIGTERM)

    def run_deployment(name: str, parameters: dict[str, Any], **kwargs: Any) -> Any:
        if kwargs.get("timeout") != 0:  # waiting inside run_deployment: the signal comes there
            while True:
                sleep(5)
        return server.run()

    # raising=False: without the fix, dispatch has no time or get_client of its own.
    clock = SimpleNamespace(sleep=sleep, monotonic=time.monotonic)
    monkeypatch.setattr(dispatch, "time", clock, raising=False)
    monkeypatch.setattr(dispatch, "run_deployment", run_deployment)
    client = _Client(server)
    monkeypatch.setattr(dispatch, "get_client", lambda sync_client: client, raising=False)
    ctx = SimpleNamespace(run_date=date(2025, 11, 3), run_id="r1", staging=None)

    with pytest.raises(TerminationSignal):
        dispatch.run_stage(ctx, "transform", {})  # type: ignore[arg-type]

    assert server.asked == ["CANCELLING"], "the stage run was not cancelled"
    assert server.state.is_final(), "the daily run let go before its stage run ended"
