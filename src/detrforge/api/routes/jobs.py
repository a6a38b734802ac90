"""Jobs of every kind in one place: list, show, log tail, cancel (the console's Jobs page).

The per-kind routes (``/finetune-jobs``, ``/evaluations``, ``/benchmarks``, ``/sweeps``) stay
as they are; these answer for any job id, whatever kind of job it names.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response

from detrforge.api.deps import Operator, ServicesDep, Viewer
from detrforge.api.errors import ERROR_RESPONSES
from detrforge.api.media import LOG_TEXT
from detrforge.api.pagination import JobPage, jobs_page
from detrforge.api.params import LogTail
from detrforge.api.schemas import JobPublic, JobsPublic
from detrforge.control.jobs import JobKind

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


@router.get("", response_model=JobsPublic)
def list_jobs(
    services: ServicesDep,
    _: Viewer,
    page: JobPage,
    kind: Annotated[JobKind | None, Query(description="Only jobs of this kind.")] = None,
) -> JobsPublic:
    """Jobs of every kind (or of one ``kind``), newest first, optionally filtered by state."""
    return jobs_page(services, kind.value if kind else None, page)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, services: ServicesDep, _: Viewer) -> JobPublic:
    """One job of any kind: state, progress (epoch, step, loss, ETA), metrics, MLflow run."""
    return JobPublic.of(services.jobs.reconcile(job_id))


@router.get("/{job_id}/logs", response_model=None, response_class=Response, responses=LOG_TEXT)
def job_logs(job_id: str, services: ServicesDep, _: Viewer, tail: LogTail = None) -> Response:
    """The job's driver and worker logs (``tail``: only the last N lines)."""
    return PlainTextResponse(services.jobs.logs(job_id, tail=tail))


@router.post("/{job_id}/cancel", response_model=JobPublic, status_code=202)
def cancel_job(job_id: str, services: ServicesDep, _: Operator) -> JobPublic:
    """Stop the job on Ray (a sweep with every trial); CANCELLED once Ray confirms."""
    return JobPublic.of(services.jobs.cancel(job_id))
