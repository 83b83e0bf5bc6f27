"""The failures tripflow tells apart, each with the exit code the CLI gives it.

- ``SchemaError`` (exit 2): the input does not fit the trip contract; nothing is staged or loaded.
  It names the file, column and row and never quotes the input cell (it could be an e-mail or a
  secret): it carries a ``ValueDescription`` of it instead (``describe_value``).
- ``ChecksFailed`` (exit 1): the day was loaded into its run's staging table but a check failed;
  nothing is published.
- ``InfrastructureError`` (exit 3): a source, storage or warehouse failed after its retries.
- ``InternalError`` (exit 3): anything else a stage raised — a bug, or a library refusing the
  input in a way tripflow does not recognise yet.

A library's own message (Polars, DuckDB, a warehouse's driver) can quote the cell it refused:
``library_message`` withholds what it quotes and anything shaped like an e-mail before it goes into
an error, and ``input_withheld`` turns any unexpected exception of a stage into an
``InternalError`` carrying only that, so that neither Prefect's task and flow states and logs nor
the CLI's output nor the ledger ever carry it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final


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


#: The longest shape a description shows (longer ones are cut, and say so).
SHAPE_LIMIT: Final = 24
#: Hex characters of the keyed fingerprint in a description (32 bits: enough to find a row).
FINGERPRINT_HEX_CHARS: Final = 8


@dataclass(frozen=True)
class ValueDescription:
    """What an error may say about an input cell: never the cell, only ``describe_value``'s text.

    A distinct type, so that passing a raw cell where a description is expected fails the type
    check (``SchemaError(value=...)`` takes only this).
    """

    text: str

    def __str__(self) -> str:
        return self.text


def value_shape(text: str) -> str:
    """The character classes of ``text``, runs collapsed: letters ``a``, digits ``9``, spaces
    ``_``, other characters as they are: ``alice.smith@rider.example`` -> ``a.a@a.a``,
    ``2,5`` -> ``9,9``, ``12 USD`` -> ``9_a``."""
    out: list[str] = []
    for char in text:
        cls = "a" if char.isalpha() else "9" if char.isdigit() else "_" if char.isspace() else char
        if not out or out[-1] != cls or cls not in "a9_":
            out.append(cls)
    shape = "".join(out)
    return shape if len(shape) <= SHAPE_LIMIT else shape[: SHAPE_LIMIT - 1] + "…"


def describe_value(value: Any, fingerprint: Callable[[str], str] | None = None) -> ValueDescription:
    """A description of an input cell that does not quote it: its length, whether it holds an
    ``@``, its shape (``value_shape``) and, with ``fingerprint`` (a keyed hash of the run's PII
    key), the first ``FINGERPRINT_HEX_CHARS`` of that hash, so a user with the key can find the
    row (``tasks.transforms.value_fingerprint``)."""
    text = str(value)
    parts = [f"text of {len(text)} character{'s' if len(text) != 1 else ''}"]
    if "@" in text:
        parts[0] += " containing '@'"
    parts.append(f"shape {value_shape(text)!r}")
    if fingerprint is not None:
        parts.append(f"fingerprint {fingerprint(text)[:FINGERPRINT_HEX_CHARS]}")
    return ValueDescription(", ".join(parts))


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
        value: ValueDescription | None = None,
    ) -> None:
        if value is not None and not isinstance(value, ValueDescription):
            raise TypeError("SchemaError(value=...) takes a describe_value(...), never a cell")
        parts = [message]
        if file is not None:
            parts.append(f"file {file}")
        if column is not None:
            parts.append(f"column {column!r}")
        if row is not None:
            parts.append(f"row {row}")
        if value is not None:
            parts.append(f"value: {value.text}")
        super().__init__(parts[0] + (" (" + ", ".join(parts[1:]) + ")" if parts[1:] else ""))
        self.file = file
        self.column = column
        self.row = row
        #: The description of the bad cell (``describe_value``), never the cell itself.
        self.value = None if value is None else value.text

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


class InternalError(TripflowError):
    """An exception a stage did not expect (exit 3), its message passed through
    ``library_message``. Not retried: a bug or a refused input does not fix itself."""

    kind = "internal"
    exit_code = 3


#: What a library's message quotes: `…`, '…' or "…" (Polars quotes a cell it cannot parse in
#: backticks, DuckDB and PostgreSQL in quotes).
QUOTED: Final = re.compile(r"`[^`]*`|'[^']*'|\"[^\"]*\"")
#: Anything e-mail shaped left unquoted.
EMAIL_SHAPED: Final = re.compile(r"[^\s'\"`]+@[^\s'\"`]+")
#: Quoted words a library's message may keep: type names (nobody's data).
TYPE_NAME: Final = re.compile(
    r"(?i)(str|string|utf-?8|bool(ean)?|binary|date|time|timestamp"
    r"|datetime(\[[a-z]+(, ?[\w/+-]+)?\])?|duration|decimal(\(\d+, ?\d+\))?|null"
    r"|[iuf](8|16|32|64)|u?int(8|16|32|64)?|bigint"
    r"|float(32|64)?|double|numeric|list(\[[\w ,]+\])?|struct|array|categorical|varchar|text)"
)
#: The longest library message an error carries (the rest is cut, and says so).
LIBRARY_MESSAGE_LIMIT: Final = 400


def library_message(exc: BaseException, keep: Collection[str] = ()) -> str:
    """``Type: message`` of a library's exception (its first paragraph) with every quoted span
    withheld (it may be an input cell) unless it is a type name or in ``keep`` (e.g. the file's
    column names), and every e-mail-shaped word withheld:
    ``could not parse `<text of 31 characters withheld>` as dtype `str` at column 'fare_usd'``."""

    def quoted(match: re.Match[str]) -> str:
        span = match.group(0)
        inner = span[1:-1]
        if inner in keep or TYPE_NAME.fullmatch(inner):
            return span
        return f"{span[0]}<text of {len(inner)} characters withheld>{span[-1]}"

    first = str(exc).strip().split("\n\n")[0]  # Polars adds paragraphs of hints after the fact
    text = QUOTED.sub(quoted, " ".join(first.split()))
    text = EMAIL_SHAPED.sub("<e-mail-shaped text withheld>", text)
    if len(text) > LIBRARY_MESSAGE_LIMIT:
        text = text[: LIBRARY_MESSAGE_LIMIT - 1] + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def input_withheld(stage: str) -> Iterator[None]:
    """Re-raise what a stage did not expect as an ``InternalError`` whose message is the
    library's, withheld (``library_message``); the original is not chained (Prefect would log
    it), but its traceback is kept: code lines, no data."""
    try:
        yield
    except (TripflowError, TimeoutError):  # a task's timeout is Prefect's to handle
        raise
    except Exception as exc:
        error = InternalError(f"{stage}: {library_message(exc)}")
        raise error.with_traceback(exc.__traceback__) from None


class ChecksFailed(TripflowError):
    """At least one validate check failed: the day is not published (exit 1)."""

    kind = "checks"
    exit_code = 1

    def __init__(self, failed: list[str]) -> None:
        super().__init__("checks failed: " + ", ".join(failed) + " (nothing published)")
        self.failed = failed


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
    if kind == "internal":
        return InternalError(message)
    return InfrastructureError(message)
