"""``tripflow run`` end to end with staging on object storage, against each stand-in: moto's S3
server (for Amazon S3) and fake-gcs-server (for Google Cloud Storage), see ``conftest``.

Real ``tripflow`` subprocesses, the session's real Prefect server, the local DuckDB warehouse
(bulk-loading the staged Parquet from the bucket through the staging's own s3fs/gcsfs filesystem,
registered with DuckDB). Neither stand-in checks credentials: the AWS block test proves the block
is used because its endpoint is the only way to moto, not because moto verified its keys; the GCS
runs are anonymous, which they can only be because tripflow goes anonymous for
``STORAGE_EMULATOR_HOST`` (no Google identity is there to fall back on, ``gcsstand``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import duckdb
import pytest
from gcsstand import GCS, TokenEndpoint, service_account
from helpers import tripflow
from s3stand import DUMMY_KEYS, NO_AMBIENT_AWS, S3
from stores import Store

from tasks.faults import KILL_ENV
from tasks.staging import STAGES

pytestmark = pytest.mark.usefixtures("prefect_server")
DAY = "2025-11-15"
NO_RETRY_WAIT = {"TRIPFLOW_RETRY_DELAYS": "0,0"}


def env_for(store: Store, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The subprocess's whole storage environment: nothing inherited from this process."""
    for name in [*DUMMY_KEYS, "STORAGE_EMULATOR_HOST", "TRIPFLOW_STAGING_ENDPOINT_URL"]:
        monkeypatch.delenv(name, raising=False)
    return NO_RETRY_WAIT | store.env()


def assert_no_secret(store: Store, text: str) -> None:
    if store.secret is not None:
        assert store.secret not in text


