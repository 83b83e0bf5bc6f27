"""Sources of trips, chosen by ``--source SPEC``: ``synthetic``, ``sample``, ``file:PATH`` or
``postgres`` (``postgres:SCHEMA.TABLE``)."""

from __future__ import annotations

from tasks.config import Settings, postgres_dsn
from tasks.errors import UsageError
from tasks.formats import FORMATS
from tasks.sources.base import EMPTY_STATS, ExtractStats, HashEmail, Source
from tasks.sources.files import FileSource, sample_source

__all__ = ["EMPTY_STATS", "ExtractStats", "HashEmail", "Source", "make_source"]


def make_source(settings: Settings) -> Source:
    """The source that ``settings.source`` names (the one place a spec is parsed)."""
    spec = settings.source.strip()
    region_set = frozenset(settings.regions) if settings.regions else None
    if spec == "synthetic":
        from tasks.sources.synthetic import SyntheticSource  # numpy: only for this source

        return SyntheticSource(
            rows=settings.rows,
            seed=settings.synthetic_seed,
            timezone=settings.source_timezone,
            region_set=region_set,
        )
    if spec == "sample":
        return sample_source(region_set)
    if spec.startswith("file:"):
        pattern = spec.removeprefix("file:")
        if not pattern:
            raise UsageError("--source file:PATH needs a path (a file or a glob)")
        if settings.format not in FORMATS:
            raise UsageError(
                f"unknown --format {settings.format!r}; known: {', '.join(sorted(FORMATS))}"
            )
        return FileSource(
            pattern,
            FORMATS[settings.format],
            default_timezone=settings.source_timezone,
            region_set=region_set,
        )
    if spec == "postgres" or spec.startswith("postgres:"):
        from tasks.sources.postgres import PostgresSource

        return PostgresSource(
            postgres_dsn(settings),
            table=spec.removeprefix("postgres").removeprefix(":") or settings.postgres_table,
            columns=settings.postgres_columns,
            timezone=settings.source_timezone,
            region_set=region_set,
            statement_timeout_s=settings.postgres_statement_timeout_s,
        )
    if spec.startswith("kafka:"):
        from tasks.config import kafka_credentials
        from tasks.sources.kafka import KafkaSource

        return KafkaSource(
            spec.removeprefix("kafka:"),
            bootstrap=settings.kafka_bootstrap,
            group=settings.kafka_group,
            timezone=settings.source_timezone,
            region_set=region_set,
            staging_root=settings.staging,
            security_protocol=settings.kafka_security_protocol,
            sasl_mechanism=settings.kafka_sasl_mechanism,
            options=settings.kafka_options,
            credentials=kafka_credentials(),
            lateness_minutes=settings.kafka_lateness_minutes,
            reread=settings.kafka_reread,
            idle_timeout_s=settings.kafka_idle_timeout_s,
        )
    raise UsageError(
        f"unknown --source {spec!r}; use synthetic, sample, file:PATH, postgres[:SCHEMA.TABLE] "
        "or kafka:TOPIC"
    )
