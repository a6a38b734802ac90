"""COCO evaluation inputs, validated and copied before a COCO library sees them.

pycocotools and faster-coco-eval both mutate the annotation dicts they are given (``ignore``,
``area``, ``id``), and both silently ignore detections whose image or category is not in the ground
truth, which is how a label-id mix-up turns into AP ~0 unnoticed; so every such detection is an
error here, naming the field. For ``segm`` the masks are read first too
(:mod:`detrforge.detector.mask_checks`): pycocotools trusts RLE sizes and counts blindly.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any, Literal

from detrforge.detector.mask_checks import FieldProblem, has_segmentation, read_segmentation
from detrforge.detector.masks import compressed_rle
from detrforge.platform.errors import DatasetProblem, InvalidDatasetError, InvalidSpecError

__all__ = [
    "IOU_TYPES",
    "IouType",
    "PathInput",
    "image_grids",
    "is_int",
    "load_coco_json",
    "prepare_detections",
    "prepare_ground_truth",
]

PathInput = str | os.PathLike[str]
IouType = Literal["bbox", "segm"]
IOU_TYPES: tuple[IouType, ...] = ("bbox", "segm")

_MAX_PROBLEMS = 20  # problems listed in an error's details; the message gives the total


def load_coco_json(path: PathInput, field: str) -> Any:
    """The JSON in ``path``; ``field`` (``annotations`` or ``detections``) names it in errors."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise InvalidSpecError(
            f"{field} file {os.fspath(path)!r} does not exist; check the path", field=field
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidSpecError(
            f"{field} file {os.fspath(path)!r} is not readable JSON ({e}); pass a COCO "
            f"{'results' if field == 'detections' else 'annotations'} JSON file",
            field=field,
        ) from None


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (numpy's too) and not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_xywh(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == 4
        and all(_is_number(v) for v in value)
        and value[2] >= 0
        and value[3] >= 0
    )


