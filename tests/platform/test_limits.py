"""Input limits: JSON nesting and non-finite numbers seen without parsing, names without control
characters, spreadsheet-safe CSV cells."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from detrforge.platform.csv_cells import escape_cell, unescape_cell
from detrforge.platform.errors import InvalidSpecError
from detrforge.platform.limits import (
    MAX_INT,
    MAX_PAGE_SIZE,
    Description,
    Name,
    check_page,
    json_has_non_finite,
    json_nesting_depth,
)


@pytest.mark.parametrize(
    ("raw", "depth"),
    [
        (b"1", 0),
        (b'"[[[["', 0),
        (b"[]", 1),
        (b'{"a": [{"b": [1, 2]}]}', 4),
        (b'["\\"[[", [[]]]', 3),
        (b"[" * 10_000 + b"]" * 10_000, 10_000),
    ],
)
def test_json_nesting_depth_counts_structure_outside_strings(raw: bytes, depth: int) -> None:
    assert json_nesting_depth(raw) == depth


def test_json_nesting_depth_stops_early() -> None:
    assert json_nesting_depth(b"[" * 1_000_000, stop_at=33) == 33


@pytest.mark.parametrize(
    ("raw", "found"),
    [
        (b'{"a": NaN}', True),
        (b"[-Infinity]", True),
        (b'{"NaN": "Infinity"}', False),
        (b'["say \\"NaN\\""]', False),
        (b"[1e308, -0.0]", False),
    ],
)
def test_non_finite_tokens_outside_strings(raw: bytes, found: bool) -> None:
    assert json_has_non_finite(raw) is found


@pytest.mark.parametrize(
    "name", ["ops\x1b[31m", "a\x00b", "tab\there", "line\nbreak", "del\x7f", "c1\x9b"]
)
def test_names_refuse_control_characters(name: str) -> None:
    with pytest.raises(ValidationError, match="must not contain control characters"):
        TypeAdapter(Name).validate_python(name)


def test_descriptions_allow_line_breaks_and_tabs_only() -> None:
    adapter = TypeAdapter(Description)
    assert adapter.validate_python("one\ntwo\r\n\tthree") == "one\ntwo\r\n\tthree"
    with pytest.raises(ValidationError, match="found '\\\\x1b' at position 4"):
        adapter.validate_python("red \x1b[31m")
    with pytest.raises(ValidationError, match="valid string"):
        adapter.validate_python(5)


def test_check_page_bounds() -> None:
    check_page(MAX_PAGE_SIZE, MAX_INT)
    for limit, offset, field in [(0, 0, "limit"), (MAX_PAGE_SIZE + 1, 0, "limit"),
                                 (1, -1, "offset"), (1, MAX_INT + 1, "offset")]:  # fmt: skip
        with pytest.raises(InvalidSpecError) as caught:
            check_page(limit, offset)
        assert caught.value.field == field


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("'quoted", "''quoted"),
        ("plain", "plain"),
        ("", ""),
        ("a=b", "a=b"),
    ],
)
def test_csv_cells_escape_formulas_reversibly(text: str, cell: str) -> None:
    assert escape_cell(text) == cell
    assert unescape_cell(cell) == text
