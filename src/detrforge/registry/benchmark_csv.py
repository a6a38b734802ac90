"""Benchmark records as CSV text and back.

CSV rule (:func:`to_csv` / :func:`from_csv`; ``from_csv(to_csv(records))`` gives back every field
value exactly, i.e. ``[BenchmarkRecord(**row) for row in from_csv(text)] == records``):

- The columns are ``BENCHMARK_CSV_COLUMNS`` in that order, then one ``env.<key>`` column per key of
  any record's ``environment``: the keys of ``ENVIRONMENT_KEYS`` in that order, then the others
  sorted.
- An empty cell in a fixed column means None. Empty strings are never stored (``add`` turns an
  empty optional text field into None and refuses an empty required one), so this is unambiguous.
- Integers are written in decimal, floats with ``repr`` (shortest text that reads back to the same
  float; ``inf`` included), ``created_at`` in ISO 8601 with its UTC offset, ``target_resources``
  as JSON text with sorted keys.
- An ``env.<key>`` cell is empty when the record's environment has no such key. Otherwise a value
  that is not a string is written as JSON (``16``, ``true``, ``null`` for None), and a string is
  written as it is, unless it is empty or would itself read as JSON (``"12"``, ``"true"``,
  ``"null"``): then it is written JSON-quoted (the text 12 becomes the cell ``"12"``, quotes
  included, while the number 12 becomes ``12``). Reading, a cell that parses as JSON is that
  value and any other cell is the text itself.
- Text (not numbers, times or JSON) that would start a spreadsheet formula (``=``, ``+``, ``-``,
  ``@``, tab, CR) or starts with ``'`` is written with a leading ``'`` (OWASP's rule for CSV
  injection); reading drops it (``csv_cells``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from detrforge.platform.csv_cells import escape_cell, unescape_cell
from detrforge.platform.environment import ENVIRONMENT_KEYS
from detrforge.platform.errors import InvalidSpecError
from detrforge.registry.benchmark_fields import (
    BENCHMARK_CSV_COLUMNS,
    DOCUMENT_FIELDS,
    FLOAT_FIELDS,
    INT_FIELDS,
    LATER_COLUMNS,
    OPTIONAL_FIELDS,
)
from detrforge.registry.entities import BenchmarkRecord

__all__ = ["ENV_COLUMN_PREFIX", "from_csv", "to_csv"]

ENV_COLUMN_PREFIX = "env."


def _environment_columns(records: Iterable[BenchmarkRecord]) -> list[str]:
    keys: set[str] = set()
    for record in records:
        keys.update(record.environment)
    known = [key for key in ENVIRONMENT_KEYS if key in keys]
    return known + sorted(keys - set(known))


def _reads_as_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _env_cell(value: Any) -> str:
    if isinstance(value, str) and value and not _reads_as_json(value):
        return escape_cell(value)
    return json.dumps(value)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, dict):
        # Sorted: PostgreSQL's JSONB does not keep key order, and an export should not depend
        # on the backend.
        return json.dumps(value, sort_keys=True)
    if isinstance(value, str):
        return escape_cell(value)
    return str(value)


def to_csv(records: Iterable[BenchmarkRecord]) -> str:
    """``records`` as CSV text with a header row, by the rule in this module's docstring."""
    records = list(records)
    env_keys = _environment_columns(records)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*BENCHMARK_CSV_COLUMNS, *(ENV_COLUMN_PREFIX + key for key in env_keys)])
    for record in records:
        cells = [_cell(getattr(record, column)) for column in BENCHMARK_CSV_COLUMNS]
        cells += [
            _env_cell(record.environment[key]) if key in record.environment else ""
            for key in env_keys
        ]
        writer.writerow(cells)
    return buffer.getvalue()


def from_csv(text: str) -> list[dict[str, Any]]:
    """The records of CSV text written by :func:`to_csv`, one dict of every field per row.

    Columns may come in any order. Each dict builds a ``BenchmarkRecord`` as it was exported.

    Raises:
        InvalidSpecError: a missing, repeated or unknown column, or a cell that does not parse;
            ``field`` names the column.
    """
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""))
    header = next(reader, None)
    if header is None:
        raise InvalidSpecError("benchmark CSV is empty: expected a header row", field="csv")
    for column in header:
        if column not in BENCHMARK_CSV_COLUMNS and not _env_key(column):
            raise InvalidSpecError(f"unknown benchmark CSV column {column!r}", field=column)
        if header.count(column) > 1:
            raise InvalidSpecError(f"benchmark CSV column {column!r} repeats", field=column)
    for column in BENCHMARK_CSV_COLUMNS:
        if column not in header and column not in LATER_COLUMNS:
            raise InvalidSpecError(f"benchmark CSV lacks column {column!r}", field=column)
    records = []
    for line, cells in enumerate(reader, start=2):
        if not cells:
            continue
        if len(cells) != len(header):
            raise InvalidSpecError(
                f"benchmark CSV row {line} has {len(cells)} cells, the header {len(header)}",
                field="csv",
            )
        record: dict[str, Any] = {"environment": {}, **dict.fromkeys(LATER_COLUMNS)}
        for column, cell in zip(header, cells, strict=True):
            env_key = _env_key(column)
            if env_key:
                if cell:
                    record["environment"][env_key] = _parse_env(cell)
                continue
            try:
                record[column] = _parse_cell(column, cell)
            except ValueError as error:
                raise InvalidSpecError(
                    f"benchmark CSV row {line}, column {column}: {error}", field=column
                ) from None
        records.append(record)
    return records


def _env_key(column: str) -> str:
    """The environment key an ``env.<key>`` column holds; empty for any other column."""
    return column.removeprefix(ENV_COLUMN_PREFIX) if column.startswith(ENV_COLUMN_PREFIX) else ""


def _parse_env(cell: str) -> Any:
    if cell.startswith("'"):
        return unescape_cell(cell)
    try:
        return json.loads(cell)
    except ValueError:
        return cell


def _parse_cell(column: str, cell: str) -> Any:
    if cell == "":
        if column in OPTIONAL_FIELDS:
            return None
        raise ValueError("empty, but the field is required")
    if column == "created_at":
        at = datetime.fromisoformat(cell)
        if at.tzinfo is None:
            raise ValueError(f"{cell!r} has no UTC offset")
        return at.astimezone(UTC)
    if column == "target_resources" or column in DOCUMENT_FIELDS:
        document = json.loads(cell)
        if not isinstance(document, dict):
            raise ValueError(f"{cell[:80]!r} is not a JSON object")
        return document
    if column in INT_FIELDS:
        return int(cell)
    if column in FLOAT_FIELDS:
        return float(cell)
    return unescape_cell(cell)
