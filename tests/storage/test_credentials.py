"""Which credentials the storage layer picks: prefect-aws / prefect-gcp blocks saved on the
session's real Prefect server, or the ambient identity.

The options built here are used against the stand-ins in ``test_run_remote.py``: moto's S3 server
for Amazon S3 (``s3stand``; through an ``AwsCredentials`` block too) and fake-gcs-server for Google
Cloud Storage (``gcsstand``; anonymously, as ``STORAGE_EMULATOR_HOST`` asks, and through a
``GcpCredentials`` block whose key a stand-in token endpoint verifies). Neither store checks
credentials; these tests check which arguments each choice becomes.
"""

from __future__ import annotations

import json
import uuid
from datetime import date
from pathlib import Path

import pytest
from gcsstand import service_account

from tasks.config import load_settings
from tasks.errors import InfrastructureError, UsageError
from tasks.staging import Staging
from tasks.storage import filesystem, gcs_options, s3_options

pytestmark = pytest.mark.usefixtures("prefect_server")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_no_block_means_the_ambient_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    # botocore's default chain (env, IRSA's web-identity token, instance profile): no keys given.
    options = s3_options()
    assert not {"key", "secret", "token", "profile"} & set(options)
    assert options["use_listings_cache"] is False
    assert options["config_kwargs"]["retries"]["max_attempts"] > 1
    # Google's application-default credentials (Workload Identity on GKE): no key file.
    assert gcs_options()["token"] == "google_default"
    assert s3_options(endpoint_url="http://minio:9000")["endpoint_url"] == "http://minio:9000"


def test_a_gcs_emulator_gets_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    # As google-cloud-storage does: STORAGE_EMULATOR_HOST and no credentials named = anonymous
    # (nothing to fall back on, and no token of the pod's is sent to the emulator).
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443")
    assert gcs_options()["token"] == "anon"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "default")  # gcsfs: "default" means unset
    assert gcs_options()["token"] == "google_default"


def test_a_named_block_wins_over_the_emulator_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect_gcp import GcpCredentials

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443")
    account = service_account()
    name = unique("gcp-emulated")
    GcpCredentials(service_account_info=account).save(name)
    assert gcs_options(name)["token"] == account


def test_gs_roots_use_gcsfs_json_api_filesystem(monkeypatch: pytest.MonkeyPatch) -> None:
    # Not gcsfs's default class (its experimental zonal/HNS subclass), which asks a gRPC API for
    # each bucket's layout and waits out 60 s of retries where that API is unreachable.
    from gcsfs.core import GCSFileSystem

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443")
    fs = filesystem(f"gs://{unique('class')}/p", "", "http://127.0.0.1:4443")
    assert type(fs) is GCSFileSystem


def test_missing_google_credentials_are_an_infrastructure_error_naming_the_root(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/adc.json")
    root = f"gs://{unique('no-identity')}/p"
    # An endpoint of its own, so no filesystem built by an earlier test is reused.
    with pytest.raises(InfrastructureError, match=f"staging {root}: cannot connect"):
        filesystem(root, "", "http://127.0.0.1:9")


def test_an_aws_credentials_block_gives_its_keys_region_and_endpoint() -> None:
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    name = unique("aws")
    AwsCredentials(
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="block-secret",
        aws_session_token="session-token",
        region_name="eu-west-1",
        aws_client_parameters=AwsClientParameters(endpoint_url="http://vpce.example:443"),
    ).save(name)
    options = s3_options(name)
    assert (options["key"], options["secret"], options["token"]) == (
        "AKIAEXAMPLE",
        "block-secret",
        "session-token",
    )
    assert options["client_kwargs"] == {"region_name": "eu-west-1"}
    assert options["endpoint_url"] == "http://vpce.example:443"
    # The staging_endpoint_url setting wins over the block's endpoint.
    assert s3_options(name, "http://minio:9000")["endpoint_url"] == "http://minio:9000"


def test_an_aws_block_with_only_a_profile_uses_the_profile() -> None:
    from prefect_aws import AwsCredentials

    name = unique("aws-profile")
    AwsCredentials(profile_name="staging-writer").save(name)
    options = s3_options(name)
    assert options["profile"] == "staging-writer" and "key" not in options


def test_a_gcp_credentials_block_becomes_the_gcsfs_token(tmp_path: Path) -> None:
    from prefect_gcp import GcpCredentials

    account = service_account()
    info = unique("gcp-info")
    GcpCredentials(service_account_info=account, project="tripflow-test").save(info)
    options = gcs_options(info)
    assert options["token"] == account and options["project"] == "tripflow-test"

    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(account))
    file_block = unique("gcp-file")
    GcpCredentials(service_account_file=key_file).save(file_block)
    assert gcs_options(file_block)["token"] == str(key_file)


def test_a_missing_block_is_a_usage_error_naming_it() -> None:
    with pytest.raises(UsageError, match=r"no-such-block.*AwsCredentials"):
        s3_options("no-such-block")
    with pytest.raises(UsageError, match=r"no-such-block.*GcpCredentials"):
        gcs_options("no-such-block")


def test_settings_name_the_block_and_endpoint_never_a_secret() -> None:
    settings = load_settings(
        {"staging": "gs://bucket/prefix"},
        config_file="/nonexistent.toml",
        environ={
            "TRIPFLOW_STAGING_CREDENTIALS_BLOCK": "gcs-staging",
            "TRIPFLOW_STAGING_ENDPOINT_URL": "http://fake-gcs:4443",
        },
    )
    assert settings.staging_credentials_block == "gcs-staging"
    assert settings.staging_endpoint_url == "http://fake-gcs:4443"
    assert not any(
        "secret" in name or "key" in name for name in vars(settings) if "staging" in name
    )


def test_gs_paths_follow_the_local_layout() -> None:
    # An explicit filesystem object so no GCS client is built: only the paths are under test.
    staging = Staging("gs://bucket/prefix/", fs=object())  # type: ignore[arg-type]
    day = date(2025, 11, 15)
    assert staging.url == "gs://bucket/prefix"
    assert staging.folder_url("clean", day) == "gs://bucket/prefix/clean/date=2025-11-15"
    assert staging._record_url("run-1", "extract") == "gs://bucket/prefix/_runs/run-1/extract.json"
    with pytest.raises(UsageError, match="not a local folder"):
        staging.folder("clean", day)
