"""Masks in COCO form (detrforge.detector.masks) and ``synth --masks``: exact masks of the drawn
shapes, the same images as without masks, and read by rfdetr's own dataset builder."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from detrforge import cli
from detrforge.detector.data import validate_dataset
from detrforge.detector.masks import (
    encode_mask,
    mask_outline,
    mask_predictions_to_coco,
    rle_counts,
)
from detrforge.detector.synthetic import synth_dataset
from detrforge.platform.errors import InvalidSpecError

ANN = "_annotations.coco.json"
SIZE = 96
SYNTH: dict[str, Any] = {
    "seed": 4,
    "num_classes": 4,
    "train_images": 6,
    "valid_images": 2,
    "image_size": SIZE,
    "min_box": 10,
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same synthetic set without and with masks."""
    root = tmp_path_factory.mktemp("synth-masks")
    synth_dataset(root / "boxes", **SYNTH)
    synth_dataset(root / "masks", **SYNTH, masks=True)
    return root / "boxes", root / "masks"


def load(root: Path, split: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / split / ANN).read_text())
    return data


def rasterise(segmentation: Any, height: int, width: int) -> np.ndarray[Any, Any]:
    """What pycocotools (and so rfdetr) makes of an annotation's mask."""
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


# --- synth --masks ------------------------------------------------------------------------------


