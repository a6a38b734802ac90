"""The variant store: built inference variants of model versions, content-addressed.

Recording the same bytes (sha256) under the same variant name of a version twice returns the
first record: a rebuild that reproduces the artifact adds nothing. A rebuild that differs
(another runtime version, another calibration sample) is a new record; the newest is current.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Mapping
from typing import Any

from sqlalchemy import exc, select
from sqlalchemy.orm import Session, sessionmaker

from detrforge.platform.db import utcnow
from detrforge.platform.errors import InvalidSpecError, NotFoundError
from detrforge.registry.dbmodels import SqlVersionVariant
from detrforge.registry.entities import VersionVariant
from detrforge.registry.rows import model_row, new_id, version_row

__all__ = ["VariantStore"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_VARIANT_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,31}")


class VariantStore:
    """Variants of versions over one SQLAlchemy session factory."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._sessions = session_factory

    def add_variant(
        self,
        model: str,
        version: int,
        *,
        name: str,
        runtime: str,
        precision: str,
        artifact_uri: str,
        model_file: str,
        sha256: str,
        size_bytes: int,
        build_seconds: float,
        recipe: Mapping[str, Any],
        metrics: Mapping[str, Any] | None = None,
        actor: str,
    ) -> VersionVariant:
        """Record a stored variant artifact of ``model`` v``version`` (idempotent per sha256).

        Raises:
            NotFoundError: no such model or version.
            InvalidSpecError: a malformed name or sha256, or a negative size.
        """
        if not _VARIANT_NAME.fullmatch(name):
            raise InvalidSpecError(f"variant name {name!r} is malformed", field="variant")
        if not _SHA256.fullmatch(sha256):
            raise InvalidSpecError(f"{sha256!r} is not a hex sha256", field="sha256")
        if size_bytes < 0 or build_seconds < 0:
            raise InvalidSpecError("size_bytes and build_seconds must be >= 0", field="size_bytes")
        try:
            with self._sessions.begin() as session:
                version_id = version_row(session, model_row(session, model), version).id
                existing = self._find(session, version_id, name, sha256)
                if existing is not None:
                    return existing.to_entity(model, version)
                row = SqlVersionVariant(
                    id=new_id("var"),
                    version_id=version_id,
                    name=name,
                    runtime=runtime,
                    precision=precision,
                    artifact_uri=artifact_uri,
                    model_file=model_file,
                    sha256=sha256,
                    size_bytes=size_bytes,
                    build_seconds=float(build_seconds),
                    recipe=dict(recipe),
                    metrics=dict(metrics or {}),
                    created_by=actor,
                    created_at=utcnow(),
                )
                session.add(row)
                session.flush()
                return row.to_entity(model, version)
        except exc.IntegrityError:
            # A concurrent writer recorded the same bytes first: theirs is the record.
            return self._existing(model, version, name, sha256)

    def _existing(self, model: str, version: int, name: str, sha256: str) -> VersionVariant:
        with self._sessions() as session:
            version_id = version_row(session, model_row(session, model), version).id
            found = self._find(session, version_id, name, sha256)
            if found is None:
                raise NotFoundError(f"variant {name} {sha256} vanished", field="variant")
            return found.to_entity(model, version)

    @staticmethod
    def _find(
        session: Session, version_id: str, name: str, sha256: str
    ) -> SqlVersionVariant | None:
        return session.scalar(
            select(SqlVersionVariant).where(
                SqlVersionVariant.version_id == version_id,
                SqlVersionVariant.name == name,
                SqlVersionVariant.sha256 == sha256,
            )
        )

    def list_variants(self, model: str, version: int) -> builtins.list[VersionVariant]:
        """Every recorded variant of the version, by name, newest first within a name."""
        with self._sessions() as session:
            version_id = version_row(session, model_row(session, model), version).id
            rows = session.scalars(
                select(SqlVersionVariant)
                .where(SqlVersionVariant.version_id == version_id)
                .order_by(SqlVersionVariant.name, SqlVersionVariant.created_at.desc())
            ).all()
            return [row.to_entity(model, version) for row in rows]

    def current_variant(self, model: str, version: int, name: str) -> VersionVariant:
        """The newest record of variant ``name`` of the version.

        Raises:
            NotFoundError: the version has no such variant built.
        """
        for variant in self.list_variants(model, version):
            if variant.name == name:
                return variant
        raise NotFoundError(
            f"model {model!r} v{version} has no {name} variant; build it with "
            f"`detrforge optimize {model} {version}`",
            field="variant",
        )
