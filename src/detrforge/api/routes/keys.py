"""API keys: admins create (shown once), list and revoke them."""

from __future__ import annotations

from fastapi import APIRouter

from detrforge.api.deps import Admin, ServicesDep, Viewer
from detrforge.api.errors import ERROR_RESPONSES
from detrforge.api.schemas import KeyCreate, KeyCreated, KeyPublic, KeysPublic

router = APIRouter(prefix="/api/v1", tags=["keys"], responses=ERROR_RESPONSES)


@router.get("/whoami", response_model=KeyPublic)
def whoami(key: Viewer) -> KeyPublic:
    """The key making this request."""
    return KeyPublic.of(key)


@router.post("/keys", response_model=KeyCreated, status_code=201)
def create_key(body: KeyCreate, services: ServicesDep, _: Admin) -> KeyCreated:
    """Create an API key; the secret is in this response only."""
    key, secret = services.keys.create(name=body.name, role=body.role)
    return KeyCreated(**KeyPublic.of(key).model_dump(), key=secret)


@router.get("/keys", response_model=KeysPublic)
def list_keys(services: ServicesDep, _: Admin) -> KeysPublic:
    """Every key, revoked ones included (never the secrets)."""
    return KeysPublic(items=[KeyPublic.of(k) for k in services.keys.list()])


@router.delete("/keys/{key_id}", response_model=KeyPublic)
def revoke_key(key_id: str, services: ServicesDep, _: Admin) -> KeyPublic:
    """Revoke a key; it stops working at once."""
    return KeyPublic.of(services.keys.revoke(key_id))