def test_masks_are_the_drawn_pixels(pair: tuple[Path, Path]) -> None:
    _, root = pair
    palette = {}
    worst = 1.0
    kinds = set()
    for split in ("train", "valid"):
        data = load(root, split)
        images = {img["id"]: img for img in data["images"]}
        for ann in data["annotations"]:
            image = images[ann["image_id"]]
            pixels = np.asarray(Image.open(root / split / image["file_name"]).convert("RGB"))
            x, y, w, h = ann["bbox"]
            # Shapes lie apart and backgrounds are dark, so the shape's colour inside its box is
            # exactly the pixels it painted.
            colour = palette.setdefault(ann["category_id"], pixels[y + h // 2, x + w // 2])
            drawn = np.zeros(pixels.shape[:2], dtype=bool)
            drawn[y : y + h, x : x + w] = (pixels[y : y + h, x : x + w] == colour).all(axis=2)
            mask = rasterise(ann["segmentation"], image["height"], image["width"])
            iou = (mask & drawn).sum() / (mask | drawn).sum()
            worst = min(worst, float(iou))
            assert ann["area"] == int(drawn.sum())
            kinds.add((ann["category_id"], type(ann["segmentation"]).__name__))
    assert worst > 0.99
    assert worst == 1.0  # by construction: pixel-edge polygons and RLE of the painted pixels
    # Squares (1), triangles (3) and the fourth class (a square) are polygons, circles (2) RLE.
    assert kinds == {(1, "list"), (2, "dict"), (3, "list"), (4, "list")}


def test_masks_change_nothing_else(pair: tuple[Path, Path]) -> None:
    boxes, masks = pair
    for split in ("train", "valid"):
        plain, masked = load(boxes, split), load(masks, split)
        assert plain["images"] == masked["images"]
        for a, b in zip(plain["annotations"], masked["annotations"], strict=True):
            assert {k: v for k, v in a.items() if k not in ("segmentation", "area")} == {
                k: v for k, v in b.items() if k not in ("segmentation", "area")
            }
            assert a["segmentation"] == [] and a["area"] == a["bbox"][2] * a["bbox"][3]
        for png in sorted((boxes / split).glob("*.png")):
            assert png.read_bytes() == (masks / split / png.name).read_bytes()


def test_masked_set_is_deterministic(pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, masks = pair
    again = synth_dataset(tmp_path / "again", **SYNTH, masks=True)
    assert (tmp_path / "again" / "train" / ANN).read_bytes() == (masks / "train" / ANN).read_bytes()
    assert again.num_masks == again.num_annotations == {"train": 13, "valid": 6}


def test_rfdetr_reads_the_masks_as_drawn(pair: tuple[Path, Path]) -> None:
    from rfdetr.datasets.coco import CocoDetection, build_roboflow_from_coco

    _, root = pair
    data = load(root, "train")
    raw = CocoDetection(
        root / "train", root / "train" / ANN, transforms=None, include_masks=True,
        remap_category_ids=True,
    )  # fmt: skip
    for index, image_id in enumerate(raw.ids):
        _, target = raw[index]
        expected = [
            rasterise(a["segmentation"], SIZE, SIZE)
            for a in data["annotations"]
            if a["image_id"] == image_id
        ]
        assert target["masks"].shape == (len(expected), SIZE, SIZE)
        pairs = zip(target["masks"], expected, strict=True)
        assert all(np.array_equal(m.numpy(), e) for m, e in pairs)
    # The builder a Seg Nano fine-tune uses (patch 12 x 1 window), train and val pipelines.
    args = SimpleNamespace(
        dataset_dir=str(root), square_resize_div_64=True, segmentation_head=True,
        multi_scale=False, expanded_scales=False, patch_size=12, num_windows=1,
    )  # fmt: skip
    for split in ("train", "val"):
        # The train pipeline's crops and flips draw from these RNGs: seeded, every run (and
        # every xdist worker) sees the same augmented samples.
        random.seed(0)
        np.random.seed(0)
        torch.manual_seed(0)
        dataset = build_roboflow_from_coco(split, args, SIZE)
        for index in range(len(dataset)):
            image, target = dataset[index]
            assert target["masks"].dtype == torch.bool
            assert target["masks"].shape == (len(target["boxes"]), *image.shape[1:])
            assert (target["masks"].flatten(1).sum(1) > 0).all()


def test_cli_synth_masks_then_validate(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    runner = CliRunner()
    made = runner.invoke(
        cli.app, ["data", "synth", "--out", str(out), "--train", "2", "--valid", "1", "--masks"]
    )
    assert made.exit_code == 0, made.output
    assert "masks {'train': " in made.stdout
    checked = runner.invoke(cli.app, ["data", "validate", str(out), "--masks", "--json"])
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.stdout)
    assert report["valid"] is True and report["masks"]["valid"] >= 1
    plain = tmp_path / "plain"
    made = runner.invoke(cli.app, ["data", "synth", "--out", str(plain), "--train", "2"])
    assert made.exit_code == 0, made.output
    refused = runner.invoke(cli.app, ["data", "validate", str(plain), "--masks"])
    assert refused.exit_code == 1
    assert "train/_annotations.coco.json: annotations[0].segmentation: the object has no mask" in (
        refused.stdout
    )
    assert validate_dataset(plain) == []


# --- RLE and outlines ---------------------------------------------------------------------------


def test_rle_counts_match_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = (int(v) for v in rng.integers(1, 40, size=2))
        mask = rng.random((height, width)) < rng.random()
        encoded = encode_mask(mask)
        runs = rle_counts(encoded["counts"])
        assert isinstance(runs, list) and sum(runs) == height * width
        assert runs[1::2] and sum(runs[1::2]) == int(mask.sum()) or not mask.any()
        again = mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)
        assert np.array_equal(mask_utils.decode(again).astype(bool), mask)


@pytest.mark.parametrize(
    ("counts", "fragment"),
    [
        ("P1\x7f", "not a run-length character"),
        ("P1\u00e9", "hold 'é', not a run-length character"),
        (b"P1\xff", "not a run-length character"),
        ("P1o", "end in the middle of a run"),
        ("ooooooo0", "a run too long"),
        ("@", "negative or oversized run"),
        ([3, -1], "integers from 0 to 2**32 - 1"),
        ([3, True], "a list of integers"),
        (17, "must be a string (compressed) or a list of integers"),
    ],
)
def test_rle_counts_say_what_is_wrong(counts: Any, fragment: str) -> None:
    result = rle_counts(counts)
    assert isinstance(result, str) and fragment in result


def test_mask_outline_traces_pixel_edges() -> None:
    mask = np.zeros((6, 7), dtype=bool)
    mask[1:5, 2:6] = True
    assert mask_outline(mask) == [6.0, 1.0, 6.0, 5.0, 2.0, 5.0, 2.0, 1.0]
    disc = np.hypot(*np.mgrid[-8:9, -8:9]) <= 7.5
    outline = mask_outline(disc)
    assert np.array_equal(rasterise([outline], 17, 17), disc)
    with pytest.raises(ValueError, match="gap"):
        mask_outline(np.array([[1, 0, 1]], dtype=bool))


# --- model masks -> COCO results ----------------------------------------------------------------


def test_mask_predictions_to_coco_encodes_maps_and_drops() -> None:
    masks = torch.zeros(3, 1, 8, 10, dtype=torch.bool)
    masks[0, 0, 1:3, 2:5] = True
    masks[2, 0, 4:8, 0:10] = True
    boxes = torch.tensor([[2.0, 1.0, 5.0, 3.0], [0, 0, 1, 1], [0, 4, 10, 8]])
    out = mask_predictions_to_coco(
        7, masks, torch.tensor([0.9, 0.8, 0.25]), torch.tensor([0, 5, 1]), {0: 3, 1: 4},
        image_size=(8, 10), boxes_xyxy=boxes,
    )  # fmt: skip
    assert [(r["image_id"], r["category_id"], r["score"]) for r in out] == [
        (7, 3, pytest.approx(0.9)),
        (7, 4, 0.25),
    ]
    assert out[0]["segmentation"]["size"] == [8, 10]
    assert isinstance(out[0]["segmentation"]["counts"], str)
    assert mask_utils.area(out[0]["segmentation"]) == 6
    assert mask_utils.toBbox(out[1]["segmentation"]).tolist() == [0.0, 4.0, 10.0, 4.0]
    assert out[1]["bbox"] == [0.0, 4.0, 10.0, 4.0]
    json.dumps(out)  # ready for a results file
    numeric = mask_predictions_to_coco(1, np.ones((1, 2, 2)), [0.5], [0], {0: 1}, image_size=(2, 2))
    assert "bbox" not in numeric[0] and mask_utils.area(numeric[0]["segmentation"]) == 4
    assert mask_predictions_to_coco(1, np.zeros((0, 4, 4)), [], [], {0: 1}, image_size=(4, 4)) == []


@pytest.mark.parametrize(
    ("masks", "image_size", "field", "fragment"),
    [
        (np.zeros((2, 4, 4)), (4, 4), "predictions", "masks (N, H, W), scores (N,)"),
        (np.zeros((1, 4, 6)), (8, 12), "masks", "masks are 4x6 (height x width) but the image"),
        (np.full((1, 4, 4), 0.7), (4, 4), "masks", "threshold mask probabilities first"),
    ],
)
def test_mask_predictions_to_coco_refuses_what_coco_cannot_compare(
    masks: Any, image_size: tuple[int, int], field: str, fragment: str
) -> None:
    with pytest.raises(InvalidSpecError) as caught:
        mask_predictions_to_coco(1, masks, [0.5], [0], {0: 1}, image_size=image_size)
    assert caught.value.field == field
    assert fragment in caught.value.message
