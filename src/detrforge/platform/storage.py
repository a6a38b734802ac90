"""Choosing the artifact store for a root URI, and a local path for any stored URI.

``file:///abs/path`` and plain absolute paths open a ``LocalArtifactStore``
(:mod:`~detrforge.platform.local_store`); ``s3://bucket/prefix`` an ``S3ArtifactStore``
(:mod:`~detrforge.platform.s3_store`). The interface is :mod:`~detrforge.platform.artifact_store`.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from detrforge.platform.artifact_store import ArtifactStore
from detrforge.platform.errors import NotFoundError, StorageError
from detrforge.platform.local_store import LocalArtifactStore, local_path
from detrforge.platform.s3_store import S3ArtifactStore, fetch_cached

__all__ = ["fetch_local", "open_store"]

_ACCEPTED_ROOTS = "file:///absolute/path, a plain absolute path, or s3://bucket/prefix"


def open_store(root: str, *, endpoint_url: str | None = None) -> ArtifactStore:
    """The store for an artifact root: ``file:///abs/path``, ``/abs/path`` or ``s3://bucket/p``."""
    try:
        if root.startswith("s3://"):
            return S3ArtifactStore(root, endpoint_url=endpoint_url)
        if root.startswith("file:") or (not urlsplit(root).scheme and os.path.isabs(root)):
            return LocalArtifactStore(root)
    except StorageError as exc:
        raise StorageError(
            f"artifact_root {root!r} is invalid ({exc.message}); use {_ACCEPTED_ROOTS}",
            field="artifact_root",
        ) from exc
    raise StorageError(
        f"artifact_root {root!r} is not supported; use {_ACCEPTED_ROOTS}", field="artifact_root"
    )


def fetch_local(uri: str, cache_dir: Path, *, endpoint_url: str | None = None) -> Path:
    """A local path holding ``uri``: itself when local, else a download cached in ``cache_dir``.

    An ``s3://`` URI naming an object gives a file; one naming a "folder" (a prefix) gives a folder
    with every object under it. Downloads land in a subfolder of ``cache_dir`` derived from the URI
    and are skipped when the cached copy has the same ETag as the object.

    Raises:
        NotFoundError: nothing exists at ``uri``.
        StorageError: the URI's scheme is not supported or the store cannot be reached.
    """
    if uri.startswith("s3://"):
        return fetch_cached(S3ArtifactStore(uri, endpoint_url=endpoint_url), uri, cache_dir)
    if uri.startswith("file:") or (not urlsplit(uri).scheme and os.path.isabs(uri)):
        path = local_path(uri)
        if not path.exists():
            raise NotFoundError(f"nothing at {uri}")
        return path
    raise StorageError(f"cannot fetch {uri!r}; use {_ACCEPTED_ROOTS}")
