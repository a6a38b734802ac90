"""Intake for jobs: admit the files and datasets a request names, validate them, and name a
dataset as the cluster can reach it.

Validation runs here, on the API's machine, before anything is submitted. What the job is then
sent depends on the artifact root: with a local one the dataset's path (the API and every node
share a filesystem), with ``s3://`` a local dataset's copy in the store, content-addressed by its
fingerprint (``platform/staging.py``): uploaded by the first submission, reused by the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from detrforge.detector.data import (
    DatasetInfo,
    dataset_files,
    fingerprint_dataset,
    require_valid_dataset,
)
from detrforge.platform.errors import InvalidSpecError, NotFoundError
from detrforge.platform.limits import DEFAULT_MAX_ANNOTATION_BYTES
from detrforge.platform.sources import SourcePolicy
from detrforge.platform.staging import shared_filesystem, stage_dataset
from detrforge.platform.storage import fetch_local, open_store

__all__ = ["Intake"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Intake:
    """Admits files and datasets under ``sources``; stages local datasets into ``artifact_root``."""

    sources: SourcePolicy
    artifact_root: str
    # Where s3:// datasets are downloaded to be validated.
    cache_dir: Path
    max_annotation_bytes: int = DEFAULT_MAX_ANNOTATION_BYTES

    def file(self, uri: str, *, field: str) -> str:
        """``uri`` admitted by the source policy and naming an existing file; its canonical form.

        Raises:
            InvalidSpecError: refused by the policy, or nothing is there.
        """
        source = self.sources.check(uri, field=field)
        if source.startswith("s3://"):
            found = open_store(source).exists(source)
        else:
            found = Path(source).is_file()
        if not found:
            raise InvalidSpecError(f"{field}: {uri} does not exist or is not a file", field=field)
        return source

    def dataset(self, uri: str, *, field: str = "dataset") -> DatasetInfo:
        """Bring the dataset here (s3:// is downloaded) and validate it; raises on any problem.

        Raises:
            InvalidSpecError: the source policy refuses ``uri``, or nothing is there.
            InvalidDatasetError: the dataset is malformed.
        """
        source = self.sources.check(uri, field=field)
        try:
            local = fetch_local(source, self.cache_dir)
        except NotFoundError:
            raise InvalidSpecError(f"{field}: {uri} does not exist", field=field) from None
        return require_valid_dataset(Path(local), max_annotation_bytes=self.max_annotation_bytes)

    def for_cluster(self, uri: str, info: DatasetInfo, *, field: str = "dataset") -> str:
        """What a job is sent for the dataset ``uri`` that :meth:`dataset` described as ``info``.

        ``uri`` itself when it is on S3 or the artifact root is local; otherwise the URI of the
        dataset's copy in the artifact store, uploaded now unless it is there already.

        Raises:
            InvalidSpecError: the dataset changed between its validation and its upload.
            StorageError: the artifact store refused the upload.
        """
        if uri.startswith("s3://") or shared_filesystem(self.artifact_root):
            return uri
        root, store = Path(info.root), open_store(self.artifact_root)
        staged = stage_dataset(store, info.fingerprint, dataset_files(root))
        # The folder is named for the bytes validated; bytes that changed since must not stay
        # there, where every later submission of the validated data would reuse them.
        if staged.uploaded and fingerprint_dataset(root) != info.fingerprint:
            for uploaded in staged.uploaded:
                store.delete_prefix(uploaded)
            raise InvalidSpecError(
                f"{field}: the dataset at {uri} changed while it was uploaded to the artifact "
                "store; submit again once nothing writes to it",
                field=field,
            )
        log.info(
            "dataset %s is %s (%d file(s) uploaded, %d there already)",
            uri,
            staged.uri,
            len(staged.uploaded),
            staged.reused,
        )
        return staged.uri
