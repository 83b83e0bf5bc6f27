"""Configuration, chosen in one place: ``tripflow.toml``, then ``TRIPFLOW_*`` variables, then flags.

Each layer overrides the one before. Everything else in tripflow receives a ``Settings`` and never
reads the environment itself. Secrets (the PII key) are resolved here and never travel as flow
parameters, so they do not reach the Prefect API, logs or job manifests.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tasks.errors import InfrastructureError, UsageError

CONFIG_FILE = "tripflow.toml"
ENV_PREFIX = "TRIPFLOW_"


@dataclass(frozen=True)
class Settings:
    """Every knob tripflow has. Defaults are the embedded default: no cloud, no cluster."""

    home: str = ".tripflow"
    source: str = "synthetic"
    format: str = "trips"
    rows: int = 1_000_000
    staging: str = ".tripflow/staging"
    #: Remote staging (``s3://BUCKET/PREFIX``, ``gs://BUCKET/PREFIX``): the name of a prefect-aws
    #: ``AwsCredentials`` or prefect-gcp ``GcpCredentials`` block; empty = the ambient identity
    #: (botocore's default chain: env, IRSA on EKS; Google's default credentials: Workload
    #: Identity on GKE). The S3-compatible endpoint (MinIO, a VPC endpoint); empty = the cloud's.
    staging_credentials_block: str = ""
    staging_endpoint_url: str = ""
    warehouse: str = "duckdb:.tripflow/warehouse.duckdb"
    min_rows: int = 1
    quarantine_threshold: float = 0.05
    #: Prices for the cost report (USD): on-demand pod CPU per vCPU-hour and memory per GiB-hour,
    #: spot as a fraction of on-demand, and warehouse scans per TB.
    price_vcpu_hour: float = 0.0316
    price_gib_hour: float = 0.0042
    spot_price_fraction: float = 0.3
    price_tb_scanned: float = 6.25
    #: Accepted regions for the ``trips`` format; empty means "any non-empty region".
    regions: tuple[str, ...] = ()
    source_timezone: str = "UTC"
    synthetic_seed: int = 42
    #: ``--source postgres``: the table (SCHEMA.TABLE), contract->column renames
    #: (``CONTRACT=COLUMN``; ``CONTRACT=`` for none) and the server-side statement timeout.
    #: The DSN is a secret, never a setting: it comes from the Prefect ``Secret`` block named
    #: here, or (no block named) from ``TRIPFLOW_POSTGRES_DSN`` (``postgres_dsn``).
    postgres_dsn_block: str = ""
    postgres_table: str = "public.trips"
    postgres_columns: tuple[str, ...] = ()
    postgres_statement_timeout_s: int = 3600
    #: ``--source kafka:TOPIC``: brokers, consumer group, security protocol and SASL mechanism,
    #: extra non-secret librdkafka options (``KEY=VALUE``), the lateness margin read before the
    #: day's start, how a day already read is re-read (``same`` range, or ``extend`` to the current
    #: high watermark) and the idle timeout. SASL credentials: ``kafka_credentials`` (env only).
    kafka_bootstrap: str = "localhost:9092"
    kafka_group: str = "tripflow"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_options: tuple[str, ...] = ()
    kafka_lateness_minutes: int = 60
    kafka_reread: str = "same"
    kafka_idle_timeout_s: int = 30
    #: ``tripflow run`` (every stage in one process) transforms each part of a streaming source
    #: (synthetic, PostgreSQL) as the extract reads it and stages no ``raw/``; true stages
    #: ``raw/`` there too. Per-stage pods always stage it: it is what they hand on.
    keep_raw: bool = False
    pii_key_file: str = ".tripflow/pii.key"
    #: From ``TRIPFLOW_PII_KEY`` only (never the TOML file, never a flag).
    pii_key: str | None = field(default=None, repr=False)

    def validate(self) -> Settings:
        if self.rows < 0:
            raise UsageError(f"rows must be >= 0, got {self.rows}")
        if self.min_rows < 0:
            raise UsageError(f"min_rows must be >= 0, got {self.min_rows}")
        if not 0.0 <= self.quarantine_threshold <= 1.0:
            raise UsageError(
                f"quarantine_threshold must be between 0 and 1, got {self.quarantine_threshold}"
            )
        try:
            ZoneInfo(self.source_timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise UsageError(f"unknown source_timezone {self.source_timezone!r}") from exc
        return self


_FIELD_TYPES = {f.name: f.type for f in fields(Settings)}
_SECRET_FIELDS = {"pii_key"}
_BOOLEANS = {
    **dict.fromkeys(("true", "1", "yes", "on"), True),
    **dict.fromkeys(("false", "0", "no", "off"), False),
}


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELD_TYPES[name]
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in _BOOLEANS:
                raise ValueError(text)
            return _BOOLEANS[text]
        if kind == "tuple[str, ...]":
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(v).strip() for v in items if str(v).strip())
        return None if value is None else str(value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"setting {name!r}: cannot read {value!r} as {kind}") from exc


def load_settings(
    overrides: dict[str, Any] | None = None,
    *,
    config_file: str | Path | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build the settings: defaults < ``tripflow.toml`` < ``TRIPFLOW_*`` < ``overrides`` (flags)."""
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    path = Path(config_file or env.get("TRIPFLOW_CONFIG", CONFIG_FILE))
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path}: not valid TOML: {exc}") from exc
        section = data.get("tripflow", data)
        for key, value in section.items():
            if key not in _FIELD_TYPES or key in _SECRET_FIELDS:
                raise UsageError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(key, value)
    for name in _FIELD_TYPES:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None and raw != "":
            values[name] = _coerce(name, raw)
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value)
    return replace(Settings(), **values).validate()


