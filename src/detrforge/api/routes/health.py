"""Liveness and readiness: the only routes open without a key (besides the OpenAPI docs)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from pydantic import BaseModel

from detrforge import __version__
from detrforge.api.deps import ServicesDep, public
from detrforge.api.errors import REQUEST_ERROR_RESPONSES

router = APIRouter(tags=["health"], responses=REQUEST_ERROR_RESPONSES)


class ComponentPublic(BaseModel):
    ok: bool
    message: str
    elapsed_ms: float


class ReadinessPublic(BaseModel):
    status: str
    version: str
    components: dict[str, ComponentPublic]


@router.get("/health")
@public
def health() -> dict[str, str]:
    """Liveness probe: the process answers; checks nothing else."""
    return {"status": "ok", "version": __version__}


@router.get(
    "/ready",
    responses={503: {"model": ReadinessPublic, "description": "a dependency is down"}},
)
@public
def ready(services: ServicesDep, response: Response) -> ReadinessPublic:
    """Readiness probe: database, Ray Jobs API, MLflow and artifact store; 503 while any is down."""
    statuses = services.readiness.check()
    ok = all(s.ok for s in statuses)
    if not ok:
        response.status_code = 503
    return ReadinessPublic(
        status="ready" if ok else "not ready",
        version=__version__,
        components={
            s.name: ComponentPublic(ok=s.ok, message=s.message, elapsed_ms=s.elapsed_ms)
            for s in statuses
        },
    )
