"""The artifact store in a local (or mounted shared) folder, rooted at ``file:///abs/path``."""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

from detrforge.platform.artifact_store import ArtifactStore, StoredObject, clean_key, file_key
from detrforge.platform.blobs import CHUNK_SIZE, sha256_file
from detrforge.platform.errors import NotFoundError, StorageError

__all__ = ["LocalArtifactStore", "local_path"]

# Marks half-written local files so listings never report them.
_PART_SUFFIX = ".detrforge-part"


def local_path(uri: str) -> Path:
    """The absolute path named by ``file://`` URI or a plain absolute path."""
    if uri.startswith("file:"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"{uri!r} names a remote host; file:// URIs must be local")
        path = unquote(parts.path)
    else:
        path = uri
    if "://" in path or not os.path.isabs(path):
        raise StorageError(f"{uri!r} is not a file:// URI or an absolute path")
    return Path(os.path.normpath(path))


def _copy_hashing(src: Path, dest: Path) -> tuple[str, int]:
    """Copy ``src`` to ``dest`` atomically, returning the sha256 and size of the bytes copied."""
    digest = hashlib.sha256()
    size = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}{_PART_SUFFIX}")
    try:
        with open(src, "rb") as reader, open(tmp, "wb") as writer:
            while chunk := reader.read(CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
                writer.write(chunk)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return digest.hexdigest(), size


@contextlib.contextmanager
def _local_errors(uri: str, action: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise NotFoundError(f"no object at {uri}") from None
    except OSError as exc:
        raise StorageError(f"could not {action} {uri}: {exc.strerror or exc}") from exc


class LocalArtifactStore(ArtifactStore):
    """A store in a local (or mounted shared) folder, rooted at ``file:///abs/path``."""

    def __init__(self, root: str) -> None:
        self._root_path = local_path(root)
        self.root = self._root_path.as_uri()

    def __repr__(self) -> str:
        return f"LocalArtifactStore({self.root!r})"

    def uri_for(self, key: str) -> str:
        return self._path_for_key(key).as_uri()

    def _path_for_key(self, key: str) -> Path:
        cleaned = clean_key(key)
        return self._root_path / cleaned if cleaned else self._root_path

    def put_file(self, local: Path, key: str) -> StoredObject:
        dest = self._root_path / file_key(key)
        if not local.is_file():
            raise NotFoundError(f"no local file at {local}")
        with _local_errors(dest.as_uri(), "write"):
            digest, size = _copy_hashing(local, dest)
        return StoredObject(uri=dest.as_uri(), sha256=digest, size=size)

    def size(self, uri: str) -> int:
        path = local_path(uri)
        if not path.is_file():
            raise NotFoundError(f"no object at {uri}")
        with _local_errors(uri, "read"):
            return path.stat().st_size

    def get_file(self, uri: str, dest: Path) -> Path:
        src = local_path(uri)
        if src.is_dir():
            raise StorageError(f"{uri} is a folder; use get_dir to download a folder")
        if not src.is_file():
            raise NotFoundError(f"no object at {uri}")
        with _local_errors(uri, "read"):
            _copy_hashing(src, dest)
        return dest

    def get_dir(self, uri_prefix: str, dest_dir: Path) -> Path:
        src = local_path(uri_prefix)
        files = self._files_under(src) if src.is_dir() else []
        if not files:
            raise NotFoundError(f"no objects under {uri_prefix}")
        with _local_errors(uri_prefix, "read"):
            for path in files:
                _copy_hashing(path, dest_dir / path.relative_to(src))
        return dest_dir

    def exists(self, uri: str) -> bool:
        return local_path(uri).exists()

    def list(self, uri_prefix: str) -> builtins.list[str]:
        path = local_path(uri_prefix)
        if path.is_file():
            return [path.as_uri()]
        return sorted(file.as_uri() for file in self._files_under(path))

    def sha256(self, uri: str) -> str:
        path = local_path(uri)
        if not path.is_file():
            raise NotFoundError(f"no object at {uri}")
        return sha256_file(path)

    def delete_prefix(self, uri_prefix: str) -> int:
        path = local_path(uri_prefix)
        if not path.is_relative_to(self._root_path):
            raise StorageError(f"refusing to delete {uri_prefix}: it is outside {self.root}")
        with _local_errors(uri_prefix, "delete"):
            if path.is_file() or path.is_symlink():
                path.unlink()
                return 1
            if not path.is_dir():
                return 0
            count = len(self._files_under(path))
            shutil.rmtree(path)
        return count

    @staticmethod
    def _files_under(folder: Path) -> builtins.list[Path]:
        if not folder.is_dir():
            return []
        return sorted(
            path
            for path in folder.rglob("*")
            if path.is_file() and not path.name.endswith(_PART_SUFFIX)
        )
