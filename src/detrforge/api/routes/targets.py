"""Hardware targets (named benchmark profiles) and the append-only benchmark history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse

from detrforge.api.deps import Approver, ServicesDep, Viewer
from detrforge.api.errors import ERROR_RESPONSES
from detrforge.api.media import CSV_EXPORT
from detrforge.api.params import PageLimit, PageOffset, QueryText, QueryTime
from detrforge.api.schemas import (
    BenchmarkRecordsPublic,
    TargetCreate,
    TargetPublic,
    TargetsPublic,
    TargetUpdate,
)

router = APIRouter(prefix="/api/v1", tags=["benchmarks"], responses=ERROR_RESPONSES)


@router.post("/hardware-targets", response_model=TargetPublic, status_code=201)
def create_target(body: TargetCreate, services: ServicesDep, key: Approver) -> TargetPublic:
    """Define a hardware target: Ray resources + backend + precision + batch size."""
    target = services.targets.create(**body.model_dump(), created_by=key.principal)
    return TargetPublic.model_validate(target, from_attributes=True)


@router.get("/hardware-targets", response_model=TargetsPublic)
def list_targets(services: ServicesDep, _: Viewer) -> TargetsPublic:
    """Every hardware target."""
    items = [TargetPublic.model_validate(t, from_attributes=True) for t in services.targets.list()]
    return TargetsPublic(items=items)


@router.get("/hardware-targets/{name}", response_model=TargetPublic)
def get_target(name: str, services: ServicesDep, _: Viewer) -> TargetPublic:
    """One hardware target."""
    return TargetPublic.model_validate(services.targets.get(name), from_attributes=True)


@router.patch("/hardware-targets/{name}", response_model=TargetPublic)
def update_target(
    name: str, body: TargetUpdate, services: ServicesDep, _: Approver
) -> TargetPublic:
    """Change a target; history rows keep the profile they ran with."""
    # null is "leave as is", like an absent field (an empty description clears it).
    target = services.targets.update(name, **body.model_dump(exclude_unset=True, exclude_none=True))
    return TargetPublic.model_validate(target, from_attributes=True)


@router.delete("/hardware-targets/{name}", status_code=204)
def delete_target(name: str, services: ServicesDep, _: Approver) -> None:
    """Delete a target (its benchmark history stays)."""
    services.targets.delete(name)


@router.get("/benchmark-records", response_model=BenchmarkRecordsPublic, responses=CSV_EXPORT)
def list_benchmark_records(
    services: ServicesDep,
    _: Viewer,
    checkpoint_sha256: QueryText = None,
    model_name: QueryText = None,
    target: QueryText = None,
    backend: QueryText = None,
    since: QueryTime = None,
    until: QueryTime = None,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
    format: Annotated[str, Query(pattern="^(json|csv)$")] = "json",  # noqa: A002
) -> BenchmarkRecordsPublic | PlainTextResponse:
    """The append-only benchmark history, newest first; ``format=csv`` exports it."""
    records, total = services.benchmarks.list(
        checkpoint_sha256=checkpoint_sha256,
        model_name=model_name,
        target=target,
        backend=backend,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    if format == "csv":
        return PlainTextResponse(services.benchmarks.to_csv(records), media_type="text/csv")
    return BenchmarkRecordsPublic.of(records, total=total, limit=limit, offset=offset)


@router.get("/benchmark-records/summary")
def benchmark_summary(
    services: ServicesDep,
    _: Viewer,
    group_by: Annotated[str, Query(pattern="^(checkpoint_sha256|model_name)$")] = (
        "checkpoint_sha256"
    ),
) -> dict[str, Any]:
    """Per checkpoint (or model) x target x backend: count, p95 latest/min/max, versions seen."""
    return {"items": services.benchmarks.summary(group_by=group_by)}
