"""Per-stage pods refuse staging or a DuckDB file that no pod could share (a usage error, exit 2).

What a pod cannot share is read from one place, ``tasks.pod.SCRATCH_MOUNTS``, which the base job
template's builder uses for the pod's emptyDir volumes: checked here against the committed
work_pools/kubernetes.json. An absolute path elsewhere (a ReadWriteMany volume a team mounts in
every pod) is allowed.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from k8s.k8s_support import load_template

from tasks.errors import UsageError
from tasks.pod import SCRATCH_MOUNTS, require_shared


def test_the_refused_mounts_are_the_templates_emptydirs() -> None:
    pod = load_template()["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    emptydirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    [container] = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert {name: mounts[name] for name in emptydirs} == SCRATCH_MOUNTS


@pytest.mark.parametrize(
    ("staging", "duckdb", "setting"),
    [
        (".tripflow/staging", None, "staging"),
        ("staging", None, "staging"),
        ("/tmp/staging", None, "staging"),
        ("/home/tripflow/.tripflow/staging", None, "staging"),
        ("s3://bucket/trips", ".tripflow/warehouse.duckdb", "warehouse"),
        ("s3://bucket/trips", "/tmp/warehouse.duckdb", "warehouse"),
        ("/shared/staging", "/home/tripflow/warehouse.duckdb", "warehouse"),
    ],
)
def test_refused(staging: str, duckdb: str | None, setting: str) -> None:
    spec = f"duckdb:{duckdb}" if duckdb else "block:tripflow"
    with pytest.raises(UsageError) as err:
        require_shared(staging, spec, duckdb)
    assert err.value.exit_code == 2
    assert f"setting '{setting}'" in err.value.message
    assert "own pod" in err.value.message


@pytest.mark.parametrize(
    ("staging", "duckdb"),
    [
        ("s3://tripflow-staging/trips", None),
        ("gs://tripflow-staging/trips", None),
        ("/shared/tripflow/staging", "/shared/tripflow/warehouse.duckdb"),
        ("/var/tmp/tripflow/staging", None),
        ("/home/tripflow-data/staging", None),  # not inside /home/tripflow
    ],
)
def test_allowed(staging: str, duckdb: str | None) -> None:
    require_shared(staging, f"duckdb:{duckdb}" if duckdb else "block:tripflow", duckdb)


@pytest.mark.usefixtures("prefect_server")
def test_daily_run_with_stage_deployments_refuses_a_local_folder_before_anything(
    workdir: Path,
) -> None:
    """The daily flow fails at once, naming the setting; nothing is staged, no stage dispatched."""
    from flows.daily import daily_trip_etl

    with pytest.raises(UsageError, match="setting 'staging'") as err:
        daily_trip_etl(
            run_date=date(2025, 11, 15),
            source="sample",
            staging=".tripflow/staging",
            stage_deployments=True,
        )
    assert err.value.exit_code == 2
    assert not (workdir / ".tripflow" / "staging").exists()


@pytest.mark.usefixtures("prefect_server")
def test_a_duckdb_block_is_checked_through_its_path(workdir: Path) -> None:
    from flows.daily import daily_trip_etl
    from tasks.warehouses.blocks import TripWarehouse

    TripWarehouse(target="duckdb", path=".tripflow/warehouse.duckdb").save(
        "pod-local-duck", overwrite=True
    )
    with pytest.raises(UsageError, match="setting 'warehouse'"):
        daily_trip_etl(
            run_date=date(2025, 11, 15),
            source="sample",
            staging="s3://tripflow-staging/trips",
            warehouse="block:pod-local-duck",
            stage_deployments=True,
        )
