"""Checking one COCO ``segmentation`` (polygons or RLE) against its image and box.

What rfdetr's loader (``rfdetr.datasets.coco.convert_coco_poly_to_mask``, 1.11.2) and pycocotools
accept, and what breaks them:

- Polygons: a list of ``[x1, y1, x2, y2, ...]`` lists in pixel-edge coordinates. pycocotools
  reads a first polygon of exactly 4 numbers as a *box*, fails on fewer, drops a trailing odd
  coordinate silently, and rasterises points far outside the image into huge buffers; a flat list
  of numbers (no inner list) makes it raise.
- RLE: ``{"size": [height, width], "counts": ...}``, counts a compressed string or a list of run
  lengths. rfdetr decodes it at its own ``size`` and stacks it with the image-sized masks of the
  other objects, so another size fails the whole batch; runs that do not add up to the grid make
  pycocotools read or write past its buffer.
- Crowd regions (``iscrowd: 1``) are RLE by COCO convention; rfdetr drops them from training
  targets and reads either form for evaluation, and accepts RLE on ordinary objects too, so
  neither pairing is a problem here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import pycocotools.mask as mask_utils

from detrforge.detector.masks import bbox_iou, compressed_rle, rle_counts

__all__ = [
    "EDGE_TOLERANCE_PX",
    "MIN_BOX_MASK_IOU",
    "FieldProblem",
    "Mask",
    "has_segmentation",
    "mask_problems",
    "read_segmentation",
]

# A box or polygon point may overshoot the image by this many pixels (exporters round
# coordinates) before it is a problem. The box-vs-mask comparison grows both boxes by it too: a
# rasterised mask's extent is whole pixels, so for an object 4 px wide 1 px of rounding alone
# drops the IoU to ~0.73 (seen in COCO val2014); grown by 1 px, COCO's worst is 0.79.
EDGE_TOLERANCE_PX = 1.0
# Below this IoU between an annotation's bbox and its mask's extent they cannot be describing the
# same object: it is COCO's own matching threshold (AP50), under which a detection of one would
# count as a miss of the other. Every annotation of COCO val2014's 100-image subset scores >= 0.79.
MIN_BOX_MASK_IOU = 0.5


class FieldProblem(NamedTuple):
    """One problem, naming the JSON field (``annotations[3].segmentation[0]``) and the fix."""

    field: str
    message: str


@dataclass(frozen=True)
class Mask:
    """A readable segmentation: pycocotools' compressed RLE and the mask's extent and area."""

    kind: str  # "polygons" or "rle"
    rle: dict[str, Any]
    # [x, y, width, height]: the polygon points' extent (exact), or the RLE's pixel extent.
    extent: tuple[float, float, float, float]
    area: int


def has_segmentation(segmentation: Any) -> bool:
    """Whether an annotation carries a mask at all (absent, ``None`` and ``[]`` mean none)."""
    return segmentation is not None and segmentation != []


def read_segmentation(
    segmentation: Any,
    where: str,
    image_size: tuple[int, int] | None,
    problems: list[FieldProblem],
    *,
    polygons: bool = True,
) -> Mask | None:
    """The mask ``segmentation`` describes, appending each problem with it to ``problems``.

    Args:
        where: The annotation's JSON path (``annotations[3]``); problems name fields under it.
        image_size: ``(width, height)`` of the image, or None when unknown: then only the
            structure is checked, and no mask is returned.
        polygons: Whether polygons are allowed (COCO results must be RLE).

    Returns:
        The mask, or None when it has problems or the image size is unknown.
    """
    field = f"{where}.segmentation"
    if isinstance(segmentation, dict):
        return _read_rle(segmentation, field, image_size, problems)
    if polygons and isinstance(segmentation, list) and segmentation:
        return _read_polygons(segmentation, field, image_size, problems)
    shape = "a list of polygons [[x1, y1, x2, y2, ...], ...] or " if polygons else ""
    problems.append(
        FieldProblem(
            field,
            f"segmentation must be {shape}an RLE object {{size: [height, width], counts}}, "
            f"not {_short(segmentation)}",
        )
    )
    return None


def _read_polygons(
    polygons: list[Any],
    field: str,
    image_size: tuple[int, int] | None,
    problems: list[FieldProblem],
) -> Mask | None:
    if all(_is_number(v) for v in polygons):
        problems.append(
            FieldProblem(
                field,
                "segmentation is a flat list of numbers; COCO polygons are a list of polygons, "
                "so wrap it in its own brackets: [[x1, y1, x2, y2, ...]]",
            )
        )
        return None
    before = len(problems)
    for index, polygon in enumerate(polygons):
        where = f"{field}[{index}]"
        if not isinstance(polygon, list) or not all(_is_number(v) for v in polygon):
            problems.append(
                FieldProblem(
                    where,
                    f"each polygon must be a list of numbers [x1, y1, x2, y2, ...], not "
                    f"{_short(polygon)}",
                )
            )
        elif len(polygon) % 2:
            problems.append(
                FieldProblem(
                    where,
                    f"polygon has an odd number of coordinates ({len(polygon)}); each point is "
                    "an x and a y, so one is missing or extra",
                )
            )
        elif len(polygon) < 6:
            problems.append(
                FieldProblem(
                    where,
                    f"polygon has {len(polygon) // 2} point(s); a polygon needs at least 3 "
                    "(6 numbers), or drop it",
                )
            )
        elif image_size is not None:
            _check_inside(polygon, where, image_size, problems)
    if len(problems) > before or image_size is None:
        return None
    width, height = image_size
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    xs = [float(v) for polygon in polygons for v in polygon[0::2]]
    ys = [float(v) for polygon in polygons for v in polygon[1::2]]
    extent = (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))
    return Mask("polygons", rle, extent, int(mask_utils.area(rle)))


def _check_inside(
    polygon: list[float], where: str, image_size: tuple[int, int], problems: list[FieldProblem]
) -> None:
    width, height = image_size
    tol = EDGE_TOLERANCE_PX
    for x, y in zip(polygon[0::2], polygon[1::2], strict=True):
        if not (-tol <= x <= width + tol and -tol <= y <= height + tol):
            problems.append(
                FieldProblem(
                    where,
                    f"polygon point ({x}, {y}) lies outside the {width}x{height} image (beyond "
                    f"{tol:g} px); clip the polygon to the image, or check it belongs to this "
                    "image",
                )
            )
            return


def _read_rle(
    rle: dict[str, Any],
    field: str,
    image_size: tuple[int, int] | None,
    problems: list[FieldProblem],
) -> Mask | None:
    if "size" not in rle or "counts" not in rle:
        missing = " and ".join(key for key in ("size", "counts") if key not in rle)
        problems.append(FieldProblem(field, f"RLE segmentation is missing {missing}"))
        return None
    size = rle["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        problems.append(
            FieldProblem(f"{field}.size", f"RLE size must be [height, width], not {_short(size)}")
        )
        return None
    height, width = size
    if image_size is not None and (width, height) != image_size:
        problems.append(
            FieldProblem(
                f"{field}.size",
                f"RLE size is {size} (height, width) but the image is {image_size[1]}x"
                f"{image_size[0]} (height x width); encode the mask at the image's size",
            )
        )
        return None
    runs = rle_counts(rle["counts"])
    if isinstance(runs, str):
        problems.append(FieldProblem(f"{field}.counts", runs))
        return None
    if sum(runs) != height * width:
        problems.append(
            FieldProblem(
                f"{field}.counts",
                f"RLE counts cover {sum(runs)} pixels but size {size} has {height * width}; "
                "re-export the mask",
            )
        )
        return None
    if image_size is None:
        return None
    compressed = compressed_rle(rle, height, width)
    x, y, w, h = (float(v) for v in mask_utils.toBbox(compressed))
    return Mask("rle", compressed, (x, y, w, h), int(mask_utils.area(compressed)))


def mask_problems(mask: Mask, where: str, bbox: Any) -> list[FieldProblem]:
    """What a readable mask says is wrong with its annotation: empty, or far from its bbox."""
    if mask.area == 0:
        return [
            FieldProblem(
                f"{where}.segmentation",
                "the mask covers no pixel of the image; redraw it or drop the annotation",
            )
        ]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        return []  # the bbox's own check reports it
    pad = EDGE_TOLERANCE_PX
    iou = bbox_iou(_grown(bbox, pad), _grown(mask.extent, pad))
    if iou >= MIN_BOX_MASK_IOU:
        return []
    extent = [round(v, 2) for v in mask.extent]
    return [
        FieldProblem(
            f"{where}.bbox",
            f"bbox {bbox} disagrees with its mask, whose extent is {extent} (IoU {iou:.2f}, "
            f"below {MIN_BOX_MASK_IOU}); set bbox to the mask's extent, or fix the mask",
        )
    ]


def _grown(box: Sequence[float], pad: float) -> tuple[float, float, float, float]:
    x, y, w, h = box
    return (x - pad, y - pad, w + 2 * pad, h + 2 * pad)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
