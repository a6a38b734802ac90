"""The model registry: models, versions, gate policies, gated promotions, rollback, audit."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query
from fastapi.responses import PlainTextResponse

from detrforge.api.bodies import json_body
from detrforge.api.deps import Approver, Operator, RequestId, Services, ServicesDep, Viewer
from detrforge.api.errors import ERROR_RESPONSES
from detrforge.api.media import CSV_EXPORT
from detrforge.api.params import PageLimit, PageOffset, QueryText, QueryTime, VersionNumber
from detrforge.api.registry_schemas import (
    AliasPublic,
    AuditEventPublic,
    AuditEventsPublic,
    ModelCreate,
    ModelPublic,
    ModelsPublic,
    PromotionCreate,
    PromotionPublic,
    PromotionsPublic,
    RollbackCreate,
    TrialRegister,
    VariantPublic,
    VariantsPublic,
    VersionCreate,
    VersionPublic,
    VersionsPublic,
    parse_policy,
)
from detrforge.api.schemas import JobPublic
from detrforge.detector.optimize_specs import OptimizeRequest
from detrforge.detector.specs import parse_spec
from detrforge.platform.limits import Name
from detrforge.registry.entities import RegisteredModel, Stage
from detrforge.registry.gates import GatePolicy

router = APIRouter(prefix="/api/v1", tags=["registry"], responses=ERROR_RESPONSES)


def _model(services: Services, model: RegisteredModel) -> ModelPublic:
    public = ModelPublic.model_validate(model)
    store = services.versions.store
    production = store.version_in_stage(model.name, Stage.production)
    staging = store.version_in_stage(model.name, Stage.staging)
    public.production_version = production.version if production else None
    public.staging_version = staging.version if staging else None
    return public


@router.post("/models", response_model=ModelPublic, status_code=201)
def create_model(
    body: ModelCreate, services: ServicesDep, key: Operator, request_id: RequestId
) -> ModelPublic:
    """Create a registered model (mirrored as an MLflow registered model)."""
    model = services.versions.create_model(
        body.name, description=body.description, principal=key, request_id=request_id
    )
    return _model(services, model)


@router.get("/models", response_model=ModelsPublic)
def list_models(
    services: ServicesDep,
    _: Viewer,
    limit: PageLimit = 100,
    offset: PageOffset = 0,
) -> ModelsPublic:
    """Registered models by name."""
    models, total = services.versions.store.list_models(limit=limit, offset=offset)
    items = [_model(services, m) for m in models]
    return ModelsPublic(items=items, total=total, limit=limit, offset=offset)


@router.get("/models/{name}", response_model=ModelPublic)
def get_model(name: str, services: ServicesDep, _: Viewer) -> ModelPublic:
    """One model: its gate policy and which versions hold staging and production."""
    return _model(services, services.versions.store.get_model(name))


@router.put(
    "/models/{name}/policy",
    response_model=ModelPublic,
    openapi_extra=json_body(GatePolicy),
)
def set_policy(
    name: str,
    body: Annotated[Any, Body()],
    services: ServicesDep,
    key: Approver,
    request_id: RequestId,
) -> ModelPublic:
    """Set the gate policy: eval set, AP floor, max AP drop, per-target p95 ratio and SLA."""
    policy, reason = parse_policy(body)
    model = services.versions.set_policy(
        name, policy, reason=reason, principal=key, request_id=request_id
    )
    return _model(services, model)


@router.get("/models/{name}/policy")
def get_policy(name: str, services: ServicesDep, _: Viewer) -> dict[str, Any]:
    """The gate policy (``{}`` when none is set: promotions then pass without checks)."""
    return services.versions.store.get_model(name).policy or {}


@router.post("/models/{name}/versions", response_model=VersionPublic, status_code=201)
def register_version(
    name: str,
    body: VersionCreate,
    services: ServicesDep,
    key: Operator,
    request_id: RequestId,
) -> VersionPublic:
    """Register a version from ``job_id`` (a SUCCEEDED fine-tune) or ``checkpoint`` + size +
    resolution; the stored bytes' sha256 is verified."""
    version = services.versions.register_version(
        name, body.to_request(), principal=key, request_id=request_id
    )
    return VersionPublic.model_validate(version)


@router.post(
    "/sweeps/{job_id}/trials/{trial_id}/register",
    response_model=VersionPublic,
    status_code=201,
    tags=["sweeps"],
)
def register_trial(
    job_id: str,
    trial_id: str,
    body: TrialRegister,
    services: ServicesDep,
    key: Operator,
    request_id: RequestId,
) -> VersionPublic:
    """Register one sweep trial as a version of ``model``, with lineage to the sweep, the trial
    and its MLflow run (the weights' sha256 is verified)."""
    source = replace(services.sweeps.trial_source(job_id, trial_id), description=body.description)
    version = services.versions.register_source(
        body.model, source, principal=key, request_id=request_id
    )
    return VersionPublic.model_validate(version)


@router.get("/models/{name}/versions", response_model=VersionsPublic)
def list_versions(
    name: str,
    services: ServicesDep,
    _: Viewer,
    stage: Annotated[Stage | None, Query()] = None,
) -> VersionsPublic:
    """The model's versions, newest first."""
    versions = services.versions.store.list_versions(name, stage=stage)
    return VersionsPublic(items=[VersionPublic.model_validate(v) for v in versions])


@router.get("/models/{name}/versions/{version}", response_model=VersionPublic)
def get_version(
    name: str, version: VersionNumber, services: ServicesDep, _: Viewer
) -> VersionPublic:
    """One version with its lineage and stage."""
    return VersionPublic.model_validate(services.versions.store.get_version(name, version))


