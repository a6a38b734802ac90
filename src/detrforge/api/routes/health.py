"""Liveness: the only route open without a key (besides the OpenAPI docs)."""

from __future__ import annotations

from fastapi import APIRouter

from detrforge import __version__
from detrforge.api.deps import public

router = APIRouter(tags=["health"])


@router.get("/health")
@public
def health() -> dict[str, str]:
    """Liveness probe."""
    return {"status": "ok", "version": __version__}
