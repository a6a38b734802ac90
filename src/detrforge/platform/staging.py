"""Data the cluster can reach: a dataset on the API's disk, copied once into the artifact store.

With a local artifact root (``file://`` or a plain path) the API and every node share a
filesystem, and a job reads a local dataset where it is. With an ``s3://`` root they do not: a
dataset given as a local path is uploaded to ``<root>/datasets/<fingerprint>/`` and the job is
sent that URI instead (each node downloads and caches it, ``storage.fetch_local``).

Content-addressed: the fingerprint hashes every file's relative path and contents, so every
object under ``datasets/<fingerprint>/`` has the same bytes whoever wrote it (two API replicas
staging the same data at once write the same objects). An object that exists is therefore never
uploaded again, and an upload interrupted half-way is completed by the next submission of that
data, which uploads only what is missing. A job is submitted only once its staging returned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from detrforge.platform.artifact_store import ArtifactStore, clean_key, join_key
from detrforge.platform.errors import StorageError

__all__ = ["DATASETS_PREFIX", "StagedDataset", "dataset_key", "shared_filesystem", "stage_dataset"]

# Where staged datasets live under the artifact root, one folder per fingerprint.
DATASETS_PREFIX = "datasets"


def shared_filesystem(artifact_root: str) -> bool:
    """Whether ``artifact_root`` is a local folder: the API and every node share a filesystem,
    so jobs may be given paths of the API's machine. Anything else (``s3://``) means they may not.
    """
    return artifact_root.startswith(("file:", "/"))


def dataset_key(fingerprint: str) -> str:
    """The store key (a folder) of the dataset with ``fingerprint``."""
    if not fingerprint or not fingerprint.isalnum():
        raise StorageError(f"dataset fingerprint {fingerprint!r} cannot name a folder")
    return f"{DATASETS_PREFIX}/{fingerprint}"


@dataclass(frozen=True)
class StagedDataset:
    """A dataset in the artifact store: its URI (a folder), the objects this staging uploaded
    and how many of the dataset's files were there already."""

    uri: str
    uploaded: tuple[str, ...]
    reused: int


def stage_dataset(
    store: ArtifactStore, fingerprint: str, files: Sequence[tuple[str, Path]]
) -> StagedDataset:
    """Put the dataset ``files`` (relative key, local path) under ``datasets/<fingerprint>``.

    Uploads only the files not in the store yet: none when that fingerprint was staged before.

    Args:
        store: the artifact store jobs read from.
        fingerprint: the dataset's fingerprint, which must cover exactly ``files``.
        files: every file of the dataset, keyed by its path relative to the dataset's root.

    Raises:
        StorageError: a key escapes the folder, or the store refused a read or write.
    """
    if not files:
        raise StorageError(f"dataset {fingerprint} has no files to stage")
    folder = store.uri_for(dataset_key(fingerprint))
    present = set(store.list(folder))
    uploaded = []
    for relative, path in files:
        key = join_key(dataset_key(fingerprint), clean_key(relative))
        if store.uri_for(key) in present:
            continue
        uploaded.append(store.put_file(path, key).uri)
    return StagedDataset(uri=folder, uploaded=tuple(uploaded), reused=len(files) - len(uploaded))
