"""Where a canary (an e-mail or a key planted in the input) must never appear after a run, and the
search that looks for it everywhere a ``tripflow run`` leaves text: its stdout (the ``--json``
report) and stderr, every file under the working folder's ``.tripflow`` (staging Parquet read back
row by row, manifests, records), every table and view of the DuckDB warehouse (the run ledger
included), the Prefect server's view of the flow run (its states and their messages, its
parameters, its task runs' states, its logs, its artifacts) and every file under
``PREFECT_HOME`` (the server's database). The failure notification of ``flows/automations.py``
is rendered from the flow run's name, parameters and state message, which are searched here."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb
import polars as pl


def _parquet_text(path: Path) -> str:
    frame = pl.read_parquet(path)
    return "\n".join(json.dumps(row, default=str) for row in frame.iter_rows())


def _duckdb_text(db: Path) -> str:
    dumps: list[str] = []
    with duckdb.connect(str(db), read_only=True) as con:
        tables = con.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_catalog = current_database()"
        ).fetchall()
        for schema, table in tables:
            rows = con.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()
            dumps += [json.dumps(row, default=str) for row in rows]
    assert tables, f"no table in {db}"
    return "\n".join(dumps)


def _prefect_text(flow_run_id: str) -> dict[str, str]:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    run_id = UUID(flow_run_id)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
        flow_states = client.read_flow_run_states(run_id)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
        task_states = [s for t in task_runs for s in client.read_task_run_states(t.id)]
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    assert flow_states and task_runs and artifacts, "the flow run left no trace to search"
    return {
        "flow run (name, parameters, state message)": flow_run.model_dump_json(),
        "flow run states": "\n".join(s.model_dump_json() for s in flow_states),
        "task runs and their states": "\n".join(
            [t.model_dump_json() for t in task_runs] + [s.model_dump_json() for s in task_states]
        ),
        "flow run logs": "\n".join(log.message for log in logs),
        "artifacts": "\n".join(a.model_dump_json() for a in artifacts),
    }


def leaks(
    canaries: list[str],
    proc: subprocess.CompletedProcess[str],
    workdir: Path,
) -> list[str]:
    """Every place (described) where one of ``canaries`` appears, case-insensitively."""
    haystacks: dict[str, str] = {"stdout (the --json report)": proc.stdout, "stderr": proc.stderr}
    tripflow_dir = workdir / ".tripflow"
    for path in sorted(tripflow_dir.rglob("*")):
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            haystacks[f"staged rows of {path}"] = _parquet_text(path)
        haystacks[f"bytes of {path}"] = path.read_bytes().decode("latin-1")
    db = tripflow_dir / "warehouse.duckdb"
    assert db.exists(), "the run left no warehouse"
    haystacks["warehouse tables and views (ledger included)"] = _duckdb_text(db)
    report: dict[str, Any] = json.loads(proc.stdout)
    assert report.get("flow_run_id"), "the report names no flow run"
    haystacks.update(_prefect_text(str(report["flow_run_id"])))
    home = Path(os.environ["PREFECT_HOME"])
    for path in sorted(home.rglob("*")):
        if path.is_file():
            haystacks[f"PREFECT_HOME file {path}"] = path.read_bytes().decode("latin-1")
    found = []
    for where, text in haystacks.items():
        lowered = text.lower()
        found += [f"{canary!r} in {where}" for canary in canaries if canary.lower() in lowered]
    return found


def assert_nowhere(
    canaries: list[str], proc: subprocess.CompletedProcess[str], workdir: Path
) -> None:
    """Fail, listing every place, if one of ``canaries`` appears anywhere (``leaks``)."""
    found = leaks(canaries, proc, workdir)
    assert not found, "canary found:\n" + "\n".join(found)
