"""COCO bbox evaluation: the published cocoapi numbers, backend equality, values and bad inputs."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from detrforge.detector.evaluation import (
    BACKENDS,
    STAT_NAMES,
    EvalResult,
    evaluate_coco,
    evaluate_detections_files,
    format_stats_table,
    predictions_to_coco,
)
from detrforge.platform.errors import InvalidDatasetError, InvalidSpecError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco-val2014-100"
GT_FILE = DATA / "instances_val2014_100.json"
DT_FILE = DATA / "instances_val2014_fakebbox100_results.json"

# Published COCOeval bbox stats[0..11] for the cocoapi demo pair (pycocoEvalDemo).
PUBLISHED = {
    "bbox/AP": 0.5045806987249628,
    "bbox/AP50": 0.6969727247299577,
    "bbox/AP75": 0.5729816669904824,
    "bbox/APs": 0.5856257209410443,
    "bbox/APm": 0.5193996948036719,
    "bbox/APl": 0.5013978986347466,
    "bbox/AR1": 0.38681277964578054,
    "bbox/AR10": 0.5936795762842003,
    "bbox/AR100": 0.595352982877607,
    "bbox/ARs": 0.6398109626113442,
    "bbox/ARm": 0.5664205978994309,
    "bbox/ARl": 0.5642905982905982,
}


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if not GT_FILE.is_file() or not DT_FILE.is_file():
        pytest.fail(f"reference data missing: expected {DATA} (the repo's ../shared/data)")
    gt = json.loads(GT_FILE.read_text())
    dets = json.loads(DT_FILE.read_text())
    return gt, dets


@pytest.fixture(scope="module")
def reference_results(
    reference: tuple[dict[str, Any], list[dict[str, Any]]],
) -> dict[str, EvalResult]:
    gt, dets = reference
    return {backend: evaluate_coco(gt, dets, backend=backend) for backend in BACKENDS}


def _tiny_gt() -> dict[str, Any]:
    """Two images, classes 1 ('cat', 2 boxes) and 2 ('dog', 1 box); class 3 has no GT."""
    return {
        "images": [
            {"id": 10, "width": 200, "height": 200, "file_name": "a.jpg"},
            {"id": 11, "width": 200, "height": 200, "file_name": "b.jpg"},
        ],
        "categories": [
            {"id": 1, "name": "cat"},
            {"id": 2, "name": "dog"},
            {"id": 3, "name": "bird"},
        ],
        "annotations": [
            {"id": 0, "image_id": 10, "category_id": 1, "bbox": [10, 10, 50, 40], "iscrowd": 0},
            {"id": 1, "image_id": 11, "category_id": 1, "bbox": [60, 70, 80, 90], "iscrowd": 0},
            {"id": 2, "image_id": 11, "category_id": 2, "bbox": [5, 5, 30, 30], "iscrowd": 0},
        ],
    }


def _det(image_id: int, category_id: int, bbox: list[float], score: float = 0.9) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


# --- the reference ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_reproduces_published_cocoapi_numbers(
    reference_results: dict[str, EvalResult], backend: str
) -> None:
    result = reference_results[backend]
    assert list(result.stats) == list(STAT_NAMES)
    for name, expected in PUBLISHED.items():
        assert result.stats[name] == pytest.approx(expected, abs=1e-9, rel=0), name
    assert result.backend == backend
    assert result.num_images == 100
    assert result.num_detections == 734


def test_faster_backend_is_identical_to_pycocotools(
    reference_results: dict[str, EvalResult],
) -> None:
    ref, fast = reference_results["pycocotools"], reference_results["faster"]
    for name in STAT_NAMES:
        assert fast.stats[name] == pytest.approx(ref.stats[name], abs=1e-12, rel=0), name
    assert len(fast.per_class) == len(ref.per_class) == 80
    for a, b in zip(ref.per_class, fast.per_class, strict=True):
        assert (a.category_id, a.name, a.num_gt) == (b.category_id, b.name, b.num_gt)
        for x, y in ((a.ap, b.ap), (a.ap50, b.ap50)):
            assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-12, a.name


def test_published_numbers_need_every_gt_image_not_only_those_with_detections(
    reference: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    # The fake results cover 99 of the 100 GT images. The published numbers come from evaluating
    # all 100 (the default: an image without detections counts its GT as misses). Restricting
    # image_ids to the images that have detections inflates AP, so no restriction is needed.
    gt, dets = reference
    with_dets = sorted({d["image_id"] for d in dets})
    assert len(with_dets) == 99
    restricted = evaluate_coco(gt, dets, image_ids=with_dets)
    assert restricted.num_images == 99
    assert restricted.stats["bbox/AP"] == pytest.approx(0.5069852248918651, abs=1e-12)
    assert restricted.stats["bbox/AP"] != pytest.approx(PUBLISHED["bbox/AP"], abs=1e-6)


def test_reference_per_class_table(reference_results: dict[str, EvalResult]) -> None:
    result = reference_results["pycocotools"]
    by_id = {c.category_id: c for c in result.per_class}
    gt = json.loads(GT_FILE.read_text())
    persons = [a for a in gt["annotations"] if a["category_id"] == 1 and not a["iscrowd"]]
    assert by_id[1].name == "person"
    assert by_id[1].num_gt == len(persons) == 250
    # fire hydrant has no GT among these 100 images: undefined, not 0.
    assert by_id[11].num_gt == 0
    assert math.isnan(by_id[11].ap) and math.isnan(by_id[11].ap50)
    # bbox/AP is the mean of the defined per-class APs; likewise AP50.
    defined = [c for c in result.per_class if not math.isnan(c.ap)]
    assert len(defined) == sum(1 for c in result.per_class if c.num_gt > 0)
    assert np.mean([c.ap for c in defined]) == pytest.approx(result.stats["bbox/AP"], abs=1e-12)
    assert np.mean([c.ap50 for c in defined]) == pytest.approx(result.stats["bbox/AP50"], abs=1e-12)


# --- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_perfect_detections_score_ap_one(
    reference: tuple[dict[str, Any], list[dict[str, Any]]], backend: str
) -> None:
    gt, _ = reference
    perfect = [
        _det(a["image_id"], a["category_id"], a["bbox"], 1.0)
        for a in gt["annotations"]
        if not a["iscrowd"]
    ]
    result = evaluate_coco(gt, perfect, backend=backend)
    # pycocotools divides by (tp + fp + eps), so "perfect" is 1 - 2e-16 there.
    for name in ("bbox/AP", "bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl"):
        assert result.stats[name] == pytest.approx(1.0, abs=1e-12), name
    assert result.stats["bbox/AR100"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_detections_score_zero(
    reference: tuple[dict[str, Any], list[dict[str, Any]]], backend: str
) -> None:
    gt, _ = reference
    result = evaluate_coco(gt, [], backend=backend)
    assert result.num_detections == 0
    assert result.stats == {name: 0.0 for name in STAT_NAMES}
    assert all(c.ap == 0.0 for c in result.per_class if c.num_gt > 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_class_values_on_a_hand_checked_case(backend: str) -> None:
    dets = [
        _det(10, 1, [10, 10, 50, 40]),  # cat, exact
        _det(11, 1, [60, 70, 80, 90]),  # cat, exact
        _det(11, 2, [150, 150, 20, 20]),  # dog, no overlap: a false positive, the dog is missed
    ]
    result = evaluate_coco(_tiny_gt(), dets, backend=backend)
    cat, dog, bird = result.per_class
    assert (cat.category_id, cat.name, cat.num_gt) == (1, "cat", 2)
    assert cat.ap == pytest.approx(1.0, abs=1e-12) and cat.ap50 == pytest.approx(1.0, abs=1e-12)
    assert (dog.ap, dog.ap50, dog.num_gt) == (0.0, 0.0, 1)
    assert bird.num_gt == 0 and math.isnan(bird.ap) and math.isnan(bird.ap50)
    assert result.stats["bbox/AP"] == pytest.approx(0.5, abs=1e-12)
    # every box is 'small' or 'medium': no large GT means APl is undefined (COCOeval's -1)
    assert math.isnan(result.stats["bbox/APl"])
    assert result.num_images == 2 and result.num_detections == 3


def test_gt_annotation_id_zero_is_not_a_miss() -> None:
    # pycocotools treats a matched GT id of 0 as "unmatched"; ids are renumbered so it counts.
    gt = _tiny_gt()
    assert gt["annotations"][0]["id"] == 0
    dets = [_det(10, 1, [10, 10, 50, 40])]
    result = evaluate_coco(gt, dets, image_ids=[10])
    assert result.per_class[0].ap == pytest.approx(1.0, abs=1e-12)
    assert result.num_images == 1


def test_inputs_are_not_mutated() -> None:
    gt = _tiny_gt()
    dets = [_det(10, 1, [10, 10, 50, 40])]
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    for backend in BACKENDS:
        evaluate_coco(gt, dets, backend=backend)
    assert gt == gt_before
    assert dets == dets_before


def test_files_to_dict_and_table(tmp_path: Path) -> None:
    result = evaluate_detections_files(GT_FILE, DT_FILE, backend="faster")
    body = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert body["stats"]["bbox/AP"] == pytest.approx(PUBLISHED["bbox/AP"], abs=1e-9)
    assert body["backend"] == "faster" and body["num_images"] == 100
    hydrant = next(c for c in body["per_class"] if c["category_id"] == 11)
    expected = {"category_id": 11, "name": "fire hydrant", "ap": None, "ap50": None, "num_gt": 0}
    assert hydrant == expected
    table = format_stats_table(result)
    assert "bbox/AP     0.5046" in table
    assert "bbox/ARl    0.5643" in table
    assert any(line.split()[:2] == ["1", "person"] for line in table.splitlines())


# --- predictions_to_coco -----------------------------------------------------------------------


def test_predictions_to_coco_maps_labels_and_drops_unmapped() -> None:
    boxes = np.array([[10.123456789, 20.5, 60.25, 80.0], [1.0, 2.0, 3.0, 4.0]])
    out = predictions_to_coco(7, boxes, np.array([0.875, 0.5]), np.array([0, 1]), {0: 1})
    # label 1 == num_classes has no label2cat entry: dropped, not an error
    assert out == [
        {
            "image_id": 7,
            "category_id": 1,
            "bbox": [10.123456789, 20.5, 60.25 - 10.123456789, 80.0 - 20.5],
            "score": 0.875,
        }
    ]
    assert all(type(v) is float for v in out[0]["bbox"]) and type(out[0]["score"]) is float


def test_predictions_to_coco_accepts_torch_tensors() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 5.0], [2.0, 3.0, 4.0, 9.0]], dtype=torch.float32)
    out = predictions_to_coco(
        3, boxes, torch.tensor([0.25, 0.75]), torch.tensor([2, 0]), {0: 17, 2: 5}
    )
    assert [(d["category_id"], d["bbox"], d["score"]) for d in out] == [
        (5, [0.0, 0.0, 10.0, 5.0], 0.25),
        (17, [2.0, 3.0, 2.0, 6.0], 0.75),
    ]
    assert predictions_to_coco(3, torch.zeros(0, 4), torch.zeros(0), torch.zeros(0), {0: 1}) == []


def test_predictions_to_coco_feed_evaluation() -> None:
    gt = _tiny_gt()
    label2cat = {0: 1, 1: 2, 2: 3}
    dets = predictions_to_coco(
        11, np.array([[60, 70, 140, 160], [5, 5, 35, 35]]), [0.9, 0.8], [0, 1], label2cat
    ) + predictions_to_coco(10, np.array([[10, 10, 60, 50]]), [0.7], [0], label2cat)
    result = evaluate_coco(gt, dets)
    assert result.stats["bbox/AP"] == pytest.approx(1.0, abs=1e-12)


def test_predictions_to_coco_rejects_mismatched_shapes() -> None:
    with pytest.raises(InvalidSpecError) as err:
        predictions_to_coco(1, np.zeros((2, 4)), np.zeros(3), np.zeros(2), {0: 1})
    assert err.value.field == "predictions"
    assert "(N, 4)" in err.value.message


# --- bad inputs --------------------------------------------------------------------------------


def test_detections_must_be_a_list() -> None:
    not_a_list: Any = _tiny_gt()  # a ground-truth object where the results list belongs
    with pytest.raises(InvalidSpecError) as err:
        evaluate_coco(_tiny_gt(), not_a_list)
    assert err.value.field == "detections"
    assert "list" in err.value.message and "ground-truth file" in err.value.message


def test_detection_missing_keys() -> None:
    with pytest.raises(InvalidSpecError) as err:
        evaluate_coco(
            _tiny_gt(), [_det(10, 1, [0, 0, 1, 1]), {"image_id": 10, "bbox": [0, 0, 1, 1]}]
        )
    assert err.value.field == "detections"
    assert "detections[1]" in err.value.message and "category_id, score" in err.value.message
    assert err.value.details == [
        {"field": "detections[1]", "message": "missing category_id, score"}
    ]


def test_detection_image_not_in_gt() -> None:
    with pytest.raises(InvalidSpecError) as err:
        evaluate_coco(_tiny_gt(), [_det(999, 1, [0, 0, 1, 1])])
    assert err.value.field == "detections"
    assert "image_id 999" in err.value.message
    assert "'images'" in err.value.message  # says where valid ids come from


def test_detection_category_not_in_gt() -> None:
    with pytest.raises(InvalidSpecError) as err:
        evaluate_coco(_tiny_gt(), [_det(10, 0, [0, 0, 1, 1])])
    assert err.value.field == "detections"
    assert "category_id 0" in err.value.message and "label2cat" in err.value.message


def test_detection_bad_bbox_and_score() -> None:
    with pytest.raises(InvalidSpecError) as err:
        evaluate_coco(_tiny_gt(), [_det(10, 1, [0, 0, 1]), _det(10, 1, [0, 0, 1, 1], math.nan)])
    assert err.value.field == "detections"
    assert [d["field"] for d in err.value.details] == ["detections[0].bbox", "detections[1].score"]


@pytest.mark.parametrize("field", ["annotations", "detections"])
def test_unreadable_json_files(tmp_path: Path, field: str) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    paths = {"annotations": GT_FILE, "detections": DT_FILE, field: broken}
    with pytest.raises(InvalidSpecError) as err:
        evaluate_detections_files(paths["annotations"], paths["detections"])
    assert err.value.field == field
    assert "not readable JSON" in err.value.message

    paths[field] = tmp_path / "missing.json"
    with pytest.raises(InvalidSpecError) as err:
        evaluate_detections_files(paths["annotations"], paths["detections"])
    assert err.value.field == field
    assert "does not exist" in err.value.message


def test_invalid_ground_truth() -> None:
    gt = _tiny_gt()
    del gt["categories"]
    with pytest.raises(InvalidDatasetError) as err:
        evaluate_coco(gt, [])
    assert err.value.field == "annotations"
    assert err.value.details[0]["field"] == "categories"

    gt = _tiny_gt()
    gt["annotations"][1]["image_id"] = 42
    with pytest.raises(InvalidDatasetError) as err:
        evaluate_coco(gt, [])
    assert err.value.details[0]["field"] == "annotations[1].image_id"
    assert "42" in err.value.message


def test_unknown_backend_and_image_ids() -> None:
    with pytest.raises(InvalidSpecError) as err:
        evaluate_coco(_tiny_gt(), [], backend="torchmetrics")
    assert err.value.field == "backend"
    assert "pycocotools" in err.value.message
    with pytest.raises(InvalidSpecError) as err:
        evaluate_coco(_tiny_gt(), [], image_ids=[10, 12])
    assert err.value.field == "image_ids"
    assert "[12]" in err.value.message
