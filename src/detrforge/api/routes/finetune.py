"""Fine-tune jobs: submit, list, show, logs, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from detrforge.api.bodies import json_body
from detrforge.api.deps import Operator, ServicesDep, Viewer
from detrforge.api.errors import ERROR_RESPONSES
from detrforge.api.media import LOG_TEXT
from detrforge.api.pagination import JobPage, jobs_page
from detrforge.api.params import LogTail
from detrforge.api.schemas import JobPublic, JobsPublic
from detrforge.detector.specs import FinetuneSpec, parse_spec

router = APIRouter(prefix="/api/v1/finetune-jobs", tags=["finetune"], responses=ERROR_RESPONSES)

_SPEC_BODY = json_body(FinetuneSpec)


@router.post("", response_model=JobPublic, status_code=201, openapi_extra=_SPEC_BODY)
def submit_finetune(
    body: Annotated[Any, Body()], services: ServicesDep, key: Operator
) -> JobPublic:
    """Validate the spec and dataset, then submit a fine-tune job to Ray."""
    spec = parse_spec(FinetuneSpec, body)
    return JobPublic.of(services.jobs.submit_finetune(spec, principal=key))


@router.get("", response_model=JobsPublic)
def list_finetune_jobs(services: ServicesDep, _: Viewer, page: JobPage) -> JobsPublic:
    """Fine-tune jobs, newest first, optionally filtered by state."""
    return jobs_page(services, "finetune", page)


@router.get("/{job_id}", response_model=JobPublic)
def get_finetune_job(job_id: str, services: ServicesDep, _: Viewer) -> JobPublic:
    """One job: state, progress, latest metrics, MLflow run, checkpoints, error."""
    return JobPublic.of(services.jobs.reconcile(job_id))


# response_class=Response: with no media type of its own, the errors stay declared as JSON.
@router.get("/{job_id}/logs", response_model=None, response_class=Response, responses=LOG_TEXT)
def finetune_job_logs(
    job_id: str,
    services: ServicesDep,
    _: Viewer,
    tail: LogTail = None,
    follow: bool = False,
) -> PlainTextResponse | StreamingResponse:
    """The job's driver and worker logs; ``follow=true`` streams them until the job ends."""
    if follow:
        services.jobs.job_store.get(job_id)
        return StreamingResponse(services.jobs.follow_logs(job_id), media_type="text/plain")
    return PlainTextResponse(services.jobs.logs(job_id, tail=tail))


@router.post("/{job_id}/cancel", response_model=JobPublic, status_code=202)
def cancel_finetune_job(job_id: str, services: ServicesDep, _: Operator) -> JobPublic:
    """Stop the job on Ray; it reaches CANCELLED once Ray confirms."""
    return JobPublic.of(services.jobs.cancel(job_id))
