"""The artifact store in an S3 (or S3-compatible) bucket, rooted at ``s3://bucket/prefix``, and a
node-local cache of what it holds.

S3 talks to AWS or any S3-compatible endpoint (MinIO, moto), chosen by ``endpoint_url`` or by
boto3's own ``AWS_ENDPOINT_URL`` handling.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

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

from detrforge.platform.artifact_store import (
    ArtifactStore,
    StoredObject,
    clean_key,
    file_key,
    join_key,
)
from detrforge.platform.blobs import CHUNK_SIZE, sha256_file
from detrforge.platform.errors import DetrforgeError, NotFoundError, StorageError

__all__ = ["S3ArtifactStore", "fetch_cached"]

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


def _split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` as ``("bucket", "some/key")``."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise StorageError(f"{uri!r} is not an s3://bucket/key URI")
    return parts.netloc, parts.path.lstrip("/")


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
        cleaned = clean_key(key)
        return f"{self.root}/{cleaned}" if cleaned else self.root

    def put_file(self, local: Path, key: str) -> StoredObject:
        full_key = join_key(self._prefix, file_key(key))
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
                    if clean_key(rel) != rel:
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


def fetch_cached(store: S3ArtifactStore, uri: str, cache_dir: Path) -> Path:
    """A local copy of the object or "folder" at ``uri``, cached in ``cache_dir`` by ETag.

    Raises:
        NotFoundError: nothing exists at ``uri``.
    """
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
            (join_key(key, rel), dest)
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