@router.get("/models/{name}/versions/{version}/variants", response_model=VariantsPublic)
def list_variants(
    name: str, version: VersionNumber, services: ServicesDep, _: Viewer
) -> VariantsPublic:
    """The version's built inference variants: artifact URI, sha256, recipe and measurements."""
    variants = services.variants.list_variants(name, version)
    return VariantsPublic(items=[VariantPublic.model_validate(v) for v in variants])


@router.post(
    "/models/{name}/versions/{version}/optimize",
    response_model=JobPublic,
    status_code=201,
    openapi_extra=json_body(OptimizeRequest),
)
def optimize_version(
    name: str,
    version: VersionNumber,
    body: Annotated[Any, Body()],
    services: ServicesDep,
    key: Operator,
) -> JobPublic:
    """Build the version's inference variants on a hardware target, time each against eager
    (paired, in one process) and score each on the eval set; each artifact is stored by its
    sha256 and recorded on the version when the job succeeds (GET .../variants)."""
    request = parse_spec(OptimizeRequest, body)
    return JobPublic.of(services.variants.optimize(name, version, request, principal=key))


@router.get("/models/{name}/aliases/{alias}", response_model=AliasPublic)
def get_alias(
    name: str,
    alias: Literal["staging", "production"],
    services: ServicesDep,
    _: Viewer,
    target: Annotated[
        Name | None,
        Query(
            description="A hardware target of the model's gate policy: answer with the "
            "variant the policy ships there (its artifact URI and sha256)."
        ),
    ] = None,
) -> AliasPublic:
    """The version holding ``production`` (or ``staging``) and the artifact to deploy: what a
    serving fleet asks for (``?target=`` for what ships on that hardware)."""
    from detrforge.platform.errors import NotFoundError

    model = services.versions.store.get_model(name)
    version = services.versions.store.version_in_stage(name, Stage(alias))
    if version is None:
        raise NotFoundError(f"model {name!r} has no {alias} version", field="alias")
    policy = GatePolicy.model_validate(model.policy) if model.policy else None
    shipped = services.variants.shipped(version, policy, target) if target else None
    return AliasPublic.model_validate(
        {
            **VersionPublic.model_validate(version).model_dump(),
            "target": target,
            "variant": shipped.name if shipped else None,
            "artifact_uri": shipped.artifact_uri if shipped else version.checkpoint_uri,
            "artifact_sha256": shipped.sha256 if shipped else version.checkpoint_sha256,
            "model_file": shipped.model_file if shipped else None,
        }
    )


@router.post(
    "/models/{name}/versions/{version}/promotions",
    response_model=PromotionPublic,
    status_code=202,
)
def request_promotion(
    name: str,
    version: VersionNumber,
    body: PromotionCreate,
    services: ServicesDep,
    key: Operator,
    request_id: RequestId,
) -> PromotionPublic:
    """Ask to promote a version: 202 with the promotion id at once; the gates run in the
    background (staging needs operator, production needs approver)."""
    promotion = services.promotions.request(
        name, version, to=Stage(body.to), reason=body.reason, principal=key, request_id=request_id
    )
    return PromotionPublic.model_validate(promotion)


@router.get("/models/{name}/promotions", response_model=PromotionsPublic)
def list_promotions(name: str, services: ServicesDep, _: Viewer) -> PromotionsPublic:
    """The model's promotions, newest first, with their gate results."""
    promotions = services.promotions.store.list(name)
    return PromotionsPublic(items=[PromotionPublic.model_validate(p) for p in promotions])


@router.get("/promotions/{promotion_id}", response_model=PromotionPublic)
def get_promotion(promotion_id: str, services: ServicesDep, _: Viewer) -> PromotionPublic:
    """One promotion: state, evidence jobs and every gate check with its figures."""
    return PromotionPublic.model_validate(services.promotions.get(promotion_id))


@router.post("/models/{name}/rollback", response_model=VersionPublic)
def rollback(
    name: str,
    body: RollbackCreate,
    services: ServicesDep,
    key: Approver,
    request_id: RequestId,
) -> VersionPublic:
    """Re-point production to the previous production version, without gates; audited."""
    version = services.versions.rollback(
        name, reason=body.reason, principal=key, request_id=request_id
    )
    return VersionPublic.model_validate(version)


@router.get("/audit", response_model=AuditEventsPublic, responses=CSV_EXPORT)
def audit(
    services: ServicesDep,
    _: Viewer,
    model: QueryText = None,
    action: Annotated[QueryText, Query(description="Exact, or a prefix ending in '.'")] = None,
    actor: QueryText = None,
    request_id: QueryText = None,
    since: QueryTime = None,
    until: QueryTime = None,
    limit: PageLimit = 100,
    offset: PageOffset = 0,
    format: Literal["json", "csv"] = "json",  # noqa: A002
) -> AuditEventsPublic | PlainTextResponse:
    """The audit log, oldest first: who, when, action, model, version, before, after, reason,
    request id. ``format=csv`` exports the page as CSV."""
    events, total = services.audit.list(
        model_name=model,
        action=action,
        actor=actor,
        request_id=request_id,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
    )
    if format == "csv":
        return PlainTextResponse(services.audit.to_csv(events), media_type="text/csv")
    items = [AuditEventPublic.model_validate(e) for e in events]
    return AuditEventsPublic(items=items, total=total, limit=limit, offset=offset)
