"""Per-stage wall time and peak memory, and the progress events the CLI shows.

``ru_maxrss`` only grows, so each stage resets the kernel's high-water mark (writing ``5`` to
``/proc/self/clear_refs``) when it starts and reads ``VmHWM`` from ``/proc/self/status`` when it
ends.
Where that is not allowed, the figure falls back to ``ru_maxrss``, the process's peak since it
started (an upper bound for the stage), and says so: every measure carries ``peak_rss_method``
(``VmHWM`` or ``ru_maxrss``), in ``--json``'s stages, the ledger and the cost report.

Before the reset, memory the allocators kept from the stage before is handed back to the system
(glibc's ``malloc_trim``, Arrow's pool): stages that share a process (``tripflow run``) would
otherwise each start from the last one's high-water mark (the ADBC reader's buffers alone kept
~190 MB after an 8M-trip extract).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, cast

from tasks.pod import PodResources, current_pod
from tasks.warehouses.base import Usage

Listener = Callable[[str, str, dict[str, object]], None]
_listeners: list[Listener] = []
_lock = threading.Lock()


def add_listener(listener: Listener) -> None:
    """Receive ``(event, stage, info)`` for every stage start (``"start"``) and end (``"end"``),
    and ``"rows"`` as a stage writes rows (``info["rows"]``: how many more)."""
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def rows_done(stage: str, rows: int) -> None:
    """``rows`` more rows of ``stage`` are written (a ``"rows"`` event: progress on a terminal)."""
    notify("rows", stage, {"rows": rows})


def notify(event: str, stage: str, info: dict[str, object]) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(event, stage, info)


@dataclass
class StageMeasure:
    name: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    #: ``VmHWM`` (the stage's own peak) or ``ru_maxrss`` (the process's, since it started).
    method: str = "VmHWM"
    failed: bool = False
    #: What the warehouse's queries in this stage processed and billed (where it reports bytes).
    warehouse: Usage = field(default_factory=Usage)
    #: The pod the stage ran in (its requests and limits, from the downward API); None locally.
    pod: PodResources | None = field(default_factory=current_pod)

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "seconds": round(self.seconds, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "peak_rss_method": self.method,
            "cpu_seconds": round(self.cpu_seconds, 3),
        }
        if self.warehouse.bytes_processed is not None:
            out["warehouse_bytes_processed"] = self.warehouse.bytes_processed
        if self.warehouse.bytes_billed is not None:
            out["warehouse_bytes_billed"] = self.warehouse.bytes_billed
        if self.pod is not None:
            out["pod"] = self.pod.as_dict()
        return out


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, looked up once (``find_library`` runs ``ldconfig``)."""
    name = ctypes.util.find_library("c")
    try:
        return None if name is None else cast("Callable[[int], int]", ctypes.CDLL(name).malloc_trim)
    except (OSError, AttributeError):
        return None


def release_memory() -> None:
    """Give memory the allocators cache back to the system (best effort; Linux glibc only)."""
    pyarrow = sys.modules.get("pyarrow")  # not loaded: its pool holds nothing
    if pyarrow is not None:
        pyarrow.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


#: How a stage's peak memory was measured: the kernel's high-water mark since the stage's reset,
#: or (where that reset or ``/proc`` is not allowed) the process's peak since it started.
VMHWM: Final = "VmHWM"
RU_MAXRSS: Final = "ru_maxrss"


def peak_rss() -> tuple[float, str]:
    """The process's peak RSS since the last reset, in MiB, and how it was read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, VMHWM
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, RU_MAXRSS


def peak_rss_mb() -> float:
    """The process's peak RSS since the last reset, in MiB."""
    return peak_rss()[0]


@contextmanager
def measure(stage: str) -> Iterator[StageMeasure]:
    """Time a stage and its peak memory; tell the listeners when it starts and ends."""
    result = StageMeasure(stage)
    release_memory()
    if not reset_peak_rss():
        result.method = RU_MAXRSS
    notify("start", stage, {})
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield result
    except BaseException as exc:
        result.failed = True
        _finish(result, wall, cpu)
        # The flow reports the stages of a failed run too.
        exc.tripflow_stage = result.as_dict()  # type: ignore[attr-defined]
        raise
    else:
        _finish(result, wall, cpu)


def _finish(result: StageMeasure, wall: float, cpu: float) -> None:
    result.seconds = time.perf_counter() - wall
    result.cpu_seconds = time.process_time() - cpu
    result.peak_rss_mb, read = peak_rss()
    if read == RU_MAXRSS:  # reset allowed but VmHWM unreadable: the process's peak all the same
        result.method = RU_MAXRSS
    notify("end", result.name, {**result.as_dict(), "failed": result.failed})
