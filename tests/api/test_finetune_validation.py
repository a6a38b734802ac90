"""Bad input to POST /finetune-jobs: a 422 naming the problem, and nothing reaches Ray.

``offline_api`` points at a Ray address where nothing listens, so a submission attempt would
answer 503; a 422 with no job recorded proves validation stopped the request first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from detrforge.detector.data import DatasetInfo
from fixtures_cluster import TINY_SPEC, ApiHarness


def _assert_rejected(api: ApiHarness, spec: dict[str, Any]) -> dict[str, Any]:
    response = api.submit(spec)
    assert response.status_code == 422, response.text
    listing = api.client.get("/api/v1/finetune-jobs", headers=api.headers()).json()
    assert listing["total"] == 0
    return dict(response.json())


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"resolution": 130}, "resolution", "use 128 or 160"),
        ({"model_size": "huge"}, "model_size", "nano"),
        ({"epochs": 0}, "epochs", "greater than or equal to 1"),
        ({"batch_size": -1}, "batch_size", "greater than or equal to 1"),
        ({"lr": 0}, "lr", "greater than 0"),
        ({"num_workers": 0}, "num_workers", "greater than or equal to 1"),
        ({"pretrain_weights": "https://x/y.pth"}, "pretrain_weights", "never downloaded"),
        ({"colour": "red"}, "colour", "Extra inputs"),
    ],
)
def test_invalid_spec_is_422(
    offline_api: ApiHarness,
    synth_ds: DatasetInfo,
    changes: dict[str, Any],
    field: str,
    fragment: str,
) -> None:
    body = _assert_rejected(offline_api, {**TINY_SPEC, "dataset": synth_ds.root, **changes})
    assert body["code"] == "INVALID_SPEC"
    assert body["field"] == field
    assert fragment in body["message"]


def test_body_not_an_object_is_422(offline_api: ApiHarness) -> None:
    response = offline_api.client.post(
        "/api/v1/finetune-jobs", json=[1, 2], headers=offline_api.headers()
    )
    assert response.status_code == 422
    assert response.json()["code"] == "INVALID_SPEC"


def test_missing_weights_file_is_named(
    offline_api: ApiHarness, synth_ds: DatasetInfo, tmp_path: Path
) -> None:
    inside = offline_api.submit(
        {**TINY_SPEC, "dataset": synth_ds.root, "pretrain_weights": str(tmp_path / "w.pth")}
    )
    assert inside.status_code == 422
    assert inside.json()["field"] == "pretrain_weights"
    assert inside.json()["message"].endswith("does not exist or is not a file")
    # Outside the data roots nothing tells whether the file is there.
    outside = offline_api.submit(
        {**TINY_SPEC, "dataset": synth_ds.root, "pretrain_weights": "/nope/weights.pth"}
    )
    assert outside.status_code == 422
    assert outside.json()["field"] == "pretrain_weights"
    assert "not under a data root" in outside.json()["message"]


def _broken_copy(src: str, tmp_path: Path) -> Path:
    dst = tmp_path / "broken"
    shutil.copytree(src, dst)
    return dst


def _edit_annotations(root: Path, split: str, edit: Any) -> None:
    path = root / split / "_annotations.coco.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _bbox_negative(d: dict[str, Any]) -> None:
    d["annotations"][0]["bbox"][2] = -4


def _bbox_outside(d: dict[str, Any]) -> None:
    d["annotations"][0]["bbox"] = [120, 120, 40, 40]


def _unknown_image(d: dict[str, Any]) -> None:
    d["annotations"][0]["image_id"] = 99999


def _unknown_category(d: dict[str, Any]) -> None:
    d["annotations"][0]["category_id"] = 77


def _duplicate_image_id(d: dict[str, Any]) -> None:
    d["images"][1]["id"] = d["images"][0]["id"]


def _empty_split(d: dict[str, Any]) -> None:
    d["images"], d["annotations"] = [], []


def _other_categories(d: dict[str, Any]) -> None:
    d["categories"][0]["name"] = "not-a-square"


@pytest.mark.parametrize(
    ("case", "file", "field"),
    [
        ("missing_split", "valid", "split"),
        ("unreadable_json", "train/_annotations.coco.json", "json"),
        ("missing_image", "train/000000.png", "images[0].file_name"),
        ("undecodable_image", "train/000000.png", "images[0].file_name"),
        ("bbox_negative", "train/_annotations.coco.json", "annotations[0].bbox"),
        ("bbox_outside", "train/_annotations.coco.json", "annotations[0].bbox"),
        ("unknown_image", "train/_annotations.coco.json", "annotations[0].image_id"),
        ("unknown_category", "train/_annotations.coco.json", "annotations[0].category_id"),
        ("duplicate_image_id", "train/_annotations.coco.json", "images[1].id"),
        ("empty_split", "valid/_annotations.coco.json", "images"),
        ("categories_differ", "valid/_annotations.coco.json", "categories"),
    ],
)
def test_malformed_dataset_is_422_with_file_and_field(
    offline_api: ApiHarness, synth_ds: DatasetInfo, tmp_path: Path, case: str, file: str, field: str
) -> None:
    root = _broken_copy(synth_ds.root, tmp_path)
    if case == "missing_split":
        shutil.rmtree(root / "valid")
    elif case == "unreadable_json":
        (root / "train" / "_annotations.coco.json").write_text("{not json")
    elif case == "missing_image":
        (root / "train" / "000000.png").unlink()
    elif case == "undecodable_image":
        (root / "train" / "000000.png").write_bytes(b"definitely not a png")
    elif case == "categories_differ":
        _edit_annotations(root, "valid", _other_categories)
    else:
        edits = {
            "bbox_negative": _bbox_negative,
            "bbox_outside": _bbox_outside,
            "unknown_image": _unknown_image,
            "unknown_category": _unknown_category,
            "duplicate_image_id": _duplicate_image_id,
        }
        split = "valid" if case == "empty_split" else "train"
        _edit_annotations(root, split, edits.get(case, _empty_split))
    body = _assert_rejected(offline_api, {**TINY_SPEC, "dataset": str(root)})
    assert body["code"] == "INVALID_DATASET"
    problems = {(p["file"], p["field"]) for p in body["details"]}
    assert (file, field) in problems, body["details"]


def test_dataset_that_does_not_exist(offline_api: ApiHarness, tmp_path: Path) -> None:
    response = offline_api.submit({**TINY_SPEC, "dataset": str(tmp_path / "nothing")})
    assert response.status_code == 422
    assert response.json()["field"] == "dataset"
    assert response.json()["message"] == f"dataset: {tmp_path / 'nothing'} does not exist"


def test_a_segmentation_finetune_needs_masks(
    offline_api: ApiHarness, synth_ds: DatasetInfo
) -> None:
    """Boxes-only data is fine for detection, not for a seg-* size: every object without a mask
    is a problem with its file and field, and nothing reaches Ray."""
    seg = {**TINY_SPEC, "model_size": "seg-nano", "resolution": 96, "dataset": synth_ds.root}
    body = _assert_rejected(offline_api, seg)
    assert body["code"] == "INVALID_DATASET"
    problems = {(p["file"], p["field"]) for p in body["details"]}
    assert ("train/_annotations.coco.json", "annotations[0].segmentation") in problems
    assert all(field.endswith(".segmentation") for _, field in problems), problems


def test_a_detection_size_with_task_segmentation_is_422_on_task(
    offline_api: ApiHarness, synth_ds: DatasetInfo
) -> None:
    body = _assert_rejected(
        offline_api, {**TINY_SPEC, "task": "segmentation", "dataset": synth_ds.root}
    )
    assert (body["code"], body["field"]) == ("INVALID_SPEC", "task")
    assert "choose a segmentation size (seg-nano" in body["message"]
