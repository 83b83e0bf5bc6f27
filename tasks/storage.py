"""Object storage for staging: the one place that builds a filesystem and picks its credentials.

A staging root is a local folder, ``s3://bucket/prefix`` or ``gs://bucket/prefix``. Remote roots go
through fsspec (s3fs, gcsfs; chosen by measurement, see ``bench/STORAGE.md``). Credentials come from
a named prefect-aws ``AwsCredentials`` or prefect-gcp ``GcpCredentials`` block
(``staging_credentials_block``) or, with no block, from the ambient identity: botocore's default
chain for S3 (environment, IRSA web-identity token on EKS, instance profile) and Google's
application-default credentials for GCS (Workload Identity on GKE). No key file, no secret setting.
With ``STORAGE_EMULATOR_HOST`` set (Google's switch for a GCS emulator), no block means anonymous,
as google-cloud-storage does: the emulator checks no credentials, and none are sent to it.

Every storage failure becomes an ``InfrastructureError`` naming the URL (never a credential), so the
stage tasks' retries apply. Below those, botocore retries throttling and 5xx answers with backoff.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from fsspec import AbstractFileSystem

from tasks.errors import InfrastructureError, TripflowError, UsageError

#: URL scheme -> the credentials block type that serves it.
SCHEMES: Final = {"s3": "AwsCredentials", "gs": "GcpCredentials", "gcs": "GcpCredentials"}
#: botocore's own retries (exponential backoff with jitter) for throttling, 5xx and dropped
#: connections, below the stage task's retries.
S3_RETRIES: Final = {"max_attempts": 5, "mode": "standard"}
#: GCS: the metadata cache is off (another pod's writes must be seen at once).
GCS_NO_CACHE: Final = 0
#: Google's environment variable naming a GCS emulator (gcsfs and google-cloud-storage send every
#: request there when it is set); "" and "default" mean none, as in gcsfs.
GCS_EMULATOR_ENV: Final = "STORAGE_EMULATOR_HOST"


def is_remote(root: str) -> bool:
    """Whether ``root`` names object storage (``s3://`` or ``gs://``) rather than a local folder."""
    return urlsplit(root).scheme in SCHEMES


@dataclass(frozen=True)
class Location:
    """A remote staging root, split: scheme, bucket and key prefix (no trailing slash)."""

    scheme: str
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, root: str) -> Location:
        parts = urlsplit(root)
        if parts.scheme not in SCHEMES:
            raise UsageError(f"staging {root!r}: use a folder, s3://BUCKET/PREFIX or gs://...")
        if not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
            raise UsageError(f"staging {redact(root)!r}: needs a bucket, e.g. s3://bucket/prefix")
        scheme = "gs" if parts.scheme == "gcs" else parts.scheme
        return cls(scheme, parts.netloc, parts.path.strip("/"))

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def join(self, *names: str) -> str:
        """The URL of a key under this root."""
        return "/".join([self.url, *names])


def redact(url: str) -> str:
    """``url`` without any ``user:password@`` part (endpoints may carry one)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def filesystem(
    root: str, credentials_block: str = "", endpoint_url: str = ""
) -> AbstractFileSystem:
    """The fsspec filesystem for a remote staging root, with its credentials (cached per process).

    The filesystem is also remembered for the root, so code that only holds a staged file's URL
    (the DuckDB warehouse loading it) reads it with the same credentials: ``filesystem_for``.
    """
    location = Location.parse(root)
    key = (location.scheme, credentials_block, endpoint_url)
    with _LOCK:
        fs = _BUILT.get(key)
        if fs is None:
            # gcsfs resolves its credentials here (Google's default chain, a key): a failure is
            # the store's, not tripflow's.
            with translated(location.url, "connect"):
                fs = _build(location.scheme, credentials_block, endpoint_url)
            _BUILT[key] = fs
        _BY_ROOT[location.url] = fs
    return fs


def filesystem_for(url: str) -> AbstractFileSystem:
    """The filesystem for a staged file's URL: the one built for its root, else ambient identity."""
    location = Location.parse(url)
    with _LOCK:
        matches = [
            (len(root), fs)
            for root, fs in _BY_ROOT.items()
            if location.url == root or location.url.startswith(root + "/")
        ]
    if matches:
        return max(matches, key=lambda m: m[0])[1]
    return filesystem(f"{location.scheme}://{location.bucket}")


_LOCK = threading.Lock()
_BUILT: dict[tuple[str, str, str], AbstractFileSystem] = {}
_BY_ROOT: dict[str, AbstractFileSystem] = {}


