"""What a user sees in the Prefect UI, checked in a real browser: headless Chromium (Debian's
``chromium``, driven by Playwright with ``executable_path``) opens the run page served by the real
Prefect server of this test session, after a real ``tripflow run`` against it.

``./scripts/check`` installs Chromium when it runs as root; elsewhere, without
``/usr/bin/chromium``, this test is skipped and says why. ``TRIPFLOW_SCREENSHOTS=docs/img`` writes
the README's screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import ROOT, tripflow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.usefixtures("prefect_server"),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="no Chromium here (apt-get install chromium)"
    ),
]


def test_run_page_shows_completed_run_and_its_artifacts(workdir: Path, prefect_server: str) -> None:
    from playwright.sync_api import sync_playwright

    # The run's INFO logs go to the server (the session's default is WARNING: an empty log pane).
    proc = tripflow(
        "run",
        *("--source", "sample", "--date", "2025-11-15", "--json"),
        cwd=workdir,
        env={"PREFECT_LOGGING_LEVEL": "INFO"},
    )
    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout)["flow_run_id"]
    ui = prefect_server.removesuffix("/api")
    shots = Path(os.environ.get("TRIPFLOW_SCREENSHOTS", str(workdir)))
    if not shots.is_absolute():
        shots = ROOT / shots
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{ui}/runs/flow-run/{run_id}")
            page.get_by_text("daily-trip-etl/2025-11-15").first.wait_for(timeout=90_000)
            page.get_by_text("Completed").first.wait_for(timeout=60_000)
            # The screenshot shows the run's logs, not "Waiting for logs…": wait for the flow's
            # last log line, as the log pane renders it (level and logger beside each line).
            page.get_by_text("Finished in state Completed()").first.wait_for(timeout=60_000)
            logs = page.inner_text("body")
            assert "Waiting for logs" not in logs
            assert "prefect.flow_runs" in logs and "prefect.task_runs" in logs and "INFO" in logs
            page.screenshot(path=str(shots / "run-page.png"))
            page.get_by_text("Artifacts", exact=True).first.click()
            for key in ("regional-summary", "quality-report", "run-ledger", "cost-report"):
                page.get_by_text(key, exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=str(shots / "run-artifacts.png"))
            page.get_by_text("regional-summary", exact=True).first.click()
            page.get_by_text("us-east").first.wait_for(timeout=60_000)
            body = page.inner_text("body")
            assert "51.4" in body and "eu-west" in body and "us-west" in body
            page.screenshot(path=str(shots / "regional-summary.png"))
        finally:
            browser.close()