def prepare_ground_truth(gt: Any, source: str, *, iou_type: IouType = "bbox") -> dict[str, Any]:
    """Validate a COCO ground-truth dict and return a copy the COCO libraries may mutate.

    For ``segm`` every image needs its width and height and every annotation a readable mask.
    """
    if not isinstance(gt, Mapping):
        raise InvalidDatasetError(
            f"annotations from {source} must be a COCO object with 'images', 'annotations' and "
            f"'categories', got {type(gt).__name__}",
            field="annotations",
        )
    problems: list[DatasetProblem] = []

    def problem(field: str, message: str) -> None:
        problems.append(DatasetProblem(file=source, field=field, message=message))

    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            problem(key, f"'{key}' must be a list")
    if problems:
        _raise_dataset(problems, source)

    images: list[dict[str, Any]] = []
    for i, img in enumerate(gt["images"]):
        if not isinstance(img, Mapping) or not is_int(img.get("id")):
            problem(f"images[{i}].id", "each image needs an integer 'id'")
            continue
        if iou_type == "segm":
            bad = [k for k in ("width", "height") if not (is_int(img.get(k)) and img[k] > 0)]
            for key in bad:
                problem(f"images[{i}].{key}", f"segm evaluation needs the image's {key} in pixels")
            if bad:
                continue
        images.append({**img, "id": int(img["id"])})
    categories: list[dict[str, Any]] = []
    for i, cat in enumerate(gt["categories"]):
        if not isinstance(cat, Mapping) or not is_int(cat.get("id")):
            problem(f"categories[{i}].id", "each category needs an integer 'id'")
        else:
            categories.append({**cat, "id": int(cat["id"])})
    image_ids = {img["id"] for img in images}
    grids = image_grids(images) if iou_type == "segm" else {}
    cat_ids = {cat["id"] for cat in categories}

    annotations: list[dict[str, Any]] = []
    for i, ann in enumerate(gt["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(ann, Mapping):
            problem(where, "each annotation must be an object")
            continue
        if ann.get("image_id") not in image_ids:
            problem(f"{where}.image_id", f"image_id {ann.get('image_id')!r} is not in 'images'")
            continue
        if ann.get("category_id") not in cat_ids:
            problem(
                f"{where}.category_id",
                f"category_id {ann.get('category_id')!r} is not in 'categories'",
            )
            continue
        if not _is_xywh(ann.get("bbox")):
            problem(f"{where}.bbox", "bbox must be [x, y, width, height] with width, height >= 0")
            continue
        grid = grids.get(ann["image_id"])
        if grid is not None and not _mask_ok(ann, where, grid, problems, source):
            continue
        bbox = [float(v) for v in ann["bbox"]]
        area = ann.get("area")
        # Annotation ids are renumbered 1..N: pycocotools stores the matched GT id in its match
        # matrix and treats 0 as "unmatched", so a GT with id 0 (common in Roboflow exports) would
        # turn its true positives into false positives; duplicate ids would collide in its index.
        annotations.append(
            {
                **ann,
                "id": len(annotations) + 1,
                "image_id": int(ann["image_id"]),
                "category_id": int(ann["category_id"]),
                "bbox": bbox,
                "area": float(area) if area is not None and _is_number(area) else bbox[2] * bbox[3],
                "iscrowd": 1 if ann.get("iscrowd") else 0,
            }
        )
    if problems:
        _raise_dataset(problems, source)
    return {"images": images, "annotations": annotations, "categories": categories}


def image_grids(images: list[dict[str, Any]]) -> dict[int, tuple[int, int]]:
    """Image id -> (width, height) of validated ``segm`` ground-truth images."""
    return {img["id"]: (int(img["width"]), int(img["height"])) for img in images}


def _mask_ok(
    ann: Mapping[str, Any],
    where: str,
    grid: tuple[int, int],
    problems: list[DatasetProblem],
    source: str,
) -> bool:
    found: list[FieldProblem] = []
    if not has_segmentation(ann.get("segmentation")):
        found.append(
            FieldProblem(
                f"{where}.segmentation",
                "segm evaluation needs a mask (polygons or RLE) on every ground-truth object",
            )
        )
    else:
        read_segmentation(ann["segmentation"], where, grid, found)
    problems += [DatasetProblem(file=source, field=p.field, message=p.message) for p in found]
    return not found


def _raise_dataset(problems: list[DatasetProblem], source: str) -> None:
    first = problems[0]
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    raise InvalidDatasetError(
        f"annotations from {source} are not valid COCO: {first['field']}: {first['message']}{more}",
        field="annotations",
        details=list(problems[:_MAX_PROBLEMS]),
    )


def prepare_detections(
    detections: Any,
    image_ids: set[int],
    cat_ids: set[int],
    *,
    grids: Mapping[int, tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """Validate COCO result dicts and return normalized copies (the libraries mutate them).

    With ``grids`` (image id -> (width, height)) the results are masks for ``segm``: each needs
    an RLE ``segmentation`` at its image's size, and any ``bbox`` is dropped, because pycocotools
    would otherwise take a detection's area from its box, not its mask, and sort it into the
    wrong small/medium/large range (detectron2 drops it for the same reason).
    """
    if not isinstance(detections, (list, tuple)):
        hint = (
            " (this looks like a ground-truth file, not detections)"
            if isinstance(detections, Mapping) and "annotations" in detections
            else ""
        )
        raise InvalidSpecError(
            "detections must be a list of {image_id, category_id, bbox, score} objects (the COCO "
            f"results format), got {type(detections).__name__}{hint}",
            field="detections",
        )
    problems: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for i, det in enumerate(detections):
        where = f"detections[{i}]"
        if not isinstance(det, Mapping):
            problems.append({"field": where, "message": "must be an object"})
            continue
        shape = "bbox" if grids is None else "segmentation"
        missing = [k for k in ("image_id", "category_id", shape, "score") if k not in det]
        if missing:
            problems.append({"field": where, "message": f"missing {', '.join(missing)}"})
            continue
        image_id, category_id = det["image_id"], det["category_id"]
        if not is_int(image_id) or int(image_id) not in image_ids:
            problems.append(
                {
                    "field": f"{where}.image_id",
                    "message": f"image_id {image_id!r} is not an image of the ground truth; use "
                    "the ids of the annotations file's 'images' list (the file the predictions "
                    "were made for)",
                }
            )
            continue
        if not is_int(category_id) or int(category_id) not in cat_ids:
            problems.append(
                {
                    "field": f"{where}.category_id",
                    "message": f"category_id {category_id!r} is not a category of the ground "
                    f"truth (ids {sorted(cat_ids)[:10]}...); map model labels to category ids "
                    "through the dataset's label2cat (predictions_to_coco)",
                }
            )
            continue
        if grids is None and not _is_xywh(det["bbox"]):
            problems.append(
                {
                    "field": f"{where}.bbox",
                    "message": "bbox must be [x, y, width, height] in pixels, width, height >= 0",
                }
            )
            continue
        if grids is not None:
            found: list[FieldProblem] = []
            read_segmentation(
                det["segmentation"], where, grids[int(image_id)], found, polygons=False
            )
            if found:
                problems += [{"field": p.field, "message": p.message} for p in found[:1]]
                continue
        if not _is_number(det["score"]):
            problems.append({"field": f"{where}.score", "message": "score must be a number"})
            continue
        copy: dict[str, Any] = {"image_id": int(image_id), "category_id": int(category_id)}
        if grids is None:
            copy["bbox"] = [float(v) for v in det["bbox"]]
        else:
            # Compressed with str counts, the one form both libraries read (and JSON can hold).
            height, width = det["segmentation"]["size"]
            rle = compressed_rle(det["segmentation"], height, width)
            copy["segmentation"] = {"size": [height, width], "counts": rle["counts"].decode()}
        copy["score"] = float(det["score"])
        out.append(copy)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise InvalidSpecError(
            f"invalid detections: {problems[0]['field']}: {problems[0]['message']}{more}",
            field="detections",
            details=problems[:_MAX_PROBLEMS],
        )
    return out
