"""Job intake with an ``s3://`` artifact root (moto's server): a local dataset is uploaded once,
content-addressed by its fingerprint, and the job is sent its URI; with a ``file://`` root, or a
dataset already on S3, the URI is sent as given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from detrforge.control.intake import Intake
from detrforge.detector.data import DatasetInfo
from detrforge.detector.synthetic import synth_dataset
from detrforge.platform.errors import IntegrityError, InvalidSpecError
from detrforge.platform.sources import SourcePolicy
from detrforge.platform.storage import open_store
from fixtures_s3 import S3Server


def _intake(tmp_path: Path, artifact_root: str, bucket: str = "") -> Intake:
    sources = SourcePolicy.build(
        roots=[tmp_path], s3_buckets=[bucket] if bucket else [], artifact_root=artifact_root
    )
    return Intake(sources=sources, artifact_root=artifact_root, cache_dir=tmp_path / "cache")


def _dataset(where: Path) -> DatasetInfo:
    return synth_dataset(where, seed=3, train_images=3, valid_images=2, image_size=64)


def _versions(server: S3Server, bucket: str) -> dict[str, int]:
    """How many times each key of ``bucket`` was written (the bucket keeps every version)."""
    listing: dict[str, Any] = server.client().list_object_versions(Bucket=bucket)
    counts: dict[str, int] = {}
    for version in listing.get("Versions", []):
        counts[version["Key"]] = counts.get(version["Key"], 0) + 1
    return counts


def test_a_local_dataset_is_uploaded_once_and_sent_by_its_s3_uri(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    bucket = s3_bucket.removeprefix("s3://")
    s3_server.client().put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    intake = _intake(tmp_path, f"{s3_bucket}/df")
    local = _dataset(tmp_path / "ds")
    info = intake.dataset(local.root)
    assert info.fingerprint == local.fingerprint

    uri = intake.for_cluster(local.root, info)
    assert uri == f"{s3_bucket}/df/datasets/{info.fingerprint}"
    written = _versions(s3_server, bucket)
    assert written and set(written.values()) == {1}
    assert all(key.startswith(f"df/datasets/{info.fingerprint}/") for key in written)

    # A second submission of the same data, even from another copy of it, uploads nothing.
    copy = _dataset(tmp_path / "copy")
    assert intake.for_cluster(copy.root, intake.dataset(copy.root)) == uri
    assert _versions(s3_server, bucket) == written
    # What a job fetches there is the dataset that was validated.
    assert intake.dataset(uri).fingerprint == info.fingerprint


def test_a_dataset_that_changed_since_validation_is_not_kept(
    s3_bucket: str, tmp_path: Path
) -> None:
    intake = _intake(tmp_path, s3_bucket)
    local = _dataset(tmp_path / "ds")
    info = intake.dataset(local.root)
    image = next((Path(local.root) / "train").glob("*.png"))
    image.write_bytes(image.read_bytes() + b"\0")
    with pytest.raises(InvalidSpecError, match="changed while it was uploaded") as caught:
        intake.for_cluster(local.root, info)
    assert caught.value.field == "dataset"
    store = open_store(s3_bucket)
    assert store.list(f"{s3_bucket}/datasets/{info.fingerprint}") == []


def test_a_dataset_on_s3_is_sent_as_given(s3_bucket: str, tmp_path: Path) -> None:
    intake = _intake(tmp_path, f"{s3_bucket}/df", bucket=s3_bucket.removeprefix("s3://"))
    local = _dataset(tmp_path / "ds")
    uploaded = f"{s3_bucket}/mine/ds"
    open_store(uploaded).put_dir(Path(local.root), "")
    info = intake.dataset(uploaded)
    assert intake.for_cluster(uploaded, info) == uploaded
    assert open_store(s3_bucket).list(f"{s3_bucket}/df/datasets") == []


def test_a_file_root_leaves_the_path_alone(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    intake = _intake(tmp_path, root.as_uri())
    local = _dataset(tmp_path / "ds")
    assert intake.for_cluster(local.root, intake.dataset(local.root)) == local.root
    assert not (root / "datasets").exists()


def _file(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_local_checkpoints_and_weights_go_to_the_store_by_their_sha256(
    s3_bucket: str, tmp_path: Path
) -> None:
    """A spec's local files (checkpoint, the paired baseline's, pretrain weights) are sent as
    their content-addressed copies; the row keeps the spec as asked."""
    import hashlib

    from detrforge.detector.specs import BenchmarkSpec, FinetuneSpec

    intake = _intake(tmp_path, f"{s3_bucket}/df")
    candidate = _file(tmp_path / "ckpt" / "candidate.pth", b"candidate bytes")
    baseline = _file(tmp_path / "ckpt" / "baseline.pth", b"baseline bytes")
    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (candidate, baseline)}
    spec = BenchmarkSpec.model_validate(
        {
            "checkpoint": str(candidate),
            "checkpoint_sha256": sha[candidate],
            "model_size": "nano",
            "resolution": 128,
            "target": "cpu",
            "target_resources": {"CPU": 1},
            "baseline": {"checkpoint": str(baseline), "model_size": "nano", "resolution": 128},
        }
    )
    sent = intake.spec_for_cluster(spec, None)
    assert sent.checkpoint == f"{s3_bucket}/df/blobs/sha256/{sha[candidate]}"
    assert sent.baseline is not None
    assert sent.baseline.checkpoint == f"{s3_bucket}/df/blobs/sha256/{sha[baseline]}"
    assert spec.checkpoint == str(candidate)  # the spec asked is unchanged
    store = open_store(s3_bucket)
    assert store.sha256(sent.checkpoint) == sha[candidate]

    dataset = _dataset(tmp_path / "ds")
    finetune = FinetuneSpec.model_validate(
        {"dataset": dataset.root, "pretrain_weights": str(baseline), "model_size": "nano"}
    )
    sent_ft = intake.spec_for_cluster(finetune, intake.dataset(dataset.root))
    assert sent_ft.pretrain_weights == sent.baseline.checkpoint  # the same bytes, one blob
    assert sent_ft.dataset == f"{s3_bucket}/df/datasets/{dataset.fingerprint}"


def test_a_checkpoint_that_changed_since_it_was_checked_is_refused(
    s3_bucket: str, tmp_path: Path
) -> None:
    intake = _intake(tmp_path, f"{s3_bucket}/df")
    path = _file(tmp_path / "ckpt.pth", b"new bytes")
    with pytest.raises(IntegrityError, match="changed since it was checked") as caught:
        intake.file_for_cluster(str(path), field="checkpoint", sha256="0" * 64)
    assert caught.value.field == "checkpoint"
    assert open_store(s3_bucket).list(f"{s3_bucket}/df/blobs") == []


def test_a_file_root_sends_local_files_as_given(tmp_path: Path) -> None:
    root = tmp_path / "artifacts"
    intake = _intake(tmp_path, root.as_uri())
    path = _file(tmp_path / "ckpt.pth", b"bytes")
    assert intake.file_for_cluster(str(path), field="checkpoint") == str(path)
    assert not root.exists()
