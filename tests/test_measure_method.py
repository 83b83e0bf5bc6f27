"""How each stage's peak memory was measured is part of the output, not only of the docstring.

``tasks.metrics`` resets the kernel's high-water mark when a stage starts and reads ``VmHWM`` when
it ends; where the reset is not allowed, it falls back to ``ru_maxrss`` (the process's peak since it
started, an upper bound for the stage) and says so: in the measure, in ``--json``'s stages and its
cost object (``RunReport.as_dict``, which the CLI prints), and in the cost-report artifact.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from tasks import metrics
from tasks.artifacts import cost_markdown
from tasks.config import load_settings
from tasks.report import RunReport
from tasks.stages import RunContext


def _report(tmp_path: Path) -> RunReport:
    settings = load_settings({"staging": str(tmp_path / "staging")}, environ={})
    return RunReport(RunContext.create("run-1", date(2025, 11, 15), settings))


def test_a_stage_whose_peak_was_reset_says_vmhwm(tmp_path: Path) -> None:
    if not metrics.reset_peak_rss():
        pytest.skip("this kernel does not allow resetting the peak (clear_refs)")
    with metrics.measure("extract") as m:
        pass
    assert m.as_dict()["peak_rss_method"] == "VmHWM"
    report = _report(tmp_path)
    report.add_stage(m.as_dict())
    out = report.as_dict()
    assert out["stages"][0]["peak_rss_method"] == "VmHWM"
    assert out["cost"]["stages"][0]["peak_rss_method"] == "VmHWM"
    assert "| extract | " in cost_markdown(out) and " | VmHWM | " in cost_markdown(out)


def test_where_the_reset_is_refused_the_fallback_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel refusing the reset (as ``/proc/self/clear_refs`` does in some containers) is
    simulated at the one seam that asks it; everything after it is the real code path."""
    monkeypatch.setattr(metrics, "reset_peak_rss", lambda: False)
    with metrics.measure("transform") as m:
        pass
    measured = m.as_dict()
    assert measured["peak_rss_method"] == "ru_maxrss"
    assert measured["peak_rss_mb"] > 0
    report = _report(tmp_path)
    report.add_stage(measured)
    out = report.as_dict()
    assert out["stages"][0]["peak_rss_method"] == "ru_maxrss"
    assert out["cost"]["stages"][0]["peak_rss_method"] == "ru_maxrss"
    artifact = cost_markdown(out)
    assert "| transform | " in artifact and " | ru_maxrss | " in artifact
    assert "ru_maxrss = the process's peak since it started" in artifact


def test_a_ledger_row_from_before_the_method_was_recorded_still_renders(tmp_path: Path) -> None:
    report = _report(tmp_path)
    report.add_stage({"name": "load", "seconds": 1.0, "peak_rss_mb": 90.0})
    out = report.as_dict()
    assert out["cost"]["stages"][0]["peak_rss_method"] is None
    assert " | not recorded | " in cost_markdown(out)
