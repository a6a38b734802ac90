"""The artifact store behaves the same over file:// and s3:// (moto server over real HTTP)."""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from detrforge.platform.artifact_store import ArtifactStore, StoredObject
from detrforge.platform.blobs import blob_sha256, sha256_file
from detrforge.platform.errors import IntegrityError, NotFoundError, StorageError
from detrforge.platform.local_store import LocalArtifactStore
from detrforge.platform.s3_store import S3ArtifactStore
from detrforge.platform.storage import fetch_local, open_store


@dataclass
class Backend:
    """A store under test plus a way to change stored bytes behind its back."""

    store: ArtifactStore
    overwrite: Callable[[str, bytes], None]


def _s3_overwrite(uri: str, data: bytes) -> None:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data)


def _file_overwrite(uri: str, data: bytes) -> None:
    Path(uri.removeprefix("file://")).write_bytes(data)


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        return Backend(open_store((tmp_path / "artifacts").as_uri()), _file_overwrite)
    bucket = request.getfixturevalue("s3_bucket")
    # No endpoint_url: boto3 finds the moto server through AWS_ENDPOINT_URL, as jobs will.
    return Backend(open_store(f"{bucket}/artifacts"), _s3_overwrite)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


DATASET = {
    "train/_annotations.coco.json": b'{"images": []}',
    "train/img 1.jpg": b"\xff\xd8" + bytes(range(256)) * 4,
    "valid/_annotations.coco.json": b'{"images": [1]}',
    "valid/nested/deep.bin": b"deep",
}


