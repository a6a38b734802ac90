"""One artifact store over ``file://`` and ``s3://``: put, get, list, hash, verify, delete.

Checkpoints, exported models and datasets all move through an :class:`ArtifactStore`. Every object
written gets a sha256 so a later reader can :meth:`~ArtifactStore.verify` it has the same bytes.
S3 talks to AWS or any S3-compatible endpoint (MinIO, moto), chosen by ``endpoint_url`` or by
boto3's own ``AWS_ENDPOINT_URL`` handling.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
from boto3.exceptions import Boto3Error, S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from detrforge.platform.errors import DetrforgeError, IntegrityError, NotFoundError, StorageError

__all__ = [
    "BLOB_PREFIX",
    "CHUNK_SIZE",
    "ArtifactStore",
    "LocalArtifactStore",
    "S3ArtifactStore",
    "StoredObject",
    "blob_sha256",
    "fetch_local",
    "open_store",
    "sha256_file",
]

CHUNK_SIZE = 1024 * 1024
# Content-addressed objects (registered checkpoints) live at <root>/blobs/sha256/<hex>.
BLOB_PREFIX = "blobs/sha256"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_ACCEPTED_ROOTS = "file:///absolute/path, a plain absolute path, or s3://bucket/prefix"
# Marks half-written local files so listings never report them.
_PART_SUFFIX = ".detrforge-part"
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
    }
)
_DOWNLOAD_THREADS = 16


@dataclass(frozen=True)
class StoredObject:
    """An object written to a store: where it is, its sha256 and its size in bytes."""

    uri: str
    sha256: str
    size: int


def sha256_file(path: Path) -> str:
    """Hex sha256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                digest.update(chunk)
    except FileNotFoundError:
        raise NotFoundError(f"no local file at {path}") from None
    except OSError as exc:
        raise StorageError(f"could not read {path}: {exc}") from exc
    return digest.hexdigest()


def blob_sha256(uri: str) -> str | None:
    """The sha256 a content-addressed blob URI (``.../blobs/sha256/<hex>``) names, else None."""
    head, _, name = uri.rpartition("/")
    if head.endswith(f"/{BLOB_PREFIX}") and _SHA256_HEX.fullmatch(name):
        return name
    return None


