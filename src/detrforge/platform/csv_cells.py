"""CSV cells that a spreadsheet opens as text, never as a formula (CSV injection).

OWASP's rule: a cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is
prefixed with a single quote. A cell that already starts with a quote gets one more, so
:func:`unescape_cell` gives back the exact text. Numbers are written by the exporters as numbers
and are not text cells, so ``-1.5`` stays a number.
"""

from __future__ import annotations

__all__ = ["FORMULA_PREFIXES", "escape_cell", "unescape_cell"]

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"


def escape_cell(text: str) -> str:
    """``text`` safe for a spreadsheet: quoted when it would start a formula (or a quote)."""
    if text.startswith((*FORMULA_PREFIXES, _QUOTE)):
        return _QUOTE + text
    return text


def unescape_cell(cell: str) -> str:
    """The text :func:`escape_cell` was given."""
    return cell[1:] if cell.startswith(_QUOTE) else cell
