"""Running a predictor over a dataset split: COCO result dicts and their bbox AP (and, for a
segmentation model, their mask AP: ``segm/*``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from detrforge.detector.data import category_id_of, rfdetr_categories
from detrforge.detector.dataset_checks import ANNOTATION_FILE, SPLITS
from detrforge.detector.evaluation import BACKENDS, EvalResult, evaluate_coco, predictions_to_coco
from detrforge.detector.masks import mask_predictions_to_coco
from detrforge.detector.predictor import Predictor
from detrforge.platform.errors import InvalidDatasetError, InvalidSpecError

__all__ = ["evaluate_checkpoint", "evaluate_predictor", "label2cat_for", "predict_split"]


def _load_annotations(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InvalidDatasetError(
            f"{path} is missing; each split folder needs its {ANNOTATION_FILE}", field="dataset"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidDatasetError(f"{path} is not readable JSON ({e})", field="dataset") from None
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise InvalidDatasetError(f"{path} has no 'categories' list", field="dataset")
    return data


def label2cat_for(dataset_dir: Path) -> dict[int, int]:
    """Contiguous model label -> COCO category id, exactly as rfdetr assigns them in training.

    rfdetr derives the mapping from the train split for every split: categories sorted by id,
    less unannotated "grouping" parents (a category named as another one's ``supercategory``
    that no train annotation uses, e.g. the root class Roboflow exports prepend).
    """
    data = _load_annotations(Path(dataset_dir) / "train" / ANNOTATION_FILE)
    categories = [c for c in data["categories"] if isinstance(c, Mapping)]
    annotated = {
        int(a["category_id"])
        for a in data.get("annotations") or []
        if isinstance(a, Mapping) and "category_id" in a
    }
    kept = rfdetr_categories(categories, annotated)
    out: dict[int, int] = {}
    for label, category in enumerate(kept):
        category_id = category_id_of(category)
        if category_id is None:
            raise InvalidDatasetError(
                f"train/{ANNOTATION_FILE}: category {category!r} has no integer id",
                field="categories",
            )
        out[label] = category_id
    return out


def _split_file(dataset_dir: Path, split: str) -> Path:
    if split not in SPLITS:
        raise InvalidSpecError(
            f"unknown split {split!r}; choose one of {list(SPLITS)}", field="split"
        )
    return Path(dataset_dir) / split / ANNOTATION_FILE


def predict_split(
    predictor: Predictor[Any], dataset_dir: Path, split: str, *, batch_size: int = 1
) -> list[dict[str, Any]]:
    """COCO result dicts for every image of ``split``; labels without a category are dropped."""
    if batch_size < 1:
        raise InvalidSpecError(f"batch_size must be >= 1, got {batch_size}", field="batch_size")
    ann_file = _split_file(dataset_dir, split)
    data = _load_annotations(ann_file)
    label2cat = label2cat_for(dataset_dir)
    images = sorted(data.get("images") or [], key=lambda image: int(image["id"]))
    results: list[dict[str, Any]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pil_images = []
        for entry in chunk:
            path = ann_file.parent / str(entry["file_name"])
            try:
                with Image.open(path) as image:
                    pil_images.append(image.convert("RGB"))
            except (OSError, ValueError) as e:
                raise InvalidDatasetError(
                    f"{path} could not be read as an image ({e})", field="images"
                ) from None
        predictions = predictor.predict(pil_images)
        for entry, rgb, det in zip(chunk, pil_images, predictions, strict=True):
            if det.masks is not None:
                # One result per detection with its box and its mask: both evaluations read it.
                results.extend(
                    mask_predictions_to_coco(
                        int(entry["id"]),
                        det.masks,
                        det.scores,
                        det.labels,
                        label2cat,
                        image_size=(rgb.height, rgb.width),
                        boxes_xyxy=det.boxes_xyxy,
                    )
                )
                continue
            results.extend(
                predictions_to_coco(
                    int(entry["id"]), det.boxes_xyxy, det.scores, det.labels, label2cat
                )
            )
    return results


def evaluate_checkpoint(
    predictor: Predictor[Any],
    dataset_dir: Path,
    split: str,
    *,
    backend: str = "faster",
    batch_size: int = 1,
) -> EvalResult:
    """COCO bbox AP of ``predictor`` on ``split`` (``faster`` is proven equal to pycocotools)."""
    [bbox] = _evaluate(predictor, dataset_dir, split, ("bbox",), backend, batch_size)
    return bbox


def evaluate_predictor(
    predictor: Predictor[Any],
    dataset_dir: Path,
    split: str,
    *,
    backend: str = "faster",
    batch_size: int = 1,
) -> list[EvalResult]:
    """COCO bbox AP of ``predictor`` on ``split`` and, when it has a mask head, mask AP (``segm``)
    of the same predictions: one result per IoU type, bbox first.

    Raises:
        InvalidDatasetError: for masks, a split object without one (or a malformed one).
    """
    iou_types = ("bbox", "segm") if predictor.has_masks else ("bbox",)
    return _evaluate(predictor, dataset_dir, split, iou_types, backend, batch_size)


def _evaluate(
    predictor: Predictor[Any],
    dataset_dir: Path,
    split: str,
    iou_types: tuple[str, ...],
    backend: str,
    batch_size: int,
) -> list[EvalResult]:
    """One prediction pass over ``split``, scored once per IoU type."""
    if backend not in BACKENDS:
        raise InvalidSpecError(
            f"unknown evaluation backend {backend!r}; choose one of {list(BACKENDS)}",
            field="backend",
        )
    detections = predict_split(predictor, dataset_dir, split, batch_size=batch_size)
    ann_file = _split_file(dataset_dir, split)
    return [
        evaluate_coco(ann_file, detections, backend=backend, iou_type=iou_type)
        for iou_type in iou_types
    ]
