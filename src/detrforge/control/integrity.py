"""The integrity gate: a version's stored bytes, re-hashed against the sha256 registered.

A promotion runs it first, and once more just before the stage changes, so what is promoted is
exactly what was registered, however long the evidence took.
"""

from __future__ import annotations

from pathlib import Path

from detrforge.platform.blobs import sha256_file
from detrforge.platform.errors import DetrforgeError
from detrforge.platform.storage import open_store
from detrforge.registry.entities import GateResult, ModelVersion

__all__ = ["integrity_gate"]


def integrity_gate(version: ModelVersion) -> GateResult:
    """Re-hash the version's stored bytes against the sha256 recorded at registration."""
    uri = version.checkpoint_uri
    actual: str | None
    try:
        if "://" in uri:
            actual = open_store(uri.rsplit("/", 1)[0]).sha256(uri)
        else:
            actual = sha256_file(Path(uri))
        passed = actual == version.checkpoint_sha256
        detail = (
            "checkpoint sha256 matches the registered one"
            if passed
            else f"checkpoint changed or corrupt: {uri} has sha256 {actual}, registered "
            f"{version.checkpoint_sha256}"
        )
    except (DetrforgeError, OSError) as exc:
        actual, passed = None, False
        text = exc.message if isinstance(exc, DetrforgeError) else str(exc)
        detail = f"checkpoint changed or corrupt: {uri} cannot be read ({text})"
    return GateResult(
        gate="integrity",
        metric="checkpoint_sha256",
        candidate=None,
        baseline=None,
        threshold=None,
        passed=passed,
        detail=detail,
        evidence={"uri": uri, "sha256": actual, "registered": version.checkpoint_sha256},
    )
