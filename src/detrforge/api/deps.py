"""Dependencies of the routes: the services container and the role check on every route."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request

from detrforge.api.readiness import Readiness
from detrforge.control.jobs import JobService
from detrforge.control.mirror import MlflowMirror
from detrforge.control.promotion import PromotionService
from detrforge.control.sweeps import SweepService
from detrforge.control.variants import VariantService
from detrforge.control.versions import VersionService
from detrforge.platform.errors import PermissionDeniedError, UnauthenticatedError
from detrforge.platform.settings import Settings
from detrforge.registry.audit import AuditLog
from detrforge.registry.benchmarks import BenchmarkStore
from detrforge.registry.entities import ApiKey, Role
from detrforge.registry.keys import KeyStore
from detrforge.registry.targets import TargetStore

__all__ = [
    "Admin",
    "Approver",
    "Operator",
    "RequestId",
    "Services",
    "ServicesDep",
    "Viewer",
    "requires",
]


@dataclass
class Services:
    """Everything the routes need, built once at start-up."""

    settings: Settings
    keys: KeyStore
    jobs: JobService
    targets: TargetStore
    benchmarks: BenchmarkStore
    versions: VersionService
    promotions: PromotionService
    mirror: MlflowMirror
    audit: AuditLog
    readiness: Readiness
    sweeps: SweepService
    variants: VariantService


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_request_id(request: Request) -> str:
    """The request's id (``X-Request-ID`` if the client sent one): audit rows carry it."""
    return str(request.state.request_id)


RequestId = Annotated[str, Depends(get_request_id)]


def requires(role: Role) -> Callable[..., ApiKey]:
    """A dependency that admits a request only with a valid key of at least ``role``."""

    def check_key(
        services: ServicesDep,
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> ApiKey:
        token = x_api_key
        if authorization:
            scheme, _, value = authorization.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        if not token:
            raise UnauthenticatedError(
                "missing API key: send 'Authorization: Bearer <key>' (create keys with "
                "`detrforge keys create --role ...`)"
            )
        key = services.keys.authenticate(token)
        if key is None:
            raise UnauthenticatedError("invalid or revoked API key")
        if not key.role.allows(role):
            raise PermissionDeniedError(
                f"this action needs the {role.value} role or higher; key {key.name!r} has "
                f"{key.role.value}"
            )
        return key

    # The route walker test reads this to prove every route made an authorization decision.
    check_key.__detrforge_role__ = role  # type: ignore[attr-defined]
    return check_key


def public(func: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a route as deliberately open (health only)."""
    func.__detrforge_public__ = True  # type: ignore[attr-defined]
    return func


Viewer = Annotated[ApiKey, Depends(requires(Role.viewer))]
Operator = Annotated[ApiKey, Depends(requires(Role.operator))]
Approver = Annotated[ApiKey, Depends(requires(Role.approver))]
Admin = Annotated[ApiKey, Depends(requires(Role.admin))]
