"""Bounds on everything a client sends: page sizes, integers, text, lists, JSON nesting.

One module owns every input limit, so the API, the stores and the specs agree on them and the
error messages can state them. The request body limit and the annotation file cap are settings
(``Settings.max_request_bytes``, ``Settings.max_annotation_bytes``); their defaults live here.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, StrictStr, TypeAdapter, ValidationError

from detrforge.platform.errors import InvalidSpecError

__all__ = [
    "CONTROL_CHARACTERS",
    "DEFAULT_MAX_ANNOTATION_BYTES",
    "DEFAULT_MAX_REQUEST_BYTES",
    "MAX_CLASS_NAMES",
    "MAX_CLASS_NAME_LENGTH",
    "MAX_DESCRIPTION_LENGTH",
    "MAX_INT",
    "MAX_JSON_DEPTH",
    "MAX_NAME_LENGTH",
    "MAX_PAGE_SIZE",
    "MAX_QUERY_TEXT_LENGTH",
    "MAX_REASON_LENGTH",
    "MAX_RESOURCE_AMOUNT",
    "MAX_URI_LENGTH",
    "ClassNames",
    "Description",
    "Name",
    "Reason",
    "Uri",
    "check_name",
    "check_page",
    "json_has_non_finite",
    "json_nesting_depth",
    "parse_reason",
]

# The largest page any list route returns.
MAX_PAGE_SIZE = 1000
# Integers in paths and queries (ids, versions, offsets) fit a signed 64-bit column: a larger
# value would overflow the database driver instead of finding nothing.
MAX_INT = 2**63 - 1
MAX_NAME_LENGTH = 128
MAX_DESCRIPTION_LENGTH = 4000
MAX_REASON_LENGTH = 2000
MAX_URI_LENGTH = 4096
MAX_QUERY_TEXT_LENGTH = 256
# LVIS has 1,203 categories; nobody fine-tunes a detector on more than a few thousand.
MAX_CLASS_NAMES = 2048
MAX_CLASS_NAME_LENGTH = 128
# Request bodies are specs and policies a few levels deep; 32 leaves room and stays far from
# the interpreter's recursion limit (a deeper document crashes parsers that recurse).
MAX_JSON_DEPTH = 32
# A Ray resource quantity: "memory" is counted in bytes, so the cap is a petabyte-scale number,
# not 1e308.
MAX_RESOURCE_AMOUNT = float(2**50)

DEFAULT_MAX_REQUEST_BYTES = 1024 * 1024
DEFAULT_MAX_ANNOTATION_BYTES = 1024 * 1024 * 1024

# C0 and C1 control characters and DEL: ANSI escapes start with ESC (\x1b), so these cover them.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Free text may hold line breaks and tabs, never other control characters.
_TEXT_CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_NAME_SCHEMA_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
_TEXT_SCHEMA_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
# The sources the server reads (platform/sources.py): an absolute path, file: or s3:// URI.
_URI_SCHEMA_PATTERN = r"^(?:/|file:|s3://)[^\x00-\x1f\x7f-\x9f]*$"


def check_name(value: str) -> str:
    """``value`` if it holds no control character, else ``ValueError`` saying where one is."""
    return _refuse(value, CONTROL_CHARACTERS, "a name")


def _check_text(value: str) -> str:
    return _refuse(value, _TEXT_CONTROL_CHARACTERS, "text (line breaks and tabs are fine)")


def _refuse(value: str, pattern: re.Pattern[str], what: str) -> str:
    found = pattern.search(value)
    if found is not None:
        raise ValueError(
            f"{what} must not contain control characters; found {found.group()!r} at position "
            f"{found.start()}"
        )
    return value


Name = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=MAX_NAME_LENGTH,
        json_schema_extra={"pattern": _NAME_SCHEMA_PATTERN},
    ),
    AfterValidator(check_name),
]


Description = Annotated[
    StrictStr,
    Field(max_length=MAX_DESCRIPTION_LENGTH, json_schema_extra={"pattern": _TEXT_SCHEMA_PATTERN}),
    AfterValidator(_check_text),
]
Reason = Annotated[
    StrictStr,
    Field(max_length=MAX_REASON_LENGTH, json_schema_extra={"pattern": _TEXT_SCHEMA_PATTERN}),
    AfterValidator(_check_text),
]
Uri = Annotated[
    StrictStr,
    Field(
        min_length=1, max_length=MAX_URI_LENGTH, json_schema_extra={"pattern": _URI_SCHEMA_PATTERN}
    ),
    AfterValidator(check_name),
]
ClassName = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=MAX_CLASS_NAME_LENGTH,
        json_schema_extra={"pattern": _NAME_SCHEMA_PATTERN},
    ),
    AfterValidator(check_name),
]
ClassNames = Annotated[list[ClassName], Field(max_length=MAX_CLASS_NAMES)]

_NOT_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[^\[\]{}"]+', re.DOTALL)


def json_nesting_depth(raw: bytes, *, stop_at: int | None = None) -> int:
    """How deeply the arrays and objects of JSON text ``raw`` nest (0 for a scalar).

    Counts brackets outside strings, without parsing, so a hostile document cannot make it
    recurse; ``stop_at`` returns as soon as that depth is reached.
    """
    depth = deepest = 0
    for char in _NOT_STRUCTURE.sub(b"", raw):
        if char in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_at is not None and deepest >= stop_at:
                    return deepest
        elif char in b"]}":
            depth -= 1
    return deepest


def check_page(limit: int, offset: int) -> None:
    """Refuse a page the stores cannot serve: ``limit`` in 1..MAX_PAGE_SIZE, ``offset`` >= 0."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidSpecError(f"limit must be between 1 and {MAX_PAGE_SIZE}", field="limit")
    if not 0 <= offset <= MAX_INT:
        raise InvalidSpecError(f"offset must be between 0 and {MAX_INT}", field="offset")


_REASON: TypeAdapter[str | None] = TypeAdapter(Reason | None)


def parse_reason(value: object) -> str | None:
    """A free-text ``reason`` taken from a body by hand, held to the ``Reason`` rules."""
    try:
        return _REASON.validate_python(value)
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise InvalidSpecError(f"reason: {message}", field="reason") from None


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NON_FINITE = re.compile(rb"NaN|Infinity")


def json_has_non_finite(raw: bytes) -> bool:
    """Whether JSON text ``raw`` uses ``NaN`` or ``Infinity``, which Python's parser accepts
    but JSON does not (and no database stores in a JSON column)."""
    return _NON_FINITE.search(_STRINGS.sub(b"", raw)) is not None
