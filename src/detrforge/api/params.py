"""Path and query parameters every route shares, bounded so no value reaches the database
unchecked (a 65-bit offset is a 422 naming ``offset``, not a driver overflow)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import AfterValidator, BeforeValidator

from detrforge.platform.limits import MAX_INT, MAX_PAGE_SIZE, MAX_QUERY_TEXT_LENGTH

__all__ = ["LogTail", "PageLimit", "PageOffset", "QueryText", "QueryTime", "VersionNumber"]

PageLimit = Annotated[
    int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"Page size, 1 to {MAX_PAGE_SIZE}.")
]
PageOffset = Annotated[int, Query(ge=0, le=MAX_INT, description="Items to skip.")]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_INT, description="The version number, from 1.")]
LogTail = Annotated[
    int | None, Query(ge=1, le=1_000_000, description="Only the last N lines (1 to 1,000,000).")
]
QueryText = Annotated[str | None, Query(min_length=1, max_length=MAX_QUERY_TEXT_LENGTH)]


# A date and a time of day: what the schema's ``format: date-time`` promises. Pydantic alone would
# also take a bare date, or a number as seconds since 1970 (``since=-3e-59``).
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _iso_date_time(value: Any) -> Any:
    """Refuse what is not an ISO 8601 date and time, before pydantic reads it leniently."""
    if isinstance(value, str) and not _DATE_TIME.match(value):
        raise ValueError("not an ISO 8601 date and time: use e.g. 2026-01-01T00:00:00Z")
    return value


def _in_utc_range(value: datetime | None) -> datetime | None:
    """Refuse a time that has no UTC equivalent (year 9999 at -14:00 is past datetime.max)."""
    if value is not None and value.tzinfo is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError("the time is out of range once converted to UTC") from None
    return value


QueryTime = Annotated[
    datetime | None,
    Query(description="ISO 8601 with a time zone, e.g. 2026-01-01T00:00:00Z."),
    BeforeValidator(_iso_date_time),
    AfterValidator(_in_utc_range),
]