def _build(scheme: str, credentials_block: str, endpoint_url: str) -> AbstractFileSystem:
    if scheme == "s3":
        import s3fs

        return s3fs.S3FileSystem(**s3_options(credentials_block, endpoint_url))
    # gcsfs's JSON-API filesystem, by its class: ``gcsfs.GCSFileSystem`` is, unless
    # GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false was set before gcsfs was first imported, its
    # experimental zonal/HNS subclass, which first asks the Storage Control gRPC API for each
    # bucket's layout, retries that for 60 s where the API cannot be reached (an emulator, a
    # private endpoint, egress without gRPC) and, the answer unknown, asks again on every call.
    # Staging needs plain object reads, writes, lists and deletes: the JSON API serves them all.
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem(**gcs_options(credentials_block, endpoint_url))


def s3_options(credentials_block: str = "", endpoint_url: str = "") -> dict[str, Any]:
    """s3fs arguments: the ``AwsCredentials`` block's identity, else botocore's default chain."""
    options: dict[str, Any] = {
        "use_listings_cache": False,  # another pod's writes must be seen at once
        "config_kwargs": {"retries": dict(S3_RETRIES)},
    }
    client: dict[str, Any] = {}
    if credentials_block:
        block = _load_block("AwsCredentials", credentials_block)
        if block.assume_role_arn:
            # An assumed role's short-lived keys (valid for the role's session duration).
            frozen = block.get_boto3_session().get_credentials().get_frozen_credentials()
            options |= {"key": frozen.access_key, "secret": frozen.secret_key}
            if frozen.token:
                options["token"] = frozen.token
        elif block.aws_access_key_id:
            options["key"] = block.aws_access_key_id
            if block.aws_secret_access_key is not None:
                options["secret"] = block.aws_secret_access_key.get_secret_value()
            if block.aws_session_token:
                options["token"] = block.aws_session_token
        elif block.profile_name:
            options["profile"] = block.profile_name
        if block.region_name:
            client["region_name"] = block.region_name
        params = block.aws_client_parameters
        if params.endpoint_url and not endpoint_url:
            endpoint_url = str(params.endpoint_url)
        if params.verify is False:
            client["verify"] = False
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    if client:
        options["client_kwargs"] = client
    return options


def gcs_options(credentials_block: str = "", endpoint_url: str = "") -> dict[str, Any]:
    """gcsfs arguments: the ``GcpCredentials`` block's service account, else Google's default
    credentials (Workload Identity on GKE, ``gcloud auth application-default`` on a laptop), or
    none at all (``anon``) when ``STORAGE_EMULATOR_HOST`` names an emulator."""
    emulator = os.environ.get(GCS_EMULATOR_ENV, "") not in ("", "default")
    token = "anon" if emulator else "google_default"
    options: dict[str, Any] = {"token": token, "cache_timeout": GCS_NO_CACHE}
    if credentials_block:
        block = _load_block("GcpCredentials", credentials_block)
        if block.service_account_info is not None:
            options["token"] = dict(block.service_account_info.get_secret_value())
        elif block.service_account_file is not None:
            options["token"] = str(block.service_account_file)
        if block.project:
            options["project"] = block.project
    if endpoint_url:
        options["endpoint_url"] = endpoint_url
    return options


def _load_block(kind: str, name: str) -> Any:
    if kind == "AwsCredentials":
        from prefect_aws import AwsCredentials

        cls: Any = AwsCredentials
    else:
        from prefect_gcp import GcpCredentials

        cls = GcpCredentials
    try:
        return cls.load(name)
    except ValueError as exc:
        raise UsageError(
            f"staging_credentials_block {name!r}: no {kind} block by that name "
            f"(an s3:// root needs AwsCredentials, a gs:// root GcpCredentials)"
        ) from exc
    except Exception as exc:  # the Prefect API unreachable
        raise InfrastructureError(
            f"staging_credentials_block {name!r}: cannot load the {kind} block: "
            f"{type(exc).__name__}"
        ) from exc


def storage_errors() -> tuple[type[BaseException], ...]:
    """What the storage clients raise when the store refuses or cannot be reached."""
    import botocore.exceptions
    import google.auth.exceptions
    from gcsfs.retry import HttpError

    return (
        OSError,
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
        google.auth.exceptions.GoogleAuthError,
        HttpError,
    )


@contextmanager
def translated(url: str, doing: str) -> Iterator[None]:
    """Turn a storage failure into an ``InfrastructureError`` naming ``url`` (and no secret)."""
    try:
        yield
    except TripflowError:
        raise
    except storage_errors() as exc:
        reason = str(exc).strip() or type(exc).__name__
        raise InfrastructureError(f"staging {redact(url)}: cannot {doing}: {reason}") from exc
