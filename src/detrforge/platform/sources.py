"""Where user-given datasets, checkpoints and weights may come from: one small, pure policy.

A caller names files on the server by path or URI; without limits that reads any file the
server can (``/etc/shadow``, the admin key) or any URL it can reach (cloud metadata at
169.254.169.254). :class:`SourcePolicy` admits local paths only under configured data roots
(after resolving symlinks and ``..``), ``file://`` URIs under those roots or the local artifact
root, and ``s3://`` URIs in allowed buckets or under the artifact root. Every refusal reads the
same whether or not the path exists, so the API is no oracle for the server's files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from detrforge.platform.errors import InvalidSpecError

__all__ = ["SourcePolicy"]


@dataclass(frozen=True)
class SourcePolicy:
    """Allowed data roots and S3 buckets; build it with :meth:`build` from settings."""

    roots: tuple[Path, ...]
    s3_buckets: frozenset[str]
    artifact_root: str

    @classmethod
    def build(
        cls, *, roots: Iterable[Path], s3_buckets: Iterable[str], artifact_root: str
    ) -> SourcePolicy:
        """A policy with ``roots`` resolved (symlinks and ``..``), as checks compare them."""
        return cls(
            roots=tuple(Path(os.path.realpath(root)) for root in roots),
            s3_buckets=frozenset(s3_buckets),
            artifact_root=artifact_root.rstrip("/"),
        )

    def check(self, uri: str, *, field: str) -> str:
        """The canonical form of ``uri`` if the policy admits it: the resolved absolute path of a
        local file (plain or ``file://``), or the ``s3://`` URI itself.

        Raises:
            InvalidSpecError: ``uri`` is outside every root and bucket or of another kind; the
                message does not depend on whether anything exists there.
        """
        if not isinstance(uri, str) or not uri:
            raise InvalidSpecError(f"{field}: give a path or URI", field=field)
        if uri.startswith("s3://"):
            return self._check_s3(uri, field)
        parts = urlsplit(uri)
        if parts.scheme == "file":
            if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
                raise self._unsupported(uri, field)
            return self._check_local(unquote(parts.path), uri, field, file_uri=True)
        if uri.startswith("/") and "://" not in uri:
            return self._check_local(uri, uri, field, file_uri=False)
        raise self._unsupported(uri, field)

    def _check_local(self, path: str, uri: str, field: str, *, file_uri: bool) -> str:
        if not path.startswith("/") or "\x00" in path:
            raise self._unsupported(uri, field)
        try:
            resolved = Path(os.path.realpath(path))
        except (OSError, ValueError):
            raise self._outside(uri, field) from None
        allowed = self.roots + self._local_artifact_root()
        if not any(resolved == root or resolved.is_relative_to(root) for root in allowed):
            raise self._outside(uri, field)
        return str(resolved)

    def _local_artifact_root(self) -> tuple[Path, ...]:
        root = self.artifact_root
        if root.startswith("file:"):
            return (Path(os.path.realpath(unquote(urlsplit(root).path))),)
        if root.startswith("/"):
            return (Path(os.path.realpath(root)),)
        return ()

    def _check_s3(self, uri: str, field: str) -> str:
        parts = urlsplit(uri)
        bucket, key = parts.netloc, parts.path.lstrip("/")
        if not bucket or parts.query or parts.fragment:
            raise self._unsupported(uri, field)
        if ".." in key.split("/"):
            raise self._outside(uri, field)
        root = self.artifact_root
        under_root = root.startswith("s3://") and (uri == root or uri.startswith(f"{root}/"))
        if bucket not in self.s3_buckets and not under_root:
            allowed = ", ".join(sorted(self.s3_buckets)) or "none"
            raise InvalidSpecError(
                f"{field}: {uri} is in a bucket this server does not read from (allowed: "
                f"{allowed}); copy the data into an allowed bucket, or ask the administrator to "
                "add the bucket to DETRFORGE_S3_BUCKETS",
                field=field,
            )
        return uri

    def _outside(self, uri: str, field: str) -> InvalidSpecError:
        roots = ", ".join(str(root) for root in self.roots) or "none"
        return InvalidSpecError(
            f"{field}: {uri} is not under a data root this server reads from ({roots}); put the "
            "file there, or ask the administrator to add its folder to DETRFORGE_DATA_ROOTS",
            field=field,
        )

    def _unsupported(self, uri: str, field: str) -> InvalidSpecError:
        return InvalidSpecError(
            f"{field}: {uri!r} is not a source this server reads; give an absolute path under a "
            "data root, a file:// URI, or an s3:// URI in an allowed bucket (nothing is "
            "downloaded from http(s) or other URLs)",
            field=field,
        )
