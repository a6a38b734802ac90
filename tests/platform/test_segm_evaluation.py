"""COCO mask evaluation (``iou_type="segm"``): cocoapi's published figures on both backends, the
backends equal, perfect masks scoring 1.0, and malformed masks refused naming the field."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from typer.testing import CliRunner

from detrforge import cli
from detrforge.detector.evaluation import (
    BACKENDS,
    SEGM_STAT_NAMES,
    EvalResult,
    evaluate_coco,
    format_stats_table,
)
from detrforge.detector.masks import encode_mask, mask_predictions_to_coco
from detrforge.detector.synthetic import synth_dataset
from detrforge.platform.errors import InvalidDatasetError, InvalidSpecError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco-val2014-100"
GT_FILE = DATA / "instances_val2014_100.json"
SEGM_FILE = DATA / "instances_val2014_fakesegm100_results.json"

# cocoapi results/val2014_fake_eval_res.txt, segm part: the published three decimals.
PUBLISHED = {
    "segm/AP": 0.320,
    "segm/AP50": 0.562,
    "segm/AP75": 0.299,
    "segm/APs": 0.387,
    "segm/APm": 0.310,
    "segm/APl": 0.327,
    "segm/AR1": 0.268,
    "segm/AR10": 0.415,
    "segm/AR100": 0.417,
    "segm/ARs": 0.469,
    "segm/ARm": 0.377,
    "segm/ARl": 0.381,
}


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not GT_FILE.is_file() or not SEGM_FILE.is_file():
        pytest.fail(f"reference data missing: expected {DATA} (the repo's ../shared/data)")
    return json.loads(GT_FILE.read_text()), json.loads(SEGM_FILE.read_text())


@pytest.fixture(scope="module")
def results(reference: tuple[dict[str, Any], list[dict[str, Any]]]) -> dict[str, EvalResult]:
    gt, dets = reference
    return {b: evaluate_coco(gt, dets, backend=b, iou_type="segm") for b in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
def test_reproduces_published_segm_figures(results: dict[str, EvalResult], backend: str) -> None:
    result = results[backend]
    assert list(result.stats) == list(SEGM_STAT_NAMES) == list(PUBLISHED)
    assert {name: round(value, 3) for name, value in result.stats.items()} == PUBLISHED
    assert result.stats["segm/AP"] == pytest.approx(0.3195452758576433, abs=1e-12)
    assert (result.backend, result.iou_type) == (backend, "segm")
    assert (result.num_images, result.num_detections) == (100, 734)


def test_backends_agree_on_every_metric_and_class(results: dict[str, EvalResult]) -> None:
    ref, fast = results["pycocotools"], results["faster"]
    for name in SEGM_STAT_NAMES:
        assert abs(fast.stats[name] - ref.stats[name]) <= 1e-9, name
    assert len(ref.per_class) == len(fast.per_class) == 80
    for a, b in zip(ref.per_class, fast.per_class, strict=True):
        assert (a.category_id, a.num_gt) == (b.category_id, b.num_gt)
        for x, y in ((a.ap, b.ap), (a.ap50, b.ap50)):
            assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-9, a.name


def test_table_and_dict_name_the_segm_metrics(results: dict[str, EvalResult]) -> None:
    table = format_stats_table(results["faster"])
    assert table.splitlines()[0] == "COCO segm evaluation (faster): 100 images, 734 detections"
    assert "  segm/AP     0.3195" in table
    as_dict = results["faster"].to_dict()
    assert as_dict["iou_type"] == "segm"
    assert as_dict["stats"]["segm/AR100"] == pytest.approx(0.4168394992198818, abs=1e-12)


# --- perfect masks from the synthetic set -----------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_ground_truth_masks_as_predictions_score_one(tmp_path: Path, backend: str) -> None:
    info = synth_dataset(
        tmp_path / "ds", seed=2, num_classes=3, train_images=1, valid_images=6, image_size=64,
        min_box=10, masks=True,
    )  # fmt: skip
    gt = json.loads((tmp_path / "ds" / "valid" / "_annotations.coco.json").read_text())
    label2cat = dict(enumerate(info.category_ids))
    cat2label = {cat: label for label, cat in label2cat.items()}
    detections = []
    for image in gt["images"]:
        height, width = image["height"], image["width"]
        anns = [a for a in gt["annotations"] if a["image_id"] == image["id"]]
        masks = np.stack([_raster(a["segmentation"], height, width) for a in anns])
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        detections += mask_predictions_to_coco(
            image["id"], masks, np.linspace(0.9, 0.5, len(anns)),
            np.array([cat2label[a["category_id"]] for a in anns]), label2cat,
            image_size=(height, width), boxes_xyxy=boxes,
        )  # fmt: skip
    segm = evaluate_coco(gt, detections, backend=backend, iou_type="segm")
    assert segm.stats["segm/AP"] == pytest.approx(1.0, abs=1e-12)
    assert segm.stats["segm/AR100"] == pytest.approx(1.0, abs=1e-12)
    assert segm.num_detections == len(gt["annotations"])
    # The same results carry the boxes, so one list serves both evaluations.
    bbox = evaluate_coco(gt, detections, backend=backend)
    assert bbox.stats["bbox/AP"] == pytest.approx(1.0, abs=1e-12)


def _raster(segmentation: Any, height: int, width: int) -> np.ndarray[Any, Any]:
    if isinstance(segmentation, list):
        segmentation = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    return mask_utils.decode(segmentation).astype(bool)


# --- malformed inputs -------------------------------------------------------------------------


def _tiny() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    mask = np.zeros((20, 30), dtype=bool)
    mask[2:8, 3:12] = True
    gt = {
        "images": [{"id": 1, "width": 30, "height": 20}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [3, 2, 9, 6], "iscrowd": 0,
             "segmentation": [[3, 2, 12, 2, 12, 8, 3, 8]], "area": 54},
        ],
    }  # fmt: skip
    dets = [{"image_id": 1, "category_id": 1, "segmentation": encode_mask(mask), "score": 0.9}]
    return gt, dets


def test_tiny_case_scores_one() -> None:
    gt, dets = _tiny()
    assert evaluate_coco(gt, dets, iou_type="segm").stats["segm/AP"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        (lambda d: d.update(segmentation=[[3, 2, 12, 2, 12, 8]]), "detections[0].segmentation",
         "segmentation must be an RLE object"),
        (lambda d: d["segmentation"].update(size=[30, 20]), "detections[0].segmentation.size",
         "RLE size is [30, 20] (height, width) but the image is 20x30"),
        (lambda d: d["segmentation"].update(counts="P1o"), "detections[0].segmentation.counts",
         "end in the middle of a run"),
        (lambda d: d.pop("segmentation"), "detections[0]", "missing segmentation"),
    ],
)  # fmt: skip
def test_malformed_result_masks_are_refused_naming_the_field(
    change: Any, field: str, fragment: str
) -> None:
    gt, dets = _tiny()
    change(dets[0])
    with pytest.raises(InvalidSpecError) as caught:
        evaluate_coco(gt, dets, backend="faster", iou_type="segm")
    assert caught.value.field == "detections"
    assert caught.value.details[0]["field"] == field
    assert fragment in caught.value.details[0]["message"]
    assert f"{field}: " in caught.value.message


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        (lambda g: g["annotations"][0].update(segmentation=[]), "annotations[0].segmentation",
         "segm evaluation needs a mask"),
        (lambda g: g["annotations"][0].update(segmentation=[[3, 2, 12, 2, 12]]),
         "annotations[0].segmentation[0]", "odd number of coordinates"),
        (lambda g: g["images"][0].pop("height"), "images[0].height",
         "segm evaluation needs the image's height"),
    ],
)  # fmt: skip
def test_malformed_ground_truth_masks_are_refused_naming_the_field(
    change: Any, field: str, fragment: str
) -> None:
    gt, dets = _tiny()
    change(gt)
    with pytest.raises(InvalidDatasetError) as caught:
        evaluate_coco(gt, dets, iou_type="segm")
    assert caught.value.field == "annotations"
    assert caught.value.details[0]["field"] == field
    assert fragment in caught.value.details[0]["message"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_box_on_a_mask_result_does_not_change_its_area_range(backend: str) -> None:
    # One small object found (score 0.9) after a small false positive (0.95). pycocotools takes
    # a result's area from its bbox when there is one: a whole-image box would make the false
    # positive "large" and drop it from APs (1.0). segm drops the box, so both count: APs 0.5.
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 10, 10], "iscrowd": 0,
             "segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]], "area": 100},
        ],
    }  # fmt: skip
    found, wrong = np.zeros((100, 100), dtype=bool), np.zeros((100, 100), dtype=bool)
    found[10:20, 10:20] = True
    wrong[60:65, 60:65] = True
    dets = [
        {"image_id": 1, "category_id": 1, "segmentation": encode_mask(wrong), "score": 0.95},
        {"image_id": 1, "category_id": 1, "segmentation": encode_mask(found), "score": 0.9},
    ]
    plain = evaluate_coco(gt, dets, backend=backend, iou_type="segm")
    boxed = [{**d, "bbox": [0.0, 0.0, 100.0, 100.0]} for d in dets]
    assert evaluate_coco(gt, boxed, backend=backend, iou_type="segm").stats == plain.stats
    assert plain.stats["segm/APs"] == pytest.approx(0.5, abs=1e-12)
    assert plain.stats["segm/AP"] == pytest.approx(0.5, abs=1e-12)


def test_cli_evaluates_a_masks_file(tmp_path: Path) -> None:
    gt, dets = _tiny()
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    args = ["eval", "detections", "--annotations", str(tmp_path / "gt.json")]
    args += ["--detections", str(tmp_path / "dt.json")]
    result = CliRunner().invoke(cli.app, [*args, "--iou-type", "segm", "--backend", "faster"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("COCO segm evaluation (faster): 1 images, 1 detections")
    assert "  segm/AP50   1.0000" in result.stdout
    wrong = CliRunner().invoke(cli.app, [*args, "--iou-type", "keypoints"])
    assert wrong.exit_code == 2
    assert "iou_type: unknown IoU type 'keypoints'" in wrong.stderr


def test_inputs_are_not_mutated_and_iou_type_is_checked() -> None:
    gt, dets = _tiny()
    before = copy.deepcopy((gt, dets))
    evaluate_coco(gt, dets, iou_type="segm")
    evaluate_coco(gt, dets, backend="faster", iou_type="segm")
    assert (gt, dets) == before
    with pytest.raises(InvalidSpecError) as caught:
        evaluate_coco(gt, dets, iou_type="keypoints")
    assert caught.value.field == "iou_type"
