"""Evaluation and benchmark jobs: submit, list, show."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from detrforge.api.bodies import json_body
from detrforge.api.deps import Operator, ServicesDep, Viewer
from detrforge.api.errors import ERROR_RESPONSES
from detrforge.api.pagination import JobPage, jobs_page
from detrforge.api.schemas import JobPublic, JobsPublic
from detrforge.detector.specs import BenchmarkRequest, EvaluateRequest, parse_spec

router = APIRouter(prefix="/api/v1", tags=["evaluation"], responses=ERROR_RESPONSES)


@router.post(
    "/evaluations",
    response_model=JobPublic,
    status_code=201,
    openapi_extra=json_body(EvaluateRequest),
)
def submit_evaluation(
    body: Annotated[Any, Body()], services: ServicesDep, key: Operator
) -> JobPublic:
    """Evaluate a checkpoint (or a fine-tune job's model) on a COCO split: bbox AP, per class."""
    request = parse_spec(EvaluateRequest, body)
    return JobPublic.of(services.jobs.submit_evaluation(request, principal=key))


@router.post(
    "/benchmarks",
    response_model=JobPublic,
    status_code=201,
    openapi_extra=json_body(BenchmarkRequest),
)
def submit_benchmark(
    body: Annotated[Any, Body()], services: ServicesDep, key: Operator
) -> JobPublic:
    """Measure a checkpoint's latency on a named hardware target (its node, its backend)."""
    request = parse_spec(BenchmarkRequest, body)
    return JobPublic.of(services.jobs.submit_benchmark(request, principal=key))


@router.get("/evaluations", response_model=JobsPublic)
def list_evaluations(services: ServicesDep, _: Viewer, page: JobPage) -> JobsPublic:
    """Evaluation jobs, newest first."""
    return jobs_page(services, "evaluate", page)


@router.get("/benchmarks", response_model=JobsPublic)
def list_benchmarks(services: ServicesDep, _: Viewer, page: JobPage) -> JobsPublic:
    """Benchmark jobs, newest first."""
    return jobs_page(services, "benchmark", page)


@router.get("/evaluations/{job_id}", response_model=JobPublic)
def get_evaluation(job_id: str, services: ServicesDep, _: Viewer) -> JobPublic:
    """One evaluation: state and, once done, the 12 COCO stats under `metrics`."""
    return JobPublic.of(services.jobs.reconcile(job_id))


@router.get("/benchmarks/{job_id}", response_model=JobPublic)
def get_benchmark(job_id: str, services: ServicesDep, _: Viewer) -> JobPublic:
    """One benchmark job: state and, once done, latency figures under `metrics`."""
    return JobPublic.of(services.jobs.reconcile(job_id))


@router.get("/evaluations/{job_id}/result")
def evaluation_result(job_id: str, services: ServicesDep, _: Viewer) -> dict[str, Any]:
    """The 12 COCO bbox stats, the per-class table and the eval set's fingerprint."""
    return services.jobs.evaluation_result(job_id)