def run_json(cwd: Path, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    proc = tripflow("run", "--source", "sample", "--date", DAY, *args, "--json", cwd=cwd, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout + proc.stderr
    return proc.returncode, json.loads(lines[0]), proc.stdout + proc.stderr


def published(workdir: Path) -> int:
    path = workdir / ".tripflow" / "warehouse.duckdb"
    if not path.exists():
        return 0
    with duckdb.connect(str(path), read_only=True) as con:
        row = con.execute(
            "SELECT count(*) FROM analytics.trips WHERE trip_date = $d", {"d": DAY}
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_run_stages_remotely_and_publishes_once(
    store: Store, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_for(store, monkeypatch)
    store.make_bucket("tripflow-e2e")
    root = f"{store.scheme}://tripflow-e2e/prefix"
    code, out, logs = run_json(workdir, env, "--staging", root)
    assert code == 0, logs
    assert out["status"] == "published" and out["staging"] == root
    assert out["rows"] == {"extracted": 10, "quarantined": 0, "loaded": 10}
    assert sum(r["trip_count"] for r in out["regions"]) == 10
    # DuckDB read the staged Parquet from the bucket (through the registered filesystem).
    assert published(workdir) == 10

    keys = store.keys("tripflow-e2e", "prefix/")
    for stage in ("raw", "clean", "quarantine", "region_daily"):
        folder = f"prefix/{stage}/date={DAY}/"
        assert f"{folder}_manifest.json" in keys
        parts = [k for k in keys if k.startswith(folder) and k.endswith(".parquet")]
        assert len(parts) == 1 and parts[0].startswith(f"{folder}run=")
    # What the report says was staged is what the bucket holds for the day.
    ledger = _ledger(workdir)
    assert ledger["bytes_staged"] == sum(v for k, v in keys.items() if f"date={DAY}/" in k)
    assert not (workdir / ".tripflow" / "staging").exists()  # nothing staged locally
    assert_no_secret(store, logs)

    # A re-run replaces the day: one published copy, one run's parts per stage in the bucket.
    code, out, logs = run_json(workdir, env, "--staging", root)
    assert code == 0 and out["status"] == "published", logs
    assert published(workdir) == 10
    keys = store.keys("tripflow-e2e", "prefix/")
    assert len([k for k in keys if k.endswith(".parquet")]) == 4


def test_a_run_through_an_aws_credentials_block(
    s3: S3, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    for name in DUMMY_KEYS:
        monkeypatch.delenv(name, raising=False)
    s3.make_bucket("tripflow-block")
    name = f"staging-{uuid.uuid4().hex[:8]}"
    AwsCredentials(
        aws_access_key_id=DUMMY_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_KEYS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=s3.endpoint),
    ).save(name)
    # No endpoint setting and no keys in the environment: only the block leads to the stand-in.
    env = NO_AMBIENT_AWS | NO_RETRY_WAIT | {"TRIPFLOW_STAGING_CREDENTIALS_BLOCK": name}
    code, out, logs = run_json(workdir, env, "--staging", "s3://tripflow-block/p")
    assert code == 0, logs
    assert out["status"] == "published" and published(workdir) == 10
    assert "p/clean/date=2025-11-15/_manifest.json" in s3.keys("tripflow-block", "p/")
    assert DUMMY_KEYS["AWS_SECRET_ACCESS_KEY"] not in logs


def test_a_run_through_a_gcp_credentials_block(
    gcs: GCS, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_gcp import GcpCredentials

    env = env_for(gcs, monkeypatch)
    gcs.make_bucket("tripflow-gcp-block")
    tokens = TokenEndpoint()  # the account's token_uri: the only place its key can be used
    try:
        account = service_account(token_uri=tokens.url)
        tokens.trust(account)
        name = f"staging-{uuid.uuid4().hex[:8]}"
        GcpCredentials(service_account_info=account).save(name)
        # The emulator would take no credentials at all: the named block wins over that.
        env |= {"TRIPFLOW_STAGING_CREDENTIALS_BLOCK": name}
        code, out, logs = run_json(workdir, env, "--staging", "gs://tripflow-gcp-block/p")
    finally:
        tokens.stop()
    assert code == 0, logs
    assert out["status"] == "published" and published(workdir) == 10
    assert "p/clean/date=2025-11-15/_manifest.json" in gcs.keys("tripflow-gcp-block", "p/")
    # tripflow signed token requests with the block's key, for read-write storage access.
    assert tokens.claims and tokens.refused == 0
    assert {(c["iss"], c["scope"]) for c in tokens.claims} == {
        (account["client_email"], "https://www.googleapis.com/auth/devstorage.full_control")
    }
    key_body = account["private_key"].splitlines()[1]
    assert key_body not in logs and TokenEndpoint.ACCESS_TOKEN not in logs


def test_a_refused_write_fails_the_run_and_publishes_nothing(
    store: Store, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both stand-ins refuse a write into a bucket that does not exist (404 / NoSuchBucket); neither
    # models IAM, so a permission refusal (403) cannot be produced here.
    env = env_for(store, monkeypatch)
    root = f"{store.scheme}://no-such-bucket/p"
    code, out, logs = run_json(workdir, env, "--staging", root)
    assert code == 3, logs
    assert out["status"] == "failed" and out["error"]["kind"] == "infrastructure"
    assert f"staging {root}/raw/date=2025-11-15/" in out["error"]["message"]
    assert_no_secret(store, logs)
    assert _runs_of(out["flow_run_id"], "extract") == 3  # the stage's two retries, then failure
    assert published(workdir) == 0


def _ledger(workdir: Path) -> dict[str, Any]:
    with duckdb.connect(str(workdir / ".tripflow" / "warehouse.duckdb"), read_only=True) as con:
        row = con.execute(
            "SELECT stages FROM analytics.runs ORDER BY finished_at DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    return dict(json.loads(row[0]))


def _runs_of(flow_run_id: str, task_name: str) -> int:
    """How many times the flow run ran the task, as the Prefect server recorded it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)]))
        )
    return max(t.run_count for t in task_runs if t.task_key.startswith(task_name))


def test_a_sigkill_mid_transform_leaves_staging_consistent_and_the_rerun_publishes_once(
    store: Store, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_for(store, monkeypatch)
    store.make_bucket("tripflow-kill")
    root = f"{store.scheme}://tripflow-kill/p"

    def synthetic(rows: int, extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
        args = ("run", "--date", DAY, "--rows", str(rows), "--staging", root, "--json")
        return tripflow(*args, cwd=workdir, env=env | extra)

    def manifest(stage: str) -> dict[str, Any]:
        body = store.get_object("tripflow-kill", f"p/{stage}/date={DAY}/_manifest.json")
        return dict(json.loads(body))

    first = synthetic(2000, {})
    assert first.returncode == 0, first.stderr[-2000:]
    loaded = json.loads(first.stdout)["rows"]["loaded"]
    # Killed after clean/ and quarantine/ were committed, before region_daily/ was written.
    killed = synthetic(2100, {KILL_ENV: "transform"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert published(workdir) == loaded  # the day as it was
    # tripflow run applies the transform in the synthetic extract's pass: no raw/ is staged.
    staged = [stage for stage in STAGES if stage != "raw"]
    assert f"p/raw/date={DAY}/_manifest.json" not in store.keys("tripflow-kill", "p/")
    runs = {stage: manifest(stage)["run_id"] for stage in staged}
    assert runs["clean"] == runs["quarantine"] != runs["region_daily"]  # told apart by manifests

    again = synthetic(2100, {})
    assert again.returncode == 0, again.stderr[-2000:]
    report = json.loads(again.stdout)
    assert published(workdir) == report["rows"]["loaded"] > loaded
    assert {manifest(stage)["run_id"] for stage in staged} == {report["run_id"]}
    parts = {k for k in store.keys("tripflow-kill", "p/") if k.endswith(".parquet")}
    listed = {
        f"p/{stage}/date={DAY}/{entry['name']}"
        for stage in staged
        for entry in manifest(stage)["files"]
    }
    assert parts == listed  # only the parts the manifests list: the killed run's are gone
