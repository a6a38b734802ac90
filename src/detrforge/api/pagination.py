"""The one way job lists are filtered and paged: ``?state=&limit=&offset=``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from detrforge.api.deps import Services
from detrforge.api.params import PageLimit, PageOffset
from detrforge.api.schemas import JobPublic, JobsPublic
from detrforge.registry.entities import JobState

__all__ = ["JobPage", "JobPageParams", "jobs_page"]


@dataclass(frozen=True)
class JobPageParams:
    state: JobState | None
    limit: int
    offset: int


def _params(
    state: JobState | None = None,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
) -> JobPageParams:
    return JobPageParams(state=state, limit=limit, offset=offset)


JobPage = Annotated[JobPageParams, Depends(_params)]


def jobs_page(services: Services, kind: str | None, page: JobPageParams) -> JobsPublic:
    """Jobs of ``kind`` (every kind for None), newest first, as one page with the total."""
    jobs, total = services.jobs.job_store.list(
        state=page.state, kind=kind, limit=page.limit, offset=page.offset
    )
    return JobsPublic(
        items=[JobPublic.of(j) for j in jobs], total=total, limit=page.limit, offset=page.offset
    )