def test_sha256_file_streams_large_files(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = _write(tmp_path / "big.bin", data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_put_get_round_trip(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    data = os.urandom(2 * 1024 * 1024 + 5)
    expected = hashlib.sha256(data).hexdigest()
    src = _write(tmp_path / "src" / "model.pth", data)

    stored = store.put_file(src, "runs/1/checkpoint.pth")

    assert stored == StoredObject(
        uri=store.uri_for("runs/1/checkpoint.pth"), sha256=expected, size=len(data)
    )
    assert stored.uri == f"{store.root}/runs/1/checkpoint.pth"
    dest = tmp_path / "out" / "a" / "b" / "checkpoint.pth"
    assert store.get_file(stored.uri, dest) == dest
    assert dest.read_bytes() == data
    assert store.sha256(stored.uri) == expected


def test_put_dir_get_dir_list(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    local = tmp_path / "dataset"
    for rel, data in DATASET.items():
        _write(local / rel, data)
    _write(tmp_path / "other" / "x.txt", b"x")
    store.put_dir(tmp_path / "other", "data2")  # shares the string prefix "data"

    stored = store.put_dir(local, "data")

    assert [obj.uri for obj in stored] == [store.uri_for(f"data/{rel}") for rel in sorted(DATASET)]
    assert [obj.sha256 for obj in stored] == [
        hashlib.sha256(DATASET[rel]).hexdigest() for rel in sorted(DATASET)
    ]
    assert [obj.size for obj in stored] == [len(DATASET[rel]) for rel in sorted(DATASET)]
    assert store.list(store.uri_for("data")) == sorted(obj.uri for obj in stored)
    assert store.list(store.uri_for("data/valid")) == [
        store.uri_for("data/valid/_annotations.coco.json"),
        store.uri_for("data/valid/nested/deep.bin"),
    ]
    assert store.list(store.uri_for("data/train/img 1.jpg")) == [
        store.uri_for("data/train/img 1.jpg")
    ]
    assert store.list(store.uri_for("nothing-here")) == []
    assert len(store.list(store.root)) == len(DATASET) + 1

    dest = tmp_path / "copy"
    assert store.get_dir(store.uri_for("data"), dest) == dest
    assert _tree(dest) == DATASET


def test_exists(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    stored = store.put_file(_write(tmp_path / "w.bin", b"w"), "weights/w.bin")

    assert store.exists(stored.uri) is True
    assert store.exists(store.uri_for("weights")) is True
    assert store.exists(store.uri_for("weights/missing.bin")) is False
    assert store.exists(store.uri_for("nowhere")) is False


def test_verify_passes_then_fails_when_bytes_change(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    stored = store.put_file(_write(tmp_path / "c.pth", b"original"), "ckpt/c.pth")
    store.verify(stored.uri, hashlib.sha256(b"original").hexdigest())

    backend.overwrite(stored.uri, b"tampered")

    changed = hashlib.sha256(b"tampered").hexdigest()
    with pytest.raises(IntegrityError) as info:
        store.verify(stored.uri, stored.sha256)
    assert info.value.code == "INTEGRITY_ERROR"
    assert info.value.message == (
        f"checkpoint changed or corrupt: {stored.uri} has sha256 {changed},"
        f" expected {stored.sha256}"
    )


def test_missing_object_is_not_found(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    uri = store.uri_for("missing/model.pth")

    with pytest.raises(NotFoundError, match="missing/model.pth"):
        store.get_file(uri, tmp_path / "x")
    with pytest.raises(NotFoundError, match="missing/model.pth"):
        store.sha256(uri)
    with pytest.raises(NotFoundError, match="missing/model.pth"):
        store.verify(uri, "0" * 64)
    with pytest.raises(NotFoundError, match="missing"):
        store.get_dir(store.uri_for("missing"), tmp_path / "d")
    with pytest.raises(NotFoundError, match="no local file"):
        store.put_file(tmp_path / "absent.bin", "a.bin")
    assert not (tmp_path / "x").exists()


def test_put_blob_is_content_addressed_and_written_once(backend: Backend, tmp_path: Path) -> None:
    data = os.urandom(3000)
    digest = hashlib.sha256(data).hexdigest()
    local = _write(tmp_path / "w.pth", data)
    stored = backend.store.put_blob(local, digest)
    assert stored == StoredObject(
        uri=backend.store.uri_for(f"blobs/sha256/{digest}"), sha256=digest, size=3000
    )
    assert blob_sha256(stored.uri) == digest
    assert backend.store.size(stored.uri) == 3000
    # Present with the same bytes: kept as it is (the local file is not even read again).
    local.write_bytes(b"changed")
    assert backend.store.put_blob(local, digest) == stored
    backend.store.verify(stored.uri, digest)
    # Bytes that do not hash to the name are never stored under it.
    backend.overwrite(stored.uri, b"tampered")
    with pytest.raises(IntegrityError):
        backend.store.put_blob(local, digest)
    assert not backend.store.exists(stored.uri)
    # A damaged blob is rewritten only with the bytes its name promises.
    _write(local, data)
    backend.overwrite(stored.uri, b"tampered")
    assert backend.store.put_blob(local, digest) == stored
    backend.store.verify(stored.uri, digest)
    with pytest.raises(StorageError):
        backend.store.put_blob(local, "../../etc/passwd")
    with pytest.raises(NotFoundError):
        backend.store.size(backend.store.uri_for("blobs/none"))


def test_blob_sha256_reads_only_blob_uris() -> None:
    digest = "ab" * 32
    assert blob_sha256(f"file:///a/blobs/sha256/{digest}") == digest
    assert blob_sha256(f"s3://b/p/blobs/sha256/{digest}") == digest
    assert blob_sha256(f"/a/blobs/sha256/{digest}") == digest
    assert blob_sha256(f"file:///a/other/sha256/{digest}") is None
    assert blob_sha256("file:///a/blobs/sha256/ABC") is None
    assert blob_sha256(f"file:///a/blobs/sha256/{digest}.pth") is None


@pytest.mark.parametrize("key", ["../escape.bin", "a/../../escape.bin", "/etc/passwd", ".."])
def test_key_escaping_the_root_is_refused(backend: Backend, tmp_path: Path, key: str) -> None:
    store = backend.store
    src = _write(tmp_path / "f.bin", b"f")

    with pytest.raises(StorageError, match="escapes the artifact root|relative path"):
        store.put_file(src, key)
    with pytest.raises(StorageError):
        store.uri_for(key)
    with pytest.raises(StorageError):
        store.put_dir(tmp_path, key)
    assert not (tmp_path / "escape.bin").exists()
    assert store.list(store.root) == []


def test_delete_prefix_counts_and_stays_inside_root(backend: Backend, tmp_path: Path) -> None:
    store = backend.store
    src = _write(tmp_path / "f.bin", b"f")
    for key in ("run/a.pth", "run/b.pth", "run/sub/c.pth", "run2/d.pth"):
        store.put_file(src, key)

    assert store.delete_prefix(store.uri_for("run")) == 3
    assert store.list(store.uri_for("run")) == []
    assert store.list(store.root) == [store.uri_for("run2/d.pth")]
    assert store.delete_prefix(store.uri_for("run")) == 0
    assert store.delete_prefix(store.uri_for("run2/d.pth")) == 1
    assert store.list(store.root) == []

    outside = store.root.rsplit("/", 1)[0] + "/elsewhere"
    with pytest.raises(StorageError, match="outside"):
        store.delete_prefix(outside)


def test_unknown_scheme_names_the_field_and_accepted_forms() -> None:
    for root in ("gs://bucket/prefix", "relative/path", "s3://"):
        with pytest.raises(StorageError) as info:
            open_store(root)
        assert info.value.field == "artifact_root"
        assert info.value.code == "STORAGE_ERROR"
        assert "s3://bucket/prefix" in info.value.message
        assert "file:///" in info.value.message
        assert repr(root) in info.value.message


def test_open_store_dispatches_on_scheme(tmp_path: Path, s3_bucket: str) -> None:
    plain = open_store(str(tmp_path))
    assert isinstance(plain, LocalArtifactStore)
    assert plain.root == tmp_path.as_uri()
    assert isinstance(open_store(tmp_path.as_uri() + "/"), LocalArtifactStore)
    s3 = open_store(f"{s3_bucket}/some/prefix/")
    assert isinstance(s3, S3ArtifactStore)
    assert s3.root == f"{s3_bucket}/some/prefix"


def test_s3_objects_carry_sha256_metadata(s3_server: Any, s3_bucket: str, tmp_path: Path) -> None:
    store = S3ArtifactStore(s3_bucket, endpoint_url=s3_server.endpoint_url)
    stored = store.put_file(_write(tmp_path / "m.bin", b"model"), "m.bin")

    head = s3_server.client().head_object(Bucket=s3_bucket.removeprefix("s3://"), Key="m.bin")
    assert head["Metadata"] == {"sha256": hashlib.sha256(b"model").hexdigest()}
    assert stored.uri == f"{s3_bucket}/m.bin"


def test_s3_store_pickles_for_ray_workers(s3_bucket: str, tmp_path: Path) -> None:
    store = S3ArtifactStore(f"{s3_bucket}/p")
    stored = store.put_file(_write(tmp_path / "m.bin", b"model"), "m.bin")

    clone = pickle.loads(pickle.dumps(store))

    assert clone.root == store.root
    assert clone.sha256(stored.uri) == stored.sha256


def test_fetch_local_s3_folder(s3_bucket: str, tmp_path: Path) -> None:
    store = open_store(s3_bucket)
    local = tmp_path / "dataset"
    for rel, data in DATASET.items():
        _write(local / rel, data)
    store.put_dir(local, "datasets/coco-mini")
    cache = tmp_path / "cache"

    path = fetch_local(f"{s3_bucket}/datasets/coco-mini/", cache)

    assert path.is_dir()
    assert path.name == "coco-mini"
    assert path.is_relative_to(cache)
    assert _tree(path) == DATASET
    assert fetch_local(f"{s3_bucket}/datasets/coco-mini", cache) == path

    # Upstream changes reach the cache: a changed file, a new one, a deleted one.
    _s3_overwrite(f"{s3_bucket}/datasets/coco-mini/valid/nested/deep.bin", b"deeper")
    _s3_overwrite(f"{s3_bucket}/datasets/coco-mini/test/new.json", b"{}")
    store.delete_prefix(f"{s3_bucket}/datasets/coco-mini/train")

    assert fetch_local(f"{s3_bucket}/datasets/coco-mini", cache) == path
    assert _tree(path) == {
        "valid/_annotations.coco.json": b'{"images": [1]}',
        "valid/nested/deep.bin": b"deeper",
        "test/new.json": b"{}",
    }


def test_fetch_local_s3_single_file(s3_bucket: str, tmp_path: Path) -> None:
    store = open_store(s3_bucket)
    data = os.urandom(1024)
    store.put_file(_write(tmp_path / "w.pth", data), "pretrained/rf-detr-base.pth")
    cache = tmp_path / "cache"

    path = fetch_local(f"{s3_bucket}/pretrained/rf-detr-base.pth", cache)

    assert path.is_file()
    assert path.name == "rf-detr-base.pth"
    assert path.read_bytes() == data
    before = path.stat().st_mtime_ns
    time.sleep(0.01)
    assert fetch_local(f"{s3_bucket}/pretrained/rf-detr-base.pth", cache) == path
    assert path.stat().st_mtime_ns == before  # unchanged object: served from the cache

    with pytest.raises(NotFoundError, match="pretrained/missing.pth"):
        fetch_local(f"{s3_bucket}/pretrained/missing.pth", cache)


def test_fetch_local_local_paths_are_returned_without_copying(tmp_path: Path) -> None:
    weights = _write(tmp_path / "w.pth", b"w")
    cache = tmp_path / "cache"

    assert fetch_local(str(weights), cache) == weights
    assert fetch_local(weights.as_uri(), cache) == weights
    assert fetch_local(tmp_path.as_uri(), cache) == tmp_path
    assert not cache.exists()
    with pytest.raises(NotFoundError, match="nope.pth"):
        fetch_local(str(tmp_path / "nope.pth"), cache)
    with pytest.raises(StorageError, match="gs://b/w.pth"):
        fetch_local("gs://b/w.pth", cache)


def test_s3_missing_bucket_is_a_storage_error(s3_server: Any, tmp_path: Path) -> None:
    store = S3ArtifactStore("s3://detrforge-no-such-bucket/p")
    src = _write(tmp_path / "f.bin", b"f")

    for action in (
        lambda: store.put_file(src, "f.bin"),
        lambda: store.get_file("s3://detrforge-no-such-bucket/p/f.bin", tmp_path / "f"),
        lambda: store.exists("s3://detrforge-no-such-bucket/p/f.bin"),
    ):
        with pytest.raises(StorageError) as info:
            action()
        assert type(info.value) is StorageError
        assert "bucket 'detrforge-no-such-bucket' does not exist" in info.value.message


def test_s3_unreachable_endpoint_is_a_storage_error(s3_bucket: str, tmp_path: Path) -> None:
    # A port nothing listens on; one attempt so the test does not sit in retry backoff.
    client = boto3.client(
        "s3", endpoint_url="http://127.0.0.1:9", config=Config(retries={"max_attempts": 1})
    )
    store = S3ArtifactStore(s3_bucket, client=client)

    with pytest.raises(StorageError, match="cannot reach the S3 endpoint http://127.0.0.1:9"):
        store.get_file(f"{s3_bucket}/x.bin", tmp_path / "x.bin")
    with pytest.raises(StorageError, match="cannot reach the S3 endpoint"):
        store.put_file(_write(tmp_path / "f.bin", b"f"), "f.bin")


def test_s3_missing_credentials_is_a_storage_error(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3ArtifactStore(s3_bucket)

    with pytest.raises(StorageError, match="no usable AWS credentials"):
        store.sha256(f"{s3_bucket}/x.bin")
