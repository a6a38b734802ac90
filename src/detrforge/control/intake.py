"""Intake for jobs: admit the files and datasets a request names, validate them, and name a
dataset as the cluster can reach it.

Validation runs here, on the API's machine, before anything is submitted. What the job is then
sent depends on the artifact root: with a local one the dataset's path (the API and every node
share a filesystem), with ``s3://`` a local dataset's copy in the store, content-addressed by its
fingerprint (``platform/staging.py``): uploaded by the first submission, reused by the rest. Local
checkpoint and weights files go the same way, to ``blobs/sha256/<hex>``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from detrforge.detector.data import (
    DatasetInfo,
    dataset_files,
    fingerprint_dataset,
    require_valid_dataset,
)
from detrforge.platform.blobs import sha256_file
from detrforge.platform.errors import IntegrityError, InvalidSpecError, NotFoundError
from detrforge.platform.limits import DEFAULT_MAX_ANNOTATION_BYTES
from detrforge.platform.sources import SourcePolicy
from detrforge.platform.staging import shared_filesystem, stage_dataset
from detrforge.platform.storage import fetch_local, open_store

__all__ = ["Intake"]

log = logging.getLogger(__name__)

SpecT = TypeVar("SpecT", bound=BaseModel)

# Spec fields that name one file a job reads, with the field of its expected sha256 (if any).
_FILE_FIELDS = {"checkpoint": "checkpoint_sha256", "pretrain_weights": None}


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

    def dataset(
        self, uri: str, *, field: str = "dataset", require_masks: bool = False
    ) -> DatasetInfo:
        """Bring the dataset here (s3:// is downloaded) and validate it; raises on any problem.

        ``require_masks`` (a segmentation model's data) makes an object without a mask a problem.

        Raises:
            InvalidSpecError: the source policy refuses ``uri``, or nothing is there.
            InvalidDatasetError: the dataset is malformed.
        """
        source = self.sources.check(uri, field=field)
        try:
            local = fetch_local(source, self.cache_dir)
        except NotFoundError:
            raise InvalidSpecError(f"{field}: {uri} does not exist", field=field) from None
        return require_valid_dataset(
            Path(local), max_annotation_bytes=self.max_annotation_bytes, require_masks=require_masks
        )

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

    def file_for_cluster(self, uri: str, *, field: str, sha256: str | None = None) -> str:
        """What a job is sent for the file ``uri`` (admitted by :meth:`file`).

        ``uri`` itself when it is on S3 or the artifact root is local; otherwise the URI of its
        copy in the artifact store, ``blobs/sha256/<hex>`` (uploaded now unless it is there).

        Raises:
            IntegrityError: the file does not hash to ``sha256``, or changed while uploaded.
            StorageError: the artifact store refused the upload.
        """
        if uri.startswith("s3://") or shared_filesystem(self.artifact_root):
            return uri
        path = Path(uri.removeprefix("file://"))
        digest = sha256_file(path)
        if sha256 is not None and digest != sha256:
            raise IntegrityError(
                f"{field}: {uri} changed since it was checked (its sha256 is no longer "
                f"{sha256}); submit again",
                field=field,
            )
        blob = open_store(self.artifact_root).put_blob(path, digest)
        log.info("%s %s is %s", field, uri, blob.uri)
        return blob.uri

    def spec_for_cluster(self, spec: SpecT, dataset: DatasetInfo | None) -> SpecT:
        """``spec`` as a job is sent it: its dataset (``dataset``, validated) and every file it
        names where the cluster reaches them (:meth:`for_cluster`, :meth:`file_for_cluster`)."""
        update: dict[str, Any] = {}
        if dataset is not None:
            uri = getattr(spec, "dataset")  # noqa: B009 - any spec with a dataset field
            update["dataset"] = self.for_cluster(uri, dataset)
        update.update(self._files_for_cluster(spec, prefix=""))
        baseline = getattr(spec, "baseline", None)
        if isinstance(baseline, BaseModel):
            staged = self._files_for_cluster(baseline, prefix="baseline.")
            if staged:
                update["baseline"] = baseline.model_copy(update=staged)
        return spec.model_copy(update=update) if update else spec

    def _files_for_cluster(self, spec: BaseModel, *, prefix: str) -> dict[str, str]:
        staged = {}
        for name, sha_field in _FILE_FIELDS.items():
            uri = getattr(spec, name, None)
            if isinstance(uri, str) and uri:
                sha256 = getattr(spec, sha_field, None) if sha_field else None
                sent = self.file_for_cluster(uri, field=prefix + name, sha256=sha256)
                if sent != uri:
                    staged[name] = sent
        return staged
