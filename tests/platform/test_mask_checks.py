"""Datasets with instance masks: every malformed mask named with file and field, the forms rfdetr
reads accepted, real COCO masks passing, and a fingerprint that covers the masks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from detrforge.detector.data import fingerprint_dataset, require_valid_dataset, validate_dataset
from detrforge.detector.mask_checks import FieldProblem, mask_problems, read_segmentation
from detrforge.detector.masks import encode_mask
from detrforge.detector.synthetic import synth_dataset
from detrforge.platform.errors import DatasetProblem, InvalidDatasetError

ANN = "_annotations.coco.json"
TRAIN = f"train/{ANN}"
COCO = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco-val2014-100"
# A box-only synthetic dataset's fingerprint before masks existed (seed 7, 3 classes, 4 + 2 images
# of 64 px, min_box 8): stored fingerprints must keep matching their datasets.
BOX_ONLY_FINGERPRINT = "0a58dafec56a8062d1770a3009415f793b227913b62f3c236b2ef23a024840fc"


@pytest.fixture
def masked(tmp_path: Path) -> Path:
    root = tmp_path / "masked"
    synth_dataset(
        root, seed=5, num_classes=3, train_images=4, valid_images=2, image_size=64, min_box=12,
        masks=True,
    )  # fmt: skip
    return root


def load(root: Path, split: str = "train") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / split / ANN).read_text())
    return data


def save(root: Path, data: dict[str, Any], split: str = "train") -> None:
    (root / split / ANN).write_text(json.dumps(data))


def set_annotation(root: Path, **changes: Any) -> None:
    """Make train annotation 0 a known 20 x 20 square at (10, 10), then apply ``changes``."""
    data = load(root)
    square = {
        "bbox": [10, 10, 20, 20],
        "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]],
        "area": 400,
        "iscrowd": 0,
    }
    data["annotations"][0].update({**square, **changes})
    # Nothing else may sit on that square, or the test would be about overlap.
    data["annotations"] = [data["annotations"][0]] + [
        a for a in data["annotations"][1:] if a["image_id"] != data["annotations"][0]["image_id"]
    ]
    save(root, data)


def only(problems: list[DatasetProblem]) -> DatasetProblem:
    assert len(problems) == 1, problems
    return problems[0]


def square_mask(height: int = 64, width: int = 64) -> np.ndarray[Any, Any]:
    mask = np.zeros((height, width), dtype=bool)
    mask[10:30, 10:30] = True
    return mask


def uncompressed(mask: np.ndarray[Any, Any]) -> dict[str, Any]:
    flat = mask.ravel(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + runs}


def test_synth_masks_dataset_is_valid_and_counts_its_masks(masked: Path) -> None:
    assert validate_dataset(masked, require_masks=True) == []
    info = require_valid_dataset(masked, require_masks=True)
    assert info.num_masks == info.num_annotations
    assert info.num_masks["train"] == len(load(masked)["annotations"]) >= 4
    kinds = {type(a["segmentation"]).__name__ for a in load(masked)["annotations"]}
    assert kinds == {"list", "dict"}  # polygons and RLE both present


def test_box_only_dataset_keeps_its_fingerprint_and_needs_masks_only_on_request(
    tmp_path: Path,
) -> None:
    info = synth_dataset(
        tmp_path / "boxes", seed=7, num_classes=3, train_images=4, valid_images=2, image_size=64,
        min_box=8,
    )  # fmt: skip
    assert info.fingerprint == BOX_ONLY_FINGERPRINT
    assert info.num_masks == {"train": 0, "valid": 0}
    problems = validate_dataset(tmp_path / "boxes", require_masks=True)
    assert len(problems) == sum(info.num_annotations.values())
    assert problems[0]["field"] == "annotations[0].segmentation"
    assert "has no mask" in problems[0]["message"]


def test_fingerprint_changes_with_one_polygon_point(masked: Path) -> None:
    before = fingerprint_dataset(masked)
    data = load(masked)
    polygon = next(a for a in data["annotations"] if isinstance(a["segmentation"], list))
    polygon["segmentation"][0][0] += 1
    save(masked, data)
    assert fingerprint_dataset(masked) != before
    polygon["segmentation"][0][0] -= 1
    save(masked, data)
    assert fingerprint_dataset(masked) == before


def test_fingerprint_changes_with_one_rle_run(masked: Path) -> None:
    before = fingerprint_dataset(masked)
    data = load(masked)
    rle = next(a for a in data["annotations"] if isinstance(a["segmentation"], dict))
    rle["segmentation"] = uncompressed(mask_utils.decode(rle["segmentation"]).astype(bool))
    save(masked, data)
    changed = fingerprint_dataset(masked)
    assert changed != before  # same pixels, other encoding: the file says something else
    rle["segmentation"]["counts"][1] += 1
    rle["segmentation"]["counts"][2] -= 1
    save(masked, data)
    assert fingerprint_dataset(masked) not in (before, changed)


BAD_MASKS: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "two_points",
        {"segmentation": [[10, 10, 30, 10, 30, 30, 10, 30], [10, 10, 30, 30]]},
        "annotations[0].segmentation[1]",
        "polygon has 2 point(s); a polygon needs at least 3",
    ),
    (
        "odd_coordinates",
        {"segmentation": [[10, 10, 30, 10, 30, 30, 10]]},
        "annotations[0].segmentation[0]",
        "odd number of coordinates (7)",
    ),
    (
        "flat_polygon",
        {"segmentation": [10, 10, 30, 10, 30, 30]},
        "annotations[0].segmentation",
        "wrap it in its own brackets: [[x1, y1, x2, y2, ...]]",
    ),
    (
        "point_outside",
        {"segmentation": [[10, 10, 30, 10, 30, 90, 10, 30]]},
        "annotations[0].segmentation[0]",
        "polygon point (30, 90) lies outside the 64x64 image",
    ),
    (
        "rle_size",
        {"segmentation": encode_mask(square_mask(height=32))},
        "annotations[0].segmentation.size",
        "RLE size is [32, 64] (height, width) but the image is 64x64",
    ),
    (
        "rle_counts_short",
        {"segmentation": {"size": [64, 64], "counts": [100, 400, 100]}},
        "annotations[0].segmentation.counts",
        "RLE counts cover 600 pixels but size [64, 64] has 4096",
    ),
    (
        "rle_counts_garbage",
        {"segmentation": {"size": [64, 64], "counts": "P1 ~!"}},
        "annotations[0].segmentation.counts",
        "compressed RLE counts hold ' ', not a run-length character",
    ),
    (
        "rle_counts_truncated",
        {"segmentation": {"size": [64, 64], "counts": encode_mask(square_mask())["counts"] + "o"}},
        "annotations[0].segmentation.counts",
        "end in the middle of a run",
    ),
    (
        "rle_without_counts",
        {"segmentation": {"size": [64, 64]}},
        "annotations[0].segmentation",
        "RLE segmentation is missing counts",
    ),
    (
        "rle_empty",
        {"segmentation": encode_mask(np.zeros((64, 64), dtype=bool))},
        "annotations[0].segmentation",
        "the mask covers no pixel of the image",
    ),
    (
        "not_a_mask",
        {"segmentation": "square"},
        "annotations[0].segmentation",
        "segmentation must be a list of polygons",
    ),
    (
        "bbox_elsewhere",
        {"bbox": [25, 25, 20, 20]},
        "annotations[0].bbox",
        "bbox [25, 25, 20, 20] disagrees with its mask, whose extent is [10.0, 10.0, 20.0, 20.0] "
        "(IoU 0.05, below 0.5); set bbox to the mask's extent, or fix the mask",
    ),
    (
        "bbox_of_rle_elsewhere",
        {"bbox": [10, 10, 20, 20], "segmentation": encode_mask(np.roll(square_mask(), 30, 1))},
        "annotations[0].bbox",
        "whose extent is [40.0, 10.0, 20.0, 20.0] (IoU 0.00, below 0.5)",
    ),
    (
        "object_without_mask",
        {"segmentation": []},
        "annotations[0].segmentation",
        "the object has no mask; a segmentation model needs one for every object",
    ),
]


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [case[1:] for case in BAD_MASKS],
    ids=[case[0] for case in BAD_MASKS],
)
def test_each_malformed_mask_is_one_problem_naming_file_and_field(
    masked: Path, changes: dict[str, Any], field: str, fragment: str
) -> None:
    set_annotation(masked, **changes)
    problem = only(validate_dataset(masked, require_masks=True))
    assert (problem["file"], problem["field"]) == (TRAIN, field)
    assert fragment in problem["message"]
    with pytest.raises(InvalidDatasetError) as caught:
        require_valid_dataset(masked, require_masks=True)
    assert caught.value.field == "dataset"
    assert [(d["file"], d["field"]) for d in caught.value.details] == [(TRAIN, field)]


@pytest.mark.parametrize(
    "changes",
    [
        {"segmentation": [[10, 10, 30, 10, 30, 30, 10, 30], [11, 11, 12, 11, 12, 12]]},
        {"segmentation": [[-1.0, 10, 30, 10, 30, 30, 10, 30]], "bbox": [-1.0, 10, 31, 20]},
        {"segmentation": encode_mask(square_mask())},
        {"segmentation": uncompressed(square_mask()), "iscrowd": 1},
        {"segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]], "iscrowd": 1},
        {"segmentation": [], "iscrowd": 1},
        {"bbox": [10.4, 10.4, 19.2, 19.2]},
    ],
    ids=["two_parts", "within_tolerance", "rle", "crowd_rle", "crowd_polygon", "crowd_no_mask",
         "rounded_bbox"],
)  # fmt: skip
def test_forms_rfdetr_reads_are_accepted(masked: Path, changes: dict[str, Any]) -> None:
    set_annotation(masked, **changes)
    assert validate_dataset(masked, require_masks=True) == []


def test_masks_on_an_image_of_the_wrong_size_wait_for_its_fix(masked: Path) -> None:
    # The image's own size problem is reported; its masks are not checked against a wrong grid.
    data = load(masked)
    data["images"][0]["width"] = 32
    save(masked, data)
    set_annotation(masked, segmentation=encode_mask(square_mask()))
    problem = only(validate_dataset(masked))
    assert (problem["file"], problem["field"]) == ("train/000000.png", "images[0].width")


def test_every_coco_val2014_mask_passes() -> None:
    # Real COCO: polygons of many parts, crowd regions as uncompressed RLE, objects 4 px wide.
    gt = json.loads((COCO / "instances_val2014_100.json").read_text())
    sizes = {img["id"]: (img["width"], img["height"]) for img in gt["images"]}
    problems: list[FieldProblem] = []
    kinds: dict[str, int] = {}
    for index, ann in enumerate(gt["annotations"]):
        where = f"annotations[{index}]"
        mask = read_segmentation(ann["segmentation"], where, sizes[ann["image_id"]], problems)
        assert mask is not None, problems
        problems += mask_problems(mask, where, ann["bbox"])
        kinds[mask.kind] = kinds.get(mask.kind, 0) + 1
    assert problems == []
    assert kinds == {"polygons": 830, "rle": 9}
