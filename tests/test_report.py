"""Cost, right-sizing, the run history chart and ``tripflow report``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import tripflow

from tasks.chart import history_svg
from tasks.config import load_settings
from tasks.cost import recommend, run_cost, stage_cost
from tasks.history import per_day, run_rows

SETTINGS = load_settings({}, environ={})


def _pod(cpu: float, memory_gib: float, *, spot: bool = False) -> dict[str, object]:
    return {
        "cpu_request": cpu,
        "cpu_limit": cpu * 2,
        "memory_request_gib": memory_gib,
        "memory_limit_gib": memory_gib * 1.5,
        "spot": spot,
    }


def test_stage_cost_uses_the_size_of_the_pod_it_ran_in_and_spot_where_it_was() -> None:
    extract = stage_cost(
        {"name": "extract", "seconds": 3600, "peak_rss_mb": 1, "pod": _pod(0.5, 1.0)}, SETTINGS
    )
    # 0.5 vCPU and 1 GiB for an hour, on-demand
    assert extract["usd"] == pytest.approx(0.5 * 0.0316 + 1.0 * 0.0042)
    assert extract["basis"] == "pod requests" and not extract["on_spot"]
    transform = stage_cost(
        {"name": "transform", "seconds": 1800, "peak_rss_mb": 1, "pod": _pod(2, 1, spot=True)},
        SETTINGS,
    )
    on_demand = 0.5 * (2 * 0.0316 + 1 * 0.0042)
    assert transform["on_demand_usd"] == pytest.approx(on_demand)
    assert transform["usd"] == pytest.approx(on_demand * 0.3) and transform["on_spot"]


def test_a_stage_that_ran_in_no_pod_is_costed_by_its_use_and_says_so() -> None:
    local = stage_cost(
        {"name": "transform", "seconds": 3600, "cpu_seconds": 1800, "peak_rss_mb": 512}, SETTINGS
    )
    assert local["basis"] == "measured use (not in a pod)"
    assert local["requested_cpu"] is None and local["requested_memory_gib"] is None
    assert not local["on_spot"]
    assert local["usd"] == pytest.approx(0.5 * 0.0316 + 0.5 * 0.0042)


def test_a_pod_learns_its_size_from_the_downward_api_env() -> None:
    from tasks.pod import current_pod

    assert current_pod({}) is None  # not in a pod
    pod = current_pod(
        {
            "TRIPFLOW_POD_CPU_REQUEST_MILLICORES": "250",
            "TRIPFLOW_POD_CPU_LIMIT_MILLICORES": "1000",
            "TRIPFLOW_POD_MEMORY_REQUEST_MIB": "768",
            "TRIPFLOW_POD_MEMORY_LIMIT_MIB": "1024",
            "TRIPFLOW_POD_CAPACITY": "spot",
        }
    )
    assert pod is not None
    assert (pod.cpu_request, pod.cpu_limit) == (0.25, 1.0)
    assert (pod.memory_request_gib, pod.memory_limit_gib) == (0.75, 1.0)
    assert pod.spot


def test_the_stage_measure_carries_its_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.metrics import measure

    with measure("load") as local:
        pass
    assert "pod" not in local.as_dict()
    for name, value in {
        "TRIPFLOW_POD_CPU_REQUEST_MILLICORES": "500",
        "TRIPFLOW_POD_CPU_LIMIT_MILLICORES": "1000",
        "TRIPFLOW_POD_MEMORY_REQUEST_MIB": "768",
        "TRIPFLOW_POD_MEMORY_LIMIT_MIB": "1024",
        "TRIPFLOW_POD_CAPACITY": "on-demand",
    }.items():
        monkeypatch.setenv(name, value)
    with measure("load") as in_pod:
        pass
    assert in_pod.as_dict()["pod"] == _pod(0.5, 0.75) | {"cpu_limit": 1.0, "memory_limit_gib": 1.0}


def test_run_cost_adds_warehouse_bytes_billed() -> None:
    cost = run_cost(
        [{"name": "load", "seconds": 0, "peak_rss_mb": 1}],
        SETTINGS,
        bytes_staged=123,
        warehouse_bytes_billed=2 * 10**12,
    )
    assert cost["warehouse_usd"] == pytest.approx(12.5)
    assert cost["total_usd"] == pytest.approx(12.5)
    assert cost["bytes_staged"] == 123


def test_run_cost_sums_the_warehouse_bytes_each_stage_reported() -> None:
    """Stages may run in different pods: each stage's measure carries its own queries' bytes."""
    stages = [
        {"name": "load", "seconds": 1, "peak_rss_mb": 1, "warehouse_bytes_processed": 10**12},
        {
            "name": "validate",
            "seconds": 1,
            "peak_rss_mb": 1,
            "warehouse_bytes_processed": 3 * 10**11,
            "warehouse_bytes_billed": 4 * 10**11,
        },
        {"name": "publish", "seconds": 1, "peak_rss_mb": 1, "warehouse_bytes_billed": 10**11},
    ]
    cost = run_cost(stages, SETTINGS, bytes_staged=0)
    assert cost["warehouse_bytes_processed"] == 13 * 10**11
    assert cost["warehouse_bytes_billed"] == 5 * 10**11
    assert cost["warehouse_usd"] == pytest.approx(0.5 * 6.25)
    # A warehouse that reports no bytes (DuckDB): None, not zero.
    plain = run_cost([{"name": "load", "seconds": 1, "peak_rss_mb": 1}], SETTINGS, bytes_staged=0)
    assert plain["warehouse_bytes_billed"] is None and plain["warehouse_usd"] == 0


def test_stage_measure_carries_the_warehouse_usage() -> None:
    from tasks.metrics import measure

    with measure("load") as m:
        m.warehouse.add(100, 200)
        m.warehouse.add(None, 50)
    assert m.as_dict()["warehouse_bytes_processed"] == 100
    assert m.as_dict()["warehouse_bytes_billed"] == 250
    with measure("load") as quiet:
        pass
    assert "warehouse_bytes_billed" not in quiet.as_dict()


def test_recommend_rounds_up_with_headroom() -> None:
    peaks = {"extract": [300.0, 410.0], "load": [100.0]}
    recs = {r["stage"]: r for r in recommend(peaks, {"extract": "1024Mi", "load": "no pod"})}
    assert recs["extract"]["memory_request"] == "576Mi"  # 410 * 1.25 = 512.5 -> 576
    assert recs["extract"]["memory_limit"] == "640Mi"  # 410 * 1.5 = 615 -> 640
    assert recs["extract"]["runs"] == 2
    assert recs["load"]["memory_request"] == "128Mi"
    assert "transform" not in recs
    assert recs["extract"]["current_request"] == "1024Mi"
    assert recs["load"]["current_request"] == "no pod"


def test_current_requests_come_from_the_newest_measure_of_each_stage() -> None:
    from tasks.cost import current_requests

    measures = [
        {"name": "extract", "seconds": 1, "peak_rss_mb": 1, "pod": _pod(0.5, 1.0)},
        {"name": "extract", "seconds": 1, "peak_rss_mb": 1, "pod": _pod(0.5, 8.0)},
        {"name": "load", "seconds": 1, "peak_rss_mb": 1},
    ]
    assert current_requests(measures) == {"extract": "1024Mi", "load": "no pod"}


def ledger_row(day: str, status: str, loaded: int, finished: int) -> dict[str, object]:
    return {
        "run_id": f"r-{day}-{finished}",
        "run_date": day,
        "status": status,
        "source": "synthetic",
        "rows_extracted": loaded + 10,
        "rows_quarantined": 10,
        "rows_loaded": loaded,
        "stages": {
            "measures": [{"name": "extract", "seconds": 2.0, "peak_rss_mb": 300.0}],
            "bytes_staged": 1000,
        },
        "checks": [{"name": "min_rows", "passed": status == "published", "detail": ""}],
        "error": None,
        "started_at": None,
        "finished_at": finished,
    }


def test_history_rows_per_day_and_chart() -> None:
    runs = [  # newest first, as the ledger returns them
        ledger_row("2025-11-16", "failed", 0, 3),
        ledger_row("2025-11-15", "published", 990, 2),
        ledger_row("2025-11-15", "published", 500, 1),
    ]
    rows = run_rows(runs, SETTINGS)
    assert [r["quarantine_share"] for r in rows] == [
        1.0,
        pytest.approx(10 / 1000),
        pytest.approx(10 / 510),
    ]
    assert rows[0]["failed_checks"] == ["min_rows"]
    days = per_day(rows)
    assert [(d["run_date"], d["rows"]) for d in days] == [("2025-11-15", 990), ("2025-11-16", 0)]
    svg = history_svg(days)
    assert svg.startswith("<svg") and svg.count("<rect") == 1 + 3 * 2
    assert "#c62828" in svg and "#2e7d32" in svg and "2025-11-16" in svg


@pytest.mark.usefixtures("prefect_server")
def test_report_command_lists_runs_draws_the_chart_and_recommends(workdir: Path) -> None:
    assert (
        tripflow("run", "--source", "sample", "--date", "2025-11-15", cwd=workdir).returncode == 0
    )
    assert (
        tripflow("run", "--source", "sample", "--date", "2025-11-16", cwd=workdir).returncode == 1
    )  # the sample has no trips on the 16th: min_rows fails
    proc = tripflow("report", "--last", "5", "--recommend", "--json", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [(r["run_date"], r["status"]) for r in out["runs"]] == [
        ("2025-11-16", "failed"),
        ("2025-11-15", "published"),
    ]
    assert out["runs"][0]["failed_checks"] == ["min_rows"]
    assert out["runs"][1]["rows"] == 10 and out["runs"][1]["usd"] > 0
    chart = Path(out["chart"])
    assert chart == Path(".tripflow/tripflow-report.svg")
    assert (workdir / chart).read_text().startswith("<svg")
    stages = [r["stage"] for r in out["recommendations"]]
    assert stages == ["extract", "transform", "load", "validate"]
    text = tripflow("report", "--recommend", cwd=workdir)
    assert text.returncode == 0
    assert "Right-sizing" in text.stderr and "memory request" in text.stderr


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_stage_starts_from_memory_the_stage_before_freed_not_its_high_water_mark() -> None:
    """Freed heap that glibc keeps (under a live block at the top) is handed back at a stage's
    start, so a stage sharing the process does not inherit the last one's peak."""
    import ctypes

    from tasks.metrics import measure

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    block = 64 << 10  # below glibc's mmap threshold: these live on the heap
    blocks = [libc.malloc(block) for _ in range(3200)]  # 200 MB
    for pointer in blocks:
        libc.memset(pointer, 1, block)
    keep = libc.malloc(block)  # a live block above the freed ones: no top-of-heap trim
    libc.memset(keep, 1, block)
    for pointer in blocks:
        libc.free(pointer)
    before = _rss_mb()
    with measure("next-stage") as m:
        pass
    libc.free(keep)
    assert before - _rss_mb() > 150, f"RSS {before:.0f} MB before, {_rss_mb():.0f} MB after"
    assert m.peak_rss_mb < before - 150
