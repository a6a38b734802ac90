"""The non-JSON bodies routes answer, declared once for the OpenAPI document."""

from __future__ import annotations

from typing import Any

__all__ = ["CSV_EXPORT", "LOG_TEXT", "PNG_IMAGE"]

_TEXT = {"schema": {"type": "string"}}

# ``format=csv``: the same page as CSV (the JSON body comes from the route's response_model).
CSV_EXPORT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The page as JSON, or as CSV with `format=csv`.",
        "content": {"text/csv": _TEXT},
    }
}
LOG_TEXT: dict[int | str, dict[str, Any]] = {
    200: {"description": "Plain-text log lines.", "content": {"text/plain": _TEXT}}
}
PNG_IMAGE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A PNG image.",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
    }
}
