"""The failures tripflow tells apart, each with the exit code the CLI gives it.

- ``SchemaError`` (exit 2): the input does not fit the trip contract; nothing is staged or loaded.
- ``ChecksFailed`` (exit 1): the day was loaded into its run's staging table but a check failed;
  nothing is published.
- ``InfrastructureError`` (exit 3): a source, storage or warehouse failed after its retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class TripflowError(Exception):
    """Base class: every failure the CLI reports carries a kind and an exit code."""

    kind = "error"
    exit_code = 3

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "file": None,
            "column": None,
            "row": None,
            "value": None,
        }


class UsageError(TripflowError):
    """Bad arguments or configuration (exit 2)."""

    kind = "usage"
    exit_code = 2


@dataclass
class SchemaProblem:
    message: str
    file: str | None = None
    column: str | None = None
    row: int | None = None
    value: str | None = None


class SchemaError(TripflowError):
    """The input does not fit the contract: names the file, the column and the first bad row."""

    kind = "schema"
    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: int | None = None,
        value: Any = None,
    ) -> None:
        parts = [message]
        if file is not None:
            parts.append(f"file {file}")
        if column is not None:
            parts.append(f"column {column!r}")
        if row is not None:
            parts.append(f"row {row}")
        if value is not None:
            parts.append(f"value {_short(value)!r}")
        super().__init__(parts[0] + (" (" + ", ".join(parts[1:]) + ")" if parts[1:] else ""))
        self.file = file
        self.column = column
        self.row = row
        self.value = None if value is None else _short(value)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "file": self.file,
            "column": self.column,
            "row": self.row,
            "value": self.value,
        }


class InfrastructureError(TripflowError):
    """A source, staging store or warehouse failed after its retries (exit 3)."""

    kind = "infrastructure"
    exit_code = 3


class ChecksFailed(TripflowError):
    """At least one validate check failed: the day is not published (exit 1)."""

    kind = "checks"
    exit_code = 1

    def __init__(self, failed: list[str]) -> None:
        super().__init__("checks failed: " + ", ".join(failed) + " (nothing published)")
        self.failed = failed


def _short(value: Any, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_from_dict(data: dict[str, Any]) -> TripflowError:
    """Rebuild a failure a stage recorded (``as_dict``) in another process, keeping its kind."""
    kind = data.get("kind")
    message = str(data.get("message") or "stage failed")
    if kind == "schema":
        error = SchemaError(message)
        error.message = message  # already formatted with its file, column and row
        error.file, error.column, error.row = data.get("file"), data.get("column"), data.get("row")
        error.value = data.get("value")
        return error
    if kind == "usage":
        return UsageError(message)
    if kind == "checks":
        return ChecksFailed(list(data.get("failed") or []))
    return InfrastructureError(message)
