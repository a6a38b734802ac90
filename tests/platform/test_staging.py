"""Staging a local dataset into the artifact store (S3 through moto's server), and the per-node
download cache jobs read staged datasets through."""

from __future__ import annotations

from pathlib import Path

import pytest

from detrforge.detector.data import DatasetInfo, dataset_files, fingerprint_dataset
from detrforge.detector.synthetic import synth_dataset
from detrforge.platform.errors import StorageError
from detrforge.platform.staging import dataset_key, shared_filesystem, stage_dataset
from detrforge.platform.storage import fetch_local, open_store


def _dataset(where: Path, seed: int) -> DatasetInfo:
    return synth_dataset(where, seed=seed, train_images=3, valid_images=2, image_size=64)


def test_a_dataset_is_uploaded_once_under_its_fingerprint(s3_bucket: str, tmp_path: Path) -> None:
    info = _dataset(tmp_path / "ds", seed=1)
    store = open_store(f"{s3_bucket}/root")
    files = dataset_files(Path(info.root))
    first = stage_dataset(store, info.fingerprint, files)
    assert first.uri == f"{s3_bucket}/root/datasets/{info.fingerprint}"
    # Exactly the files the fingerprint covers, at their relative paths.
    assert sorted(first.uploaded) == sorted(f"{first.uri}/{rel}" for rel, _ in files)
    assert store.list(first.uri) == sorted(first.uploaded)
    assert first.reused == 0

    again = stage_dataset(store, info.fingerprint, files)
    assert (again.uri, again.uploaded, again.reused) == (first.uri, (), len(files))


def test_an_interrupted_upload_is_completed_by_the_next(s3_bucket: str, tmp_path: Path) -> None:
    info = _dataset(tmp_path / "ds", seed=1)
    store = open_store(s3_bucket)
    files = dataset_files(Path(info.root))
    staged = stage_dataset(store, info.fingerprint, files)
    lost = staged.uploaded[-1]
    assert store.delete_prefix(lost) == 1

    resumed = stage_dataset(store, info.fingerprint, files)
    assert resumed.uploaded == (lost,)
    assert resumed.reused == len(files) - 1


def test_fetched_copies_of_two_datasets_never_collide(s3_bucket: str, tmp_path: Path) -> None:
    """Jobs on one node share a download cache: two datasets (both folders named ``ds``) staged
    under their fingerprints come back as two copies, each with its own bytes."""
    a, b = _dataset(tmp_path / "a" / "ds", seed=1), _dataset(tmp_path / "b" / "ds", seed=2)
    assert a.fingerprint != b.fingerprint
    store = open_store(f"{s3_bucket}/root")
    uris = [stage_dataset(store, d.fingerprint, dataset_files(Path(d.root))).uri for d in (a, b)]
    cache = tmp_path / "cache"
    copies = [fetch_local(uri, cache) for uri in uris]
    assert copies[0] != copies[1]
    assert fingerprint_dataset(copies[0]) == a.fingerprint
    assert fingerprint_dataset(copies[1]) == b.fingerprint
    # Fetched again (another job on the node): the same entry, still a's bytes.
    assert fetch_local(uris[0], cache) == copies[0]
    assert fingerprint_dataset(copies[0]) == a.fingerprint


@pytest.mark.parametrize("fingerprint", ["", "../escape", "a/b", "x y"])
def test_a_fingerprint_that_cannot_name_a_folder_is_refused(fingerprint: str) -> None:
    with pytest.raises(StorageError):
        dataset_key(fingerprint)


def test_no_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no files"):
        stage_dataset(open_store(tmp_path.as_uri()), "ab12", [])


@pytest.mark.parametrize(
    ("root", "shared"),
    [("file:///srv/artifacts", True), ("/srv/artifacts", True), ("s3://bucket/prefix", False)],
)
def test_only_a_local_root_means_a_shared_filesystem(root: str, shared: bool) -> None:
    assert shared_filesystem(root) is shared
