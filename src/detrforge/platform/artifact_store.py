"""The artifact store interface: objects under one root URI, put, get, list, hash, verify, delete.

Checkpoints, exported models and datasets all move through an :class:`ArtifactStore`. Every object
written gets a sha256 so a later reader can :meth:`~ArtifactStore.verify` it has the same bytes.
The implementations are :mod:`~detrforge.platform.local_store` (``file://``) and
:mod:`~detrforge.platform.s3_store` (``s3://``); :func:`detrforge.platform.storage.open_store`
picks one for a root.
"""

from __future__ import annotations

import abc
import builtins
from dataclasses import dataclass
from pathlib import Path

from detrforge.platform.blobs import blob_key
from detrforge.platform.errors import IntegrityError, NotFoundError, StorageError

__all__ = ["ArtifactStore", "StoredObject", "clean_key", "file_key", "join_key"]


@dataclass(frozen=True)
class StoredObject:
    """An object written to a store: where it is, its sha256 and its size in bytes."""

    uri: str
    sha256: str
    size: int


def clean_key(key: str) -> str:
    """A key relative to a root, with empty and '.' segments dropped; '..' or '/x' is refused."""
    if key.startswith("/") or "\\" in key:
        raise StorageError(f"key {key!r} must be a relative path with '/' separators")
    parts = [part for part in key.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise StorageError(f"key {key!r} escapes the artifact root; '..' is not allowed in keys")
    return "/".join(parts)


def file_key(key: str) -> str:
    """``key`` cleaned, refusing one that names the root itself rather than a file under it."""
    cleaned = clean_key(key)
    if not cleaned:
        raise StorageError(f"key {key!r} must name a file under the artifact root")
    return cleaned


def join_key(prefix: str, key: str) -> str:
    """``prefix/key``, either of which may be empty."""
    return f"{prefix}/{key}" if prefix and key else prefix or key


class ArtifactStore(abc.ABC):
    """Objects under one root URI, addressed by keys relative to it or by full URIs."""

    root: str

    @abc.abstractmethod
    def uri_for(self, key: str) -> str:
        """The URI of ``key`` under the root; refuses keys that escape it."""

    @abc.abstractmethod
    def put_file(self, local: Path, key: str) -> StoredObject:
        """Upload one local file to ``key`` under the root."""

    def put_dir(self, local_dir: Path, prefix: str) -> builtins.list[StoredObject]:
        """Upload every file under ``local_dir`` to ``prefix``, keeping relative paths."""
        if not local_dir.is_dir():
            raise NotFoundError(f"no local folder at {local_dir}")
        prefix = clean_key(prefix)
        files = sorted(
            (path.relative_to(local_dir).as_posix(), path)
            for path in local_dir.rglob("*")
            if path.is_file()
        )
        return [self.put_file(path, join_key(prefix, rel)) for rel, path in files]

    def put_blob(self, local: Path, sha256: str) -> StoredObject:
        """Store ``local`` content-addressed at ``blobs/sha256/<sha256>``; write once.

        An object already there with those bytes is kept as it is; one whose bytes no longer
        hash to its name is rewritten (only the bytes the name promises can be written there).

        Raises:
            IntegrityError: ``local`` does not hash to ``sha256``.
        """
        key = blob_key(sha256)
        uri = self.uri_for(key)
        if self.exists(uri):
            try:
                if self.sha256(uri) == sha256:
                    return StoredObject(uri=uri, sha256=sha256, size=self.size(uri))
            except NotFoundError:
                pass
        stored = self.put_file(local, key)
        if stored.sha256 != sha256:
            self.delete_prefix(uri)
            raise IntegrityError(f"{local} changed while it was stored; nothing was kept")
        return stored

    @abc.abstractmethod
    def size(self, uri: str) -> int:
        """The object's size in bytes, without reading it."""

    @abc.abstractmethod
    def get_file(self, uri: str, dest: Path) -> Path:
        """Download one object to the file ``dest``, creating its parents."""

    @abc.abstractmethod
    def get_dir(self, uri_prefix: str, dest_dir: Path) -> Path:
        """Download every object under ``uri_prefix`` into ``dest_dir``, keeping relative paths."""

    @abc.abstractmethod
    def exists(self, uri: str) -> bool:
        """Whether an object, or any object under it as a folder, exists at ``uri``."""

    @abc.abstractmethod
    def list(self, uri_prefix: str) -> builtins.list[str]:
        """Sorted URIs of the object at ``uri_prefix`` and of every object under it as a folder."""

    @abc.abstractmethod
    def sha256(self, uri: str) -> str:
        """Hex sha256 of the stored bytes, streamed."""

    def verify(self, uri: str, expected_sha256: str) -> None:
        """Raise :class:`IntegrityError` unless the object's bytes hash to ``expected_sha256``."""
        actual = self.sha256(uri)
        if actual != expected_sha256:
            raise IntegrityError(
                f"checkpoint changed or corrupt: {uri} has sha256 {actual},"
                f" expected {expected_sha256}"
            )

    @abc.abstractmethod
    def delete_prefix(self, uri_prefix: str) -> int:
        """Delete the object at ``uri_prefix`` and everything under it; return how many."""
