"""COCO evaluation of boxes (``bbox``) and masks (``segm``): pycocotools as the reference,
faster-coco-eval as a proven-equal fast path.

Inputs are validated and copied first (:mod:`detrforge.detector.coco_inputs`): both libraries
mutate what they are given and silently ignore detections they cannot place. Model masks become
COCO results with :func:`detrforge.detector.masks.mask_predictions_to_coco`.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detrforge.detector.coco_inputs import (
    IOU_TYPES,
    IouType,
    PathInput,
    image_grids,
    is_int,
    load_coco_json,
    prepare_detections,
    prepare_ground_truth,
)
from detrforge.detector.masks import ArrayInput
from detrforge.platform.errors import InvalidDatasetError, InvalidSpecError

__all__ = [
    "BACKENDS",
    "IOU_TYPES",
    "SEGM_STAT_NAMES",
    "STAT_NAMES",
    "ClassAP",
    "EvalResult",
    "evaluate_coco",
    "evaluate_detections_files",
    "format_stats_table",
    "predictions_to_coco",
    "stat_names",
]

# COCOeval.stats[0..11], in that order, under "<iouType>/".
_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
STAT_NAMES: tuple[str, ...] = tuple(f"bbox/{stat}" for stat in _STATS)
SEGM_STAT_NAMES: tuple[str, ...] = tuple(f"segm/{stat}" for stat in _STATS)
BACKENDS: tuple[str, ...] = ("pycocotools", "faster")


def stat_names(iou_type: str) -> tuple[str, ...]:
    """The 12 metric names of ``iou_type`` (``bbox/AP``... or ``segm/AP``...)."""
    return SEGM_STAT_NAMES if iou_type == "segm" else STAT_NAMES


@dataclass(frozen=True)
class ClassAP:
    """One category's AP (IoU 0.50:0.95) and AP50, area=all, maxDets=100; NaN when it has no GT."""

    category_id: int
    name: str
    ap: float
    ap50: float
    num_gt: int


