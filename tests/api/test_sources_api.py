"""Every request field that names a server file or URI obeys the source policy: outside the data
roots and allowed buckets it is a 422 naming the field that reads the same whether the path
exists; a registered checkpoint must be a real RF-DETR checkpoint, and a refusal never shows its
hash or size."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from detrforge.detector.data import DatasetInfo
from detrforge.detector.synthetic import synth_dataset
from detrforge.registry.entities import Role
from fixtures_cluster import TINY_SPEC, ApiHarness, free_port, harness, make_settings
from fixtures_s3 import S3Server

MODEL = "guarded"
TARGET = {"name": "cpu-1t", "resources": {"CPU": 1}, "backend": "torch", "num_threads": 1}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiHarness]:
    """One offline API (nothing listens at its Ray address) for every refusal in this module."""
    home = tmp_path_factory.mktemp("sources-api") / "home"
    settings = make_settings(
        home,
        database_url=f"sqlite:///{home.parent / 'registry.db'}",
        ray_address=f"http://127.0.0.1:{free_port()}",
        artifact_root=None,
    )
    for setup in harness(settings):
        setup.client.post("/api/v1/models", json={"name": MODEL}, headers=setup.headers())
        setup.client.post("/api/v1/hardware-targets", json=TARGET, headers=setup.headers())
        yield setup


Request = Callable[[str, Path, Path], tuple[str, str, dict[str, Any]]]

# field -> (method, path, body) with the bad source in that field; ``ds`` is a valid dataset and
# ``ckpt`` a valid checkpoint for the other fields.
REQUESTS: dict[str, Request] = {
    "finetune.dataset": lambda bad, ds, ckpt: (
        "POST",
        "/finetune-jobs",
        {**TINY_SPEC, "dataset": bad},
    ),
    "finetune.pretrain_weights": lambda bad, ds, ckpt: (
        "POST",
        "/finetune-jobs",
        {**TINY_SPEC, "dataset": str(ds), "pretrain_weights": bad},
    ),
    "evaluation.checkpoint": lambda bad, ds, ckpt: (
        "POST",
        "/evaluations",
        {"checkpoint": bad, "dataset": str(ds), "resolution": 128},
    ),
    "evaluation.dataset": lambda bad, ds, ckpt: (
        "POST",
        "/evaluations",
        {"checkpoint": str(ckpt), "dataset": bad, "resolution": 128},
    ),
    "benchmark.checkpoint": lambda bad, ds, ckpt: (
        "POST",
        "/benchmarks",
        {"checkpoint": bad, "resolution": 128, "target": "cpu-1t"},
    ),
    "benchmark.dataset": lambda bad, ds, ckpt: (
        "POST",
        "/benchmarks",
        {"checkpoint": str(ckpt), "resolution": 128, "target": "cpu-1t", "dataset": bad},
    ),
    "version.checkpoint": lambda bad, ds, ckpt: (
        "POST",
        f"/models/{MODEL}/versions",
        {"checkpoint": bad, "model_size": "nano", "resolution": 128},
    ),
    "policy.eval.dataset": lambda bad, ds, ckpt: (
        "PUT",
        f"/models/{MODEL}/policy",
        {"eval": {"dataset": bad}, "ap_floor": 0.1},
    ),
    "sweep.dataset": lambda bad, ds, ckpt: (
        "POST",
        "/sweeps",
        {"dataset": bad, "space": {"model_size": ["nano"]}, "target": "cpu-1t"},
    ),
    "sweep.base.pretrain_weights": lambda bad, ds, ckpt: (
        "POST",
        "/sweeps",
        {"dataset": str(ds), "base": {"pretrain_weights": bad}, "target": "cpu-1t"},
    ),
    "sweep.space.pretrain_weights": lambda bad, ds, ckpt: (
        "POST",
        "/sweeps",
        {
            "dataset": str(ds),
            "space": {"model_size": ["nano"], "pretrain_weights": [str(ckpt), bad]},
            "target": "cpu-1t",
        },
    ),
}
FIELD = {
    "finetune.dataset": "dataset",
    "finetune.pretrain_weights": "pretrain_weights",
    "evaluation.checkpoint": "checkpoint",
    "evaluation.dataset": "dataset",
    "benchmark.checkpoint": "checkpoint",
    "benchmark.dataset": "dataset",
    "version.checkpoint": "checkpoint",
    "policy.eval.dataset": "eval.dataset",
    "sweep.dataset": "dataset",
    "sweep.base.pretrain_weights": "base.pretrain_weights",
    "sweep.space.pretrain_weights": "space.pretrain_weights",
}


def _send(api: ApiHarness, case: str, bad: str, ds: Path, ckpt: Path) -> Any:
    method, path, body = REQUESTS[case](bad, ds, ckpt)
    return api.client.request(method, f"/api/v1{path}", json=body, headers=api.headers())


def _jobs_recorded(api: ApiHarness) -> int:
    total = 0
    for listing in ("/finetune-jobs", "/evaluations", "/benchmarks", "/sweeps"):
        response = api.client.get(f"/api/v1{listing}", headers=api.headers())
        total += int(response.json()["total"])
    return total


@pytest.mark.parametrize("case", sorted(REQUESTS))
def test_sources_outside_the_roots_are_refused_alike(
    api: ApiHarness,
    case: str,
    synth_ds: DatasetInfo,
    nano_checkpoint: Path,
    tmp_path: Path,
) -> None:
    field = FIELD[case]
    ds = Path(synth_ds.root)
    (tmp_path / "etc").symlink_to("/etc")
    (tmp_path / "hostname.pth").symlink_to("/etc/hostname")
    bad_sources = {
        "existing": "/etc/hostname",
        "missing": "/etc/no-such-file-5e2a",
        "existing_folder": "/etc",
        "proc": "/proc/self/environ",
        "dot_dot": f"{tmp_path}/../../../../../../../etc/hostname",
        "file_uri": "file:///etc/hostname",
        "file_uri_missing": "file:///etc/no-such-file-5e2a",
        "symlinked_folder": str(tmp_path / "etc" / "hostname"),
        "symlinked_file": str(tmp_path / "hostname.pth"),
    }
    messages = {}
    for name, bad in bad_sources.items():
        response = _send(api, case, bad, ds, nano_checkpoint)
        assert response.status_code == 422, (name, response.text)
        body = response.json()
        assert (body["code"], body["field"]) == ("INVALID_SPEC", field), (name, body)
        messages[name] = body["message"].replace(bad, "<source>")
    # Existing or missing, file or folder, reached directly or through a link: one answer.
    assert len(set(messages.values())) == 1, messages
    assert "not under a data root" in messages["existing"]
    for bad in (
        "http://169.254.169.254/latest/meta-data/",
        "https://example.com/model.pth",
        "169.254.169.254/latest/meta-data",
        "s3://someone-elses-bucket/data",
        "relative/path",
    ):
        response = _send(api, case, bad, ds, nano_checkpoint)
        assert response.status_code == 422, (bad, response.text)
        # A sweep's base is validated as a whole first: http(s) weights are refused as "base".
        assert response.json()["field"] in (field, field.split(".")[0]), (bad, response.json())
    assert _jobs_recorded(api) == 0


@pytest.mark.parametrize("case", ["finetune.pretrain_weights", "evaluation.checkpoint"])
def test_missing_file_inside_a_root_is_named_against_its_field(
    api: ApiHarness, case: str, synth_ds: DatasetInfo, nano_checkpoint: Path, tmp_path: Path
) -> None:
    for missing in (str(tmp_path / "none.pth"), (tmp_path / "none.pth").as_uri()):
        response = _send(api, case, missing, Path(synth_ds.root), nano_checkpoint)
        assert response.status_code == 422, response.text
        assert response.json()["field"] == FIELD[case]
        assert response.json()["message"].endswith("does not exist or is not a file")


def _not_checkpoints(folder: Path) -> dict[str, Path]:
    import torch

    files = {
        "shadow": b"root:$6$abcdefgh$0123456789abcdef:19000:0:99999:7:::\n",
        "admin_key": b"dfk_" + os.urandom(20).hex().encode(),
        "environ": b"HOME=/root\x00AWS_SECRET_ACCESS_KEY=abc\x00",
        "random": os.urandom(10_000),
    }
    out = {}
    for name, content in files.items():
        out[name] = folder / name
        out[name].write_bytes(content)
    out["torch_tensor"] = folder / "tensor.pth"
    torch.save({"weights": torch.zeros(4)}, out["torch_tensor"])
    return out


def test_files_that_are_not_checkpoints_are_refused_without_hash_or_size(
    api: ApiHarness, tmp_path: Path
) -> None:
    path = f"/models/{MODEL}/versions"
    for name, file in _not_checkpoints(tmp_path).items():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        for extra in ({}, {"checkpoint_sha256": "0" * 64}, {"checkpoint_sha256": digest}):
            body = {"checkpoint": str(file), "model_size": "nano", "resolution": 128, **extra}
            response = api.client.post(f"/api/v1{path}", json=body, headers=api.headers())
            assert response.status_code == 422, (name, response.text)
            error = response.json()
            assert error["field"] == "checkpoint"
            assert error["message"].startswith("checkpoint: not an RF-DETR checkpoint")
            assert digest not in response.text and "0" * 64 not in response.text
            assert str(file.stat().st_size) not in response.text
    versions = api.client.get(f"/api/v1{path}", headers=api.headers()).json()["items"]
    assert versions == []
    blobs = Path(api.settings.resolved_home()) / "artifacts" / "blobs"
    assert not blobs.exists() or not any(blobs.rglob("*"))


def test_admin_key_and_registry_inside_the_home_are_not_checkpoints(
    tmp_path: Path, database_url: str
) -> None:
    """With the default roots (the home is one), the admin key still cannot be registered."""
    home = tmp_path / "home"
    settings = make_settings(
        home,
        database_url=database_url,
        ray_address=f"http://127.0.0.1:{free_port()}",
        artifact_root=None,
    ).model_copy(update={"data_roots": ()})
    for api in harness(settings):
        api.client.post("/api/v1/models", json={"name": MODEL}, headers=api.headers())
        home_key = home / "admin.key"
        home_key.write_text("dfk_secret")
        for source in (str(home_key), str(home / "mlflow.db"), "/proc/self/environ"):
            body = {"checkpoint": source, "model_size": "nano", "resolution": 128}
            response = api.client.post(
                f"/api/v1/models/{MODEL}/versions", json=body, headers=api.headers(Role.operator)
            )
            assert response.status_code == 422, (source, response.text)
            assert response.json()["field"] == "checkpoint"
            if source.startswith(str(home)):
                assert "not an RF-DETR checkpoint" in response.json()["message"]
            else:
                assert "not under a data root" in response.json()["message"]


def test_checkpoint_size_cap(tmp_path: Path, database_url: str, nano_checkpoint: Path) -> None:
    size = nano_checkpoint.stat().st_size
    settings = make_settings(
        tmp_path / "home",
        database_url=database_url,
        ray_address=f"http://127.0.0.1:{free_port()}",
        artifact_root=None,
    ).model_copy(update={"max_checkpoint_bytes": size - 1})
    for api in harness(settings):
        api.client.post("/api/v1/models", json={"name": MODEL}, headers=api.headers())
        body = {"checkpoint": str(nano_checkpoint), "model_size": "nano", "resolution": 128}
        response = api.client.post(
            f"/api/v1/models/{MODEL}/versions", json=body, headers=api.headers()
        )
        assert response.status_code == 422, response.text
        assert response.json()["field"] == "checkpoint"
        assert "max_checkpoint_bytes" in response.json()["message"]
        assert str(size) not in response.text


def _registrar(api: ApiHarness) -> Callable[[str], Any]:
    def register(uri: str) -> Any:
        body = {"checkpoint": uri, "model_size": "nano", "resolution": 128}
        return api.client.post(f"/api/v1/models/{MODEL}/versions", json=body, headers=api.headers())

    return register


def test_s3_checkpoints_only_from_allowed_buckets(
    s3_server: S3Server, tmp_path: Path, nano_checkpoint: Path, database_url: str
) -> None:
    client = s3_server.client()
    suffix = uuid.uuid4().hex[:8]
    allowed, other = f"detrforge-allowed-{suffix}", f"detrforge-other-{suffix}"
    for bucket in (allowed, other):
        client.create_bucket(Bucket=bucket)
        client.upload_file(str(nano_checkpoint), bucket, "models/nano.pth")
    settings = make_settings(
        tmp_path / "home",
        database_url=database_url,
        ray_address=f"http://127.0.0.1:{free_port()}",
        artifact_root=None,
    ).model_copy(update={"s3_buckets": (allowed,)})
    for api in harness(settings):
        api.client.post("/api/v1/models", json={"name": MODEL}, headers=api.headers())

        register = _registrar(api)
        existing = register(f"s3://{other}/models/nano.pth")
        missing = register(f"s3://{other}/models/none.pth")
        assert existing.status_code == missing.status_code == 422
        assert existing.json()["message"].replace("nano.pth", "x") == missing.json()[
            "message"
        ].replace("none.pth", "x")
        assert f"allowed: {allowed}" in existing.json()["message"]
        absent = register(f"s3://{allowed}/models/none.pth")
        assert absent.status_code == 422
        assert absent.json()["message"].endswith("does not exist or is not a file")
        version = register(f"s3://{allowed}/models/nano.pth")
        assert version.status_code == 201, version.text
        sha256 = hashlib.sha256(nano_checkpoint.read_bytes()).hexdigest()
        root = settings.resolved_artifact_root()
        assert version.json()["checkpoint_uri"] == f"{root}/blobs/sha256/{sha256}"
        assert version.json()["class_names"] == ["square", "circle"]


def _break_masks(annotations: dict[str, Any]) -> set[str]:
    """Three malformed masks in one file; the fields they should be reported under."""
    polygons = [a for a in annotations["annotations"] if isinstance(a["segmentation"], list)]
    rles = [a for a in annotations["annotations"] if isinstance(a["segmentation"], dict)]
    polygons[0]["segmentation"][0].pop()  # an odd coordinate count
    rles[0]["segmentation"] = {"size": [64, 128], "counts": [64 * 128]}  # not the image's size
    rles[1]["segmentation"]["counts"] = "P1o"  # stops in the middle of a run
    index = {id(a): i for i, a in enumerate(annotations["annotations"])}
    return {
        f"annotations[{index[id(polygons[0])]}].segmentation[0]",
        f"annotations[{index[id(rles[0])]}].segmentation.size",
        f"annotations[{index[id(rles[1])]}].segmentation.counts",
    }


def test_malformed_masks_are_422_naming_file_and_field(api: ApiHarness, tmp_path: Path) -> None:
    root = tmp_path / "masked"
    synth_dataset(root, seed=3, num_classes=2, train_images=6, valid_images=2, masks=True)
    annotations_file = root / "train" / "_annotations.coco.json"
    annotations = json.loads(annotations_file.read_text())
    fields = _break_masks(annotations)
    annotations_file.write_text(json.dumps(annotations))
    requests = [
        ("POST", "/finetune-jobs", {**TINY_SPEC, "dataset": str(root)}),
        ("PUT", f"/models/{MODEL}/policy", {"eval": {"dataset": str(root)}, "ap_floor": 0.1}),
    ]
    for method, path, body in requests:
        response = api.client.request(method, f"/api/v1{path}", json=body, headers=api.headers())
        assert response.status_code == 422, response.text
        refusal = response.json()
        assert (refusal["code"], refusal["field"]) == ("INVALID_DATASET", "dataset")
        assert {(p["file"], p["field"]) for p in refusal["details"]} == {
            ("train/_annotations.coco.json", field) for field in fields
        }
        assert refusal["message"].startswith(f"dataset at {root} has 3 problem(s)")
    assert _jobs_recorded(api) == 0