def retry_delays(environ: dict[str, str] | None = None) -> list[float]:
    """Seconds between a stage's retries (``TRIPFLOW_RETRY_DELAYS``, e.g. ``2,10``)."""
    env = os.environ if environ is None else environ
    raw = env.get("TRIPFLOW_RETRY_DELAYS", "2,10")
    try:
        return [float(v) for v in raw.split(",") if v.strip()]
    except ValueError as exc:
        raise UsageError(f"TRIPFLOW_RETRY_DELAYS: not a list of seconds: {raw!r}") from exc


def pii_key(settings: Settings) -> bytes:
    """The HMAC key for PII: ``TRIPFLOW_PII_KEY``, else one generated once into a 0600 file."""
    if settings.pii_key:
        return settings.pii_key.encode("utf-8")
    if os.environ.get("TRIPFLOW_PII_KEY"):
        return os.environ["TRIPFLOW_PII_KEY"].encode("utf-8")
    path = Path(settings.pii_key_file)
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode("ascii")
    # Written whole under a private name, then linked into place: runs racing to create the key
    # (a backfill's days, in threads) all end up with the one that was linked first, never a
    # half-written file.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_bytes().strip()
    finally:
        tmp.unlink(missing_ok=True)
    return key


def postgres_dsn(settings: Settings, environ: dict[str, str] | None = None) -> str | None:
    """The PostgreSQL source's DSN: the Prefect ``Secret`` block ``postgres_dsn_block`` names,
    else ``TRIPFLOW_POSTGRES_DSN``; never TOML values, flags or flow parameters."""
    if settings.postgres_dsn_block:
        return _secret_block(settings.postgres_dsn_block, "postgres_dsn_block")
    env = os.environ if environ is None else environ
    return env.get("TRIPFLOW_POSTGRES_DSN") or None


def _secret_block(name: str, setting: str) -> str:
    """The value of the Prefect ``Secret`` block ``name`` (loaded from the Prefect API)."""
    from prefect.blocks.system import Secret

    try:
        block = cast("Secret[Any]", Secret.load(name))
    except ValueError:
        raise UsageError(
            f"{setting} {name!r}: no Secret block by that name; create it with "
            f"`Secret(value=...).save({name!r})` (prefect.blocks.system)"
        ) from None
    except Exception as exc:  # the Prefect API unreachable: say so without the block's value
        raise InfrastructureError(
            f"{setting} {name!r}: cannot load the Secret block: {type(exc).__name__}"
        ) from None
    value = block.get()
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{setting} {name!r}: the Secret block holds no DSN string")
    return value.strip()


def kafka_credentials(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Kafka SASL credentials: ``TRIPFLOW_KAFKA_SASL_USERNAME``/``_PASSWORD`` (env only)."""
    env = os.environ if environ is None else environ
    found = {
        "sasl.username": env.get("TRIPFLOW_KAFKA_SASL_USERNAME", ""),
        "sasl.password": env.get("TRIPFLOW_KAFKA_SASL_PASSWORD", ""),
    }
    return {key: value for key, value in found.items() if value}


def key_fingerprint(key: bytes) -> str:
    """A fingerprint that identifies a key without revealing it."""
    return hmac.new(key, b"tripflow-pii-key-fingerprint", hashlib.sha256).hexdigest()[:16]
