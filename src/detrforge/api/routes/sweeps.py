"""Sweeps: submit, list, watch trials, result (front, best, pick), Pareto plot, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi.responses import Response
from pydantic import BaseModel, Field

from detrforge.api.bodies import json_body
from detrforge.api.deps import Operator, ServicesDep, Viewer
from detrforge.api.errors import ERROR_RESPONSES
from detrforge.api.media import PNG_IMAGE
from detrforge.api.pagination import JobPage, jobs_page
from detrforge.api.schemas import JobPublic, JobsPublic
from detrforge.control.sweeps import SweepService
from detrforge.detector.specs import parse_spec
from detrforge.detector.sweep_specs import SweepRequest, ranking_metric

router = APIRouter(prefix="/api/v1/sweeps", tags=["sweeps"], responses=ERROR_RESPONSES)

_SPEC_BODY = json_body(SweepRequest)


def _sweeps(services: ServicesDep) -> SweepService:
    return services.sweeps


SweepsDep = Annotated[SweepService, Depends(_sweeps)]


class SweepPublic(JobPublic):
    # What trials' ``ap`` and ``best_ap`` are: bbox/AP, or segm/AP (mask AP) for a seg sweep.
    metric: str
    trials: list[dict[str, Any]]


class SweepResultPublic(BaseModel):
    job_id: str
    target: str
    metric: str = "bbox/AP"  # results written before seg sweeps have no such field
    objective: str | None = Field(default=None, description="What ASHA ranked the trials by.")
    trials: list[dict[str, Any]]
    front: list[dict[str, Any]]
    best: dict[str, Any] | None
    pick: dict[str, Any]
    trial_epochs: int
    stopped_early: int
    wall_s: float


@router.post("", response_model=JobPublic, status_code=201, openapi_extra=_SPEC_BODY)
def submit_sweep(body: Annotated[Any, Body()], sweeps: SweepsDep, key: Operator) -> JobPublic:
    """Validate the search space, dataset and target, then submit the sweep as one Ray job."""
    request = parse_spec(SweepRequest, body)  # the space first: its errors need no cluster
    return JobPublic.of(sweeps.submit(request, principal=key))


@router.get("", response_model=JobsPublic)
def list_sweeps(services: ServicesDep, _: Viewer, page: JobPage) -> JobsPublic:
    """Sweeps, newest first, optionally filtered by state."""
    return jobs_page(services, "sweep", page)


@router.get("/{job_id}", response_model=SweepPublic)
def get_sweep(job_id: str, sweeps: SweepsDep, _: Viewer) -> SweepPublic:
    """One sweep: state and its trials (state, epochs, AP so far, measured p95)."""
    job = sweeps.get(job_id)
    return SweepPublic(
        **JobPublic.of(job).model_dump(),
        metric=ranking_metric(job.spec),
        trials=sweeps.trials(job),
    )


@router.get("/{job_id}/result", response_model=SweepResultPublic)
def sweep_result(job_id: str, sweeps: SweepsDep, _: Viewer) -> SweepResultPublic:
    """The Pareto front of AP vs p95, the best trial by AP and the SLA pick; 409 until done."""
    return SweepResultPublic.model_validate(sweeps.result(job_id))


@router.get("/{job_id}/pareto.png", response_class=Response, responses=PNG_IMAGE)
def sweep_plot(job_id: str, sweeps: SweepsDep, _: Viewer) -> Response:
    """The Pareto plot (PNG); 409 until the sweep has succeeded."""
    return Response(sweeps.plot(job_id), media_type="image/png")


@router.post("/{job_id}/cancel", response_model=JobPublic, status_code=202)
def cancel_sweep(job_id: str, sweeps: SweepsDep, _: Operator) -> JobPublic:
    """Stop the sweep and every trial; it reaches CANCELLED once Ray confirms."""
    return JobPublic.of(sweeps.cancel(job_id))