def _clean_key(key: str) -> str:
    """A key relative to a root, with empty and '.' segments dropped; '..' or '/x' is refused."""
    if key.startswith("/") or "\\" in key:
        raise StorageError(f"key {key!r} must be a relative path with '/' separators")
    parts = [part for part in key.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise StorageError(f"key {key!r} escapes the artifact root; '..' is not allowed in keys")
    return "/".join(parts)


def _file_key(key: str) -> str:
    cleaned = _clean_key(key)
    if not cleaned:
        raise StorageError(f"key {key!r} must name a file under the artifact root")
    return cleaned


def _join(prefix: str, key: str) -> str:
    return f"{prefix}/{key}" if prefix and key else prefix or key


def _local_path(uri: str) -> Path:
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


def _split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` as ``("bucket", "some/key")``."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise StorageError(f"{uri!r} is not an s3://bucket/key URI")
    return parts.netloc, parts.path.lstrip("/")


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
        prefix = _clean_key(prefix)
        files = sorted(
            (path.relative_to(local_dir).as_posix(), path)
            for path in local_dir.rglob("*")
            if path.is_file()
        )
        return [self.put_file(path, _join(prefix, rel)) for rel, path in files]

    def put_blob(self, local: Path, sha256: str) -> StoredObject:
        """Store ``local`` content-addressed at ``blobs/sha256/<sha256>``; write once.

        An object already there with those bytes is kept as it is; one whose bytes no longer
        hash to its name is rewritten (only the bytes the name promises can be written there).

        Raises:
            IntegrityError: ``local`` does not hash to ``sha256``.
        """
        if not _SHA256_HEX.fullmatch(sha256):
            raise StorageError(f"{sha256!r} is not a hex sha256")
        key = f"{BLOB_PREFIX}/{sha256}"
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


class LocalArtifactStore(ArtifactStore):
    """A store in a local (or mounted shared) folder, rooted at ``file:///abs/path``."""

    def __init__(self, root: str) -> None:
        self._root_path = _local_path(root)
        self.root = self._root_path.as_uri()

    def __repr__(self) -> str:
        return f"LocalArtifactStore({self.root!r})"

    def uri_for(self, key: str) -> str:
        return self._path_for_key(key).as_uri()

    def _path_for_key(self, key: str) -> Path:
        cleaned = _clean_key(key)
        return self._root_path / cleaned if cleaned else self._root_path

    def put_file(self, local: Path, key: str) -> StoredObject:
        dest = self._root_path / _file_key(key)
        if not local.is_file():
            raise NotFoundError(f"no local file at {local}")
        with _local_errors(dest.as_uri(), "write"):
            digest, size = _copy_hashing(local, dest)
        return StoredObject(uri=dest.as_uri(), sha256=digest, size=size)

    def size(self, uri: str) -> int:
        path = _local_path(uri)
        if not path.is_file():
            raise NotFoundError(f"no object at {uri}")
        with _local_errors(uri, "read"):
            return path.stat().st_size

    def get_file(self, uri: str, dest: Path) -> Path:
        src = _local_path(uri)
        if src.is_dir():
            raise StorageError(f"{uri} is a folder; use get_dir to download a folder")
        if not src.is_file():
            raise NotFoundError(f"no object at {uri}")
        with _local_errors(uri, "read"):
            _copy_hashing(src, dest)
        return dest

    def get_dir(self, uri_prefix: str, dest_dir: Path) -> Path:
        src = _local_path(uri_prefix)
        files = self._files_under(src) if src.is_dir() else []
        if not files:
            raise NotFoundError(f"no objects under {uri_prefix}")
        with _local_errors(uri_prefix, "read"):
            for path in files:
                _copy_hashing(path, dest_dir / path.relative_to(src))
        return dest_dir

    def exists(self, uri: str) -> bool:
        return _local_path(uri).exists()

    def list(self, uri_prefix: str) -> builtins.list[str]:
        path = _local_path(uri_prefix)
        if path.is_file():
            return [path.as_uri()]
        return sorted(file.as_uri() for file in self._files_under(path))

    def sha256(self, uri: str) -> str:
        path = _local_path(uri)
        if not path.is_file():
            raise NotFoundError(f"no object at {uri}")
        return sha256_file(path)

    def delete_prefix(self, uri_prefix: str) -> int:
        path = _local_path(uri_prefix)
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


def _make_s3_client(endpoint_url: str | None) -> Any:
    """A boto3 S3 client; path-style addressing for any endpoint that is not AWS itself."""
    config = Config(
        connect_timeout=10, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}
    )
    try:
        session = boto3.session.Session()
        client = session.client("s3", endpoint_url=endpoint_url, config=config)
        host = urlsplit(client.meta.endpoint_url).hostname or ""
        if not host.endswith((".amazonaws.com", ".amazonaws.com.cn")):
            # MinIO, moto and Ceph endpoints rarely resolve bucket.host names.
            path_style = config.merge(Config(s3={"addressing_style": "path"}))
            client = session.client("s3", endpoint_url=endpoint_url, config=path_style)
    except (BotoCoreError, ValueError) as exc:
        raise StorageError(f"could not configure an S3 client: {exc}") from exc
    return client


def _rebuild_s3_store(root: str, endpoint_url: str | None) -> S3ArtifactStore:
    return S3ArtifactStore(root, endpoint_url=endpoint_url)


class S3ArtifactStore(ArtifactStore):
    """A store in an S3 (or S3-compatible) bucket, rooted at ``s3://bucket/prefix``."""

    def __init__(self, root: str, *, endpoint_url: str | None = None, client: Any = None) -> None:
        bucket, prefix = _split_s3(root)
        self._bucket = bucket
        self._prefix = prefix.strip("/")
        self.root = f"s3://{bucket}/{self._prefix}" if self._prefix else f"s3://{bucket}"
        self._endpoint_arg = endpoint_url
        self._client = client if client is not None else _make_s3_client(endpoint_url)
        self.endpoint_url: str = str(self._client.meta.endpoint_url)

    def __repr__(self) -> str:
        return f"S3ArtifactStore({self.root!r}, endpoint_url={self.endpoint_url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # boto3 clients do not pickle; a Ray worker builds its own from its environment.
        return (_rebuild_s3_store, (self.root, self._endpoint_arg))

    def uri_for(self, key: str) -> str:
        cleaned = _clean_key(key)
        return f"{self.root}/{cleaned}" if cleaned else self.root

    def put_file(self, local: Path, key: str) -> StoredObject:
        full_key = _join(self._prefix, _file_key(key))
        uri = f"s3://{self._bucket}/{full_key}"
        if not local.is_file():
            raise NotFoundError(f"no local file at {local}")
        digest = sha256_file(local)
        size = local.stat().st_size
        with self._errors(uri, "upload"):
            self._client.upload_file(
                str(local), self._bucket, full_key, ExtraArgs={"Metadata": {"sha256": digest}}
            )
        return StoredObject(uri=uri, sha256=digest, size=size)

    def size(self, uri: str) -> int:
        bucket, key = _split_s3(uri)
        head = self._head(bucket, key, uri) if key else None
        if head is None:
            raise NotFoundError(f"no object at {uri}")
        return int(head["ContentLength"])

    def get_file(self, uri: str, dest: Path) -> Path:
        bucket, key = _split_s3(uri)
        if not key or key.endswith("/"):
            raise StorageError(f"{uri} names a folder; use get_dir to download a folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(uri, "download"):
            self._client.download_file(bucket, key, str(dest))
        return dest

    def get_dir(self, uri_prefix: str, dest_dir: Path) -> Path:
        bucket, key = _split_s3(uri_prefix)
        objects = self._objects_under(bucket, key.rstrip("/"), uri_prefix)
        if not objects:
            raise NotFoundError(f"no objects under {uri_prefix}")
        self._download_many(bucket, [(obj["Key"], dest_dir / rel) for rel, obj in objects])
        return dest_dir

    def exists(self, uri: str) -> bool:
        bucket, key = _split_s3(uri)
        key = key.rstrip("/")
        if key and self._head(bucket, key, uri) is not None:
            return True
        folder = f"{key}/" if key else ""
        with self._errors(uri, "list"):
            page = self._client.list_objects_v2(Bucket=bucket, Prefix=folder, MaxKeys=1)
        return bool(page.get("KeyCount", 0))

    def list(self, uri_prefix: str) -> builtins.list[str]:
        bucket, key = _split_s3(uri_prefix)
        return [f"s3://{bucket}/{k}" for k in self._keys_at_or_under(bucket, key, uri_prefix)]

    def sha256(self, uri: str) -> str:
        bucket, key = _split_s3(uri)
        digest = hashlib.sha256()
        with self._errors(uri, "read"):
            body = self._client.get_object(Bucket=bucket, Key=key)["Body"]
            try:
                for chunk in body.iter_chunks(CHUNK_SIZE):
                    digest.update(chunk)
            finally:
                body.close()
        return digest.hexdigest()

    def delete_prefix(self, uri_prefix: str) -> int:
        bucket, key = _split_s3(uri_prefix)
        key = key.rstrip("/")
        inside = bucket == self._bucket and (
            not self._prefix or key == self._prefix or key.startswith(f"{self._prefix}/")
        )
        if not inside:
            raise StorageError(f"refusing to delete {uri_prefix}: it is outside {self.root}")
        keys = self._keys_at_or_under(bucket, key, uri_prefix)
        with self._errors(uri_prefix, "delete"):
            for start in range(0, len(keys), 1000):
                batch = [{"Key": k} for k in keys[start : start + 1000]]
                response = self._client.delete_objects(
                    Bucket=bucket, Delete={"Objects": batch, "Quiet": True}
                )
                if response.get("Errors"):
                    first = response["Errors"][0]
                    raise StorageError(
                        f"could not delete s3://{bucket}/{first.get('Key')}:"
                        f" {first.get('Code')}: {first.get('Message')}"
                    )
        return len(keys)

    def _head(self, bucket: str, key: str, uri: str) -> dict[str, Any] | None:
        """The object's HEAD response, or None when there is no object at exactly ``key``."""
        try:
            with self._errors(uri, "read"):
                response: dict[str, Any] = self._client.head_object(Bucket=bucket, Key=key)
        except NotFoundError:
            return None
        return response

    def _objects_under(self, bucket: str, key: str, uri: str) -> builtins.list[tuple[str, Any]]:
        """``(relative path, listing entry)`` of every object under ``key`` as a folder."""
        folder = f"{key}/" if key else ""
        found: builtins.list[tuple[str, Any]] = []
        with self._errors(uri, "list"):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=folder):
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith("/"):
                        continue  # zero-byte "folder" markers made by consoles
                    rel = obj["Key"][len(folder) :]
                    if _clean_key(rel) != rel:
                        raise StorageError(
                            f"object s3://{bucket}/{obj['Key']} has a key that cannot be a"
                            " local path; rename it"
                        )
                    found.append((rel, obj))
        return found

    def _keys_at_or_under(self, bucket: str, key: str, uri: str) -> builtins.list[str]:
        key = key.rstrip("/")
        keys = [obj["Key"] for _, obj in self._objects_under(bucket, key, uri)]
        if key and self._head(bucket, key, uri) is not None:
            keys.append(key)
        return sorted(keys)

    def _download_many(self, bucket: str, items: builtins.list[tuple[str, Path]]) -> None:
        def download(item: tuple[str, Path]) -> None:
            key, dest = item
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self._errors(f"s3://{bucket}/{key}", "download"):
                self._client.download_file(bucket, key, str(dest))

        with ThreadPoolExecutor(max_workers=_DOWNLOAD_THREADS) as pool:
            # list() drains the iterator so the first failure is raised here.
            builtins.list(pool.map(download, items))

    @contextlib.contextmanager
    def _errors(self, uri: str, action: str) -> Iterator[None]:
        """Turn boto3/botocore failures into NotFoundError or a plain-worded StorageError."""
        try:
            yield
        except DetrforgeError:
            raise
        except (BotoCoreError, Boto3Error, ClientError) as exc:
            raise self._translate(exc, uri, action) from exc

    def _translate(self, exc: Exception, uri: str, action: str) -> DetrforgeError:
        cause: BaseException = exc
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
            cause = exc.__context__
        bucket = _split_s3(uri)[0]
        if isinstance(cause, ClientError):
            error = cause.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return self._no_bucket(bucket)
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                # HEAD answers a bare 404 for a missing bucket too; tell the two apart.
                if not self._bucket_exists(bucket):
                    return self._no_bucket(bucket)
                return NotFoundError(f"no object at {uri}")
            if code in _AUTH_CODES or status == 403:
                return StorageError(
                    f"S3 at {self.endpoint_url} refused access to {uri} ({code}); check"
                    " AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions"
                )
            message = error.get("Message") or "no message"
            return StorageError(
                f"could not {action} {uri}: S3 answered {code or status}: {message}"
            )
        if isinstance(cause, NoCredentialsError | PartialCredentialsError):
            return StorageError(
                f"no usable AWS credentials to {action} {uri}; set AWS_ACCESS_KEY_ID and"
                " AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            )
        if isinstance(cause, EndpointConnectionError | ConnectTimeoutError | BotoConnectionError):
            return StorageError(
                f"cannot reach the S3 endpoint {self.endpoint_url} to {action} {uri}; check"
                " that it is running and that endpoint_url / AWS_ENDPOINT_URL point at it"
            )
        return StorageError(f"could not {action} {uri}: {cause}")

    def _no_bucket(self, bucket: str) -> StorageError:
        return StorageError(
            f"bucket {bucket!r} does not exist at {self.endpoint_url}; create it or fix the"
            " artifact root"
        )

    def _bucket_exists(self, bucket: str) -> bool:
        try:
            self._client.head_bucket(Bucket=bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return bool(status != 404)
        except (BotoCoreError, Boto3Error):
            return True
        return True


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
        return _fetch_s3(S3ArtifactStore(uri, endpoint_url=endpoint_url), uri, cache_dir)
    if uri.startswith("file:") or (not urlsplit(uri).scheme and os.path.isabs(uri)):
        path = _local_path(uri)
        if not path.exists():
            raise NotFoundError(f"nothing at {uri}")
        return path
    raise StorageError(f"cannot fetch {uri!r}; use {_ACCEPTED_ROOTS}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` so workers on one node fetch a URI once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch_s3(store: S3ArtifactStore, uri: str, cache_dir: Path) -> Path:
    bucket, key = _split_s3(uri)
    key = key.rstrip("/")
    canonical = f"s3://{bucket}/{key}"
    base = cache_dir / hashlib.sha256(f"{store.endpoint_url} {canonical}".encode()).hexdigest()[:16]
    target = base / (PurePosixPath(key).name or bucket)
    manifest_path = base / "manifest.json"
    with _locked(base / ".lock"):
        try:
            old: dict[str, str] = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            old = {}
        head = store._head(bucket, key, uri) if key else None
        # Manifest: relative path ("" for a single file) -> ETag of the cached copy.
        remote: dict[str, tuple[str, Path, int]] = {}
        if head is not None:
            remote[""] = (head["ETag"], target, int(head["ContentLength"]))
            if target.is_dir():
                shutil.rmtree(target)
        else:
            for rel, obj in store._objects_under(bucket, key, uri):
                remote[rel] = (obj["ETag"], target / rel, int(obj["Size"]))
            if not remote:
                raise NotFoundError(f"no object or folder at {uri}")
            if target.is_file():
                target.unlink()
        stale = [
            (_join(key, rel), dest)
            for rel, (etag, dest, size) in remote.items()
            if old.get(rel) != etag or not dest.is_file() or dest.stat().st_size != size
        ]
        store._download_many(bucket, stale)
        for rel in old.keys() - remote.keys():
            if rel:  # objects deleted upstream must not linger in a cached dataset
                (target / rel).unlink(missing_ok=True)
        tmp = manifest_path.with_name(f"manifest.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps({rel: etag for rel, (etag, _, _) in remote.items()}))
        os.replace(tmp, manifest_path)
    return target