@dataclass(frozen=True)
class EvalResult:
    """The 12 COCO stats under :func:`stat_names` (NaN where COCOeval reports -1) and per class."""

    stats: dict[str, float]
    per_class: tuple[ClassAP, ...]
    num_images: int
    num_detections: int
    backend: str
    iou_type: str = "bbox"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: NaN (undefined, e.g. no small objects) becomes ``None``."""
        return {
            "stats": {name: _json_float(value) for name, value in self.stats.items()},
            "per_class": [
                {
                    "category_id": c.category_id,
                    "name": c.name,
                    "ap": _json_float(c.ap),
                    "ap50": _json_float(c.ap50),
                    "num_gt": c.num_gt,
                }
                for c in self.per_class
            ],
            "num_images": self.num_images,
            "num_detections": self.num_detections,
            "backend": self.backend,
            "iou_type": self.iou_type,
        }


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value


# ---------------------------------------------------------------------------------------------
# Backends: each returns the COCOeval object after evaluate/accumulate/summarize.


def _silent(*args: Any, **kwargs: Any) -> None:
    return None


def _run_pycocotools(
    gt: dict[str, Any], dets: list[dict[str, Any]], img_ids: list[int], iou_type: str
) -> Any:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:
            # loadRes indexes anns[0]: an empty result set has to be built by hand.
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": gt["images"],
                "categories": gt["categories"],
                "annotations": [],
            }
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType=iou_type)
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _run_faster(
    gt: dict[str, Any], dets: list[dict[str, Any]], img_ids: list[int], iou_type: str
) -> Any:
    from faster_coco_eval import COCO, COCOeval_faster

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt, print_function=_silent)
        # Its loadRes handles an empty list (unlike pycocotools').
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, print_function=_silent)
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


# ---------------------------------------------------------------------------------------------
# Public API


def evaluate_coco(
    gt: Mapping[str, Any] | PathInput,
    detections: Sequence[Mapping[str, Any]] | PathInput,
    *,
    backend: str = "pycocotools",
    image_ids: Sequence[int] | None = None,
    iou_type: str = "bbox",
) -> EvalResult:
    """COCO evaluation of ``detections`` (COCO results format) against ``gt``.

    Args:
        gt: A COCO annotations dict, or the path of its JSON file. Never mutated.
        detections: COCO result dicts ``{image_id, category_id, bbox: [x, y, w, h], score}``
            (``segmentation`` as RLE at the image's size instead of ``bbox`` for ``segm``), or
            the path of their JSON file. An empty list scores 0.
        backend: ``"pycocotools"`` (the reference) or ``"faster"`` (faster-coco-eval, which the
            tests prove gives identical numbers).
        image_ids: Evaluate only these ground-truth images; default all of them, so images
            without any detection count as misses (this is what reproduces published numbers).
        iou_type: ``"bbox"`` (metrics ``bbox/...``) or ``"segm"`` (masks; ``segm/...``).

    Raises:
        InvalidSpecError: unknown backend, IoU type or image ids, unreadable file, malformed
            detections, or a detection whose image or category is not in the ground truth.
        InvalidDatasetError: the ground truth is not valid COCO (for ``segm``: a missing or
            malformed mask, or an image without its size).
    """
    if backend not in BACKENDS:
        raise InvalidSpecError(
            f"unknown evaluation backend {backend!r}; choose one of {list(BACKENDS)}",
            field="backend",
        )
    if iou_type not in IOU_TYPES:
        raise InvalidSpecError(
            f"unknown IoU type {iou_type!r}; choose one of {list(IOU_TYPES)}", field="iou_type"
        )
    kind: IouType = "segm" if iou_type == "segm" else "bbox"
    if isinstance(gt, (str, os.PathLike)):
        source = os.fspath(gt)
        gt = load_coco_json(gt, "annotations")
    else:
        source = "<annotations dict>"
    if isinstance(detections, (str, os.PathLike)):
        detections = load_coco_json(detections, "detections")

    gt_copy = prepare_ground_truth(gt, source, iou_type=kind)
    all_image_ids = {img["id"] for img in gt_copy["images"]}
    categories = sorted(gt_copy["categories"], key=lambda c: c["id"])
    grids = image_grids(gt_copy["images"]) if kind == "segm" else None
    dets = prepare_detections(detections, all_image_ids, {c["id"] for c in categories}, grids=grids)

    if image_ids is None:
        img_ids = sorted(all_image_ids)
    else:
        if isinstance(image_ids, (str, bytes)) or not all(is_int(i) for i in image_ids):
            raise InvalidSpecError("image_ids must be a list of integers", field="image_ids")
        img_ids = sorted({int(i) for i in image_ids})
        if not img_ids:
            raise InvalidSpecError(
                "image_ids is empty; omit it to evaluate every image", field="image_ids"
            )
        unknown = [i for i in img_ids if i not in all_image_ids]
        if unknown:
            raise InvalidSpecError(
                f"image_ids {unknown[:10]} are not images of the ground truth; pass ids from its "
                "'images' list, or omit image_ids to evaluate every image",
                field="image_ids",
            )
    if not categories:
        raise InvalidDatasetError(
            f"annotations from {source} have no categories; nothing can be evaluated",
            field="annotations",
        )

    run = _run_pycocotools if backend == "pycocotools" else _run_faster
    ev = run(gt_copy, dets, img_ids, kind)

    # COCOeval reports -1 for "no ground truth in this range"; NaN says "undefined" unambiguously.
    names = stat_names(kind)
    raw_stats = [float(s) for s in ev.stats[: len(names)]]
    stats = {name: math.nan if s == -1 else s for name, s in zip(names, raw_stats, strict=True)}
    evaluated = set(img_ids)
    per_class = _per_class(ev, categories, gt_copy["annotations"], evaluated)
    return EvalResult(
        stats=stats,
        per_class=per_class,
        num_images=len(img_ids),
        num_detections=sum(1 for d in dets if d["image_id"] in evaluated),
        backend=backend,
        iou_type=kind,
    )


def _per_class(
    ev: Any,
    categories: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    img_ids: set[int],
) -> tuple[ClassAP, ...]:
    p = ev.params
    # precision: [iouThrs x recThrs x catIds x areaRng x maxDets], -1 where a class has no GT.
    precision = np.asarray(ev.eval["precision"])
    area = list(p.areaRngLbl).index("all")
    max_dets = list(p.maxDets).index(100)
    iou50 = int(np.argmin(np.abs(np.asarray(p.iouThrs) - 0.5)))
    cat_index = {int(c): k for k, c in enumerate(p.catIds)}
    num_gt: dict[int, int] = {}
    for ann in annotations:
        if ann["image_id"] in img_ids and not ann["iscrowd"]:
            num_gt[ann["category_id"]] = num_gt.get(ann["category_id"], 0) + 1

    def mean_valid(values: np.ndarray[Any, Any]) -> float:
        valid = values[values > -1]
        return float(np.mean(valid)) if valid.size else math.nan

    out = []
    for cat in categories:
        k = cat_index[cat["id"]]
        out.append(
            ClassAP(
                category_id=cat["id"],
                name=str(cat.get("name", cat["id"])),
                ap=mean_valid(precision[:, :, k, area, max_dets]),
                ap50=mean_valid(precision[iou50, :, k, area, max_dets]),
                num_gt=num_gt.get(cat["id"], 0),
            )
        )
    return tuple(out)


def evaluate_detections_files(
    annotations: PathInput,
    detections: PathInput,
    *,
    backend: str = "pycocotools",
    iou_type: str = "bbox",
) -> EvalResult:
    """Evaluate a COCO results JSON file against a COCO annotations JSON file (the CLI's path)."""
    return evaluate_coco(Path(annotations), Path(detections), backend=backend, iou_type=iou_type)


def predictions_to_coco(
    image_id: int,
    boxes_xyxy: ArrayInput,
    scores: ArrayInput,
    labels: ArrayInput,
    label2cat: Mapping[int, int],
) -> list[dict[str, Any]]:
    """One image's predictions (absolute pixel xyxy) as COCO result dicts, full precision.

    Labels are mapped through ``label2cat`` (contiguous model label -> COCO category id); a label
    with no entry is dropped, since RF-DETR's head can emit ``label == num_classes``.
    """
    boxes = _to_numpy(boxes_xyxy, np.float64)
    score_arr = _to_numpy(scores, np.float64)
    label_arr = _to_numpy(labels, None)
    n = score_arr.shape[0] if score_arr.ndim == 1 else -1
    if boxes.size == 0 and n == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or n != boxes.shape[0] or label_arr.shape != (n,):
        raise InvalidSpecError(
            f"predictions must be boxes (N, 4), scores (N,) and labels (N,); got "
            f"{boxes.shape}, {score_arr.shape}, {label_arr.shape}",
            field="predictions",
        )
    out: list[dict[str, Any]] = []
    for (x1, y1, x2, y2), score, label in zip(
        boxes.tolist(), score_arr.tolist(), label_arr.tolist(), strict=True
    ):
        category_id = label2cat.get(int(label))
        if category_id is None:
            continue
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(category_id),
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": score,
            }
        )
    return out


def _to_numpy(value: ArrayInput, dtype: Any) -> np.ndarray[Any, Any]:
    if hasattr(value, "detach"):  # a torch tensor, on any device, in any float dtype (bf16 too)
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.double()
        value = value.numpy()
    return np.asarray(value, dtype=dtype)


def format_stats_table(result: EvalResult) -> str:
    """A plain-text table of the 12 stats, then AP / AP50 / GT count per class."""
    names = stat_names(result.iou_type)

    def fmt(value: float) -> str:
        return "   -  " if math.isnan(value) else f"{value:.4f}"

    lines = [
        f"COCO {result.iou_type} evaluation ({result.backend}): {result.num_images} images, "
        f"{result.num_detections} detections",
        "",
    ]
    width = max(len(name) for name in names)
    lines += [f"  {name:<{width}}  {fmt(result.stats[name])}" for name in names]
    if result.per_class:
        name_w = max(8, *(len(c.name) for c in result.per_class))
        lines += ["", f"  {'id':>5}  {'category':<{name_w}}  {'AP':>6}  {'AP50':>6}  {'GT':>6}"]
        lines += [
            f"  {c.category_id:>5}  {c.name:<{name_w}}  {fmt(c.ap):>6}  {fmt(c.ap50):>6}  "
            f"{c.num_gt:>6}"
            for c in result.per_class
        ]
    return "\n".join(lines)
