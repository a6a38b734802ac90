"""Instance masks in COCO form: compressed run-length encoding (RLE) and pixel-exact polygons.

COCO stores a mask as polygons in pixel-edge coordinates or as RLE: column-major runs of 0s and
1s over the ``size = [height, width]`` grid, either as a list of run lengths (uncompressed) or
as pycocotools' ASCII string (compressed). pycocotools trusts RLE blindly: runs that do not add up
to height x width make it read or write past the mask buffer, so every RLE from outside is read by
:func:`rle_counts` here first, and pycocotools only sees counts that cover the grid exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from detrforge.platform.errors import InvalidSpecError

__all__ = [
    "ArrayInput",
    "bbox_iou",
    "compressed_rle",
    "encode_mask",
    "mask_outline",
    "mask_predictions_to_coco",
    "rle_counts",
]

# A numpy array, a torch tensor (any device/dtype) or a nested sequence of numbers.
ArrayInput = Any

# pycocotools keeps run lengths as 32-bit unsigned integers.
_MAX_RUN = 2**32 - 1
# Compressed counts: 5 bits per character, offset from "0" (48); bit 6 says "more follows".
_CHAR_LOW, _CHAR_HIGH = 48, 48 + 63
_MAX_CHARS_PER_RUN = 7  # 7 x 5 bits hold any 32-bit run (and its difference to the run before)


def rle_counts(counts: Any) -> list[int] | str:
    """The run lengths of an RLE ``counts`` value (list or compressed string), or why not.

    Returns a list of non-negative run lengths, or a sentence saying what is wrong with them.
    """
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            return "uncompressed RLE counts must be a list of integers"
        if any(c < 0 or c > _MAX_RUN for c in counts):
            return "uncompressed RLE counts must be integers from 0 to 2**32 - 1"
        return list(counts)
    if isinstance(counts, bytes):
        counts = counts.decode("latin-1")  # any byte outside the run alphabet is named below
    if not isinstance(counts, str):
        return f"RLE counts must be a string (compressed) or a list of integers, not {counts!r}"
    return _decode_compressed(counts)


def _decode_compressed(text: str) -> list[int] | str:
    # pycocotools' rleFrString, vectorised: each run is a little-endian base-32 number (bit 6 of a
    # character says "more follows", bit 5 of the last one is the sign); from the third run on it
    # is stored as the difference to the run two places before.
    bad = next((c for c in text if not _CHAR_LOW <= ord(c) <= _CHAR_HIGH), None)
    if bad is not None:
        return f"compressed RLE counts hold {bad!r}, not a run-length character"
    if not text:
        return []
    codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64) - _CHAR_LOW
    last = (codes & 0x20) == 0
    if not last[-1]:
        return "compressed RLE counts end in the middle of a run; re-export the mask"
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _MAX_CHARS_PER_RUN:
        return "compressed RLE counts hold a run too long for pycocotools; re-export the mask"
    digit = np.arange(codes.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((codes & 0x1F) << (5 * digit), starts)
    negative = (codes[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * lengths[negative])
    runs = values.copy()
    runs[3::2] = np.cumsum(values[1::2])[1:]  # odd runs: differences from the run two before
    runs[4::2] = np.cumsum(values[2::2])[1:]  # even runs from the third on
    if runs.min() < 0 or runs.max() > _MAX_RUN:
        return "compressed RLE counts decode to a negative or oversized run; re-export the mask"
    return [int(v) for v in runs]


def compressed_rle(segmentation: Mapping[str, Any], height: int, width: int) -> dict[str, Any]:
    """pycocotools' compressed form of an RLE already checked by :func:`rle_counts`."""
    if isinstance(segmentation["counts"], list):
        rle: dict[str, Any] = mask_utils.frPyObjects(dict(segmentation), height, width)
        return rle
    counts = segmentation["counts"]
    encoded = counts.encode() if isinstance(counts, str) else counts
    return {"size": [height, width], "counts": encoded}


def encode_mask(mask: np.ndarray[Any, Any]) -> dict[str, Any]:
    """A binary ``(height, width)`` mask as compressed RLE ready for JSON (``counts`` a str)."""
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_outline(mask: np.ndarray[Any, Any]) -> list[float]:
    """The outline of a convex pixel mask as one COCO polygon that rasterises back to it exactly.

    pycocotools fills a polygon in pixel-edge coordinates (a square from (2, 3) to (10, 9) covers
    columns 2..9 and rows 3..8), so tracing each row's run along pixel edges gives a staircase
    that covers precisely the mask's pixels; collinear points are dropped.

    Raises:
        ValueError: when a row of the mask has a gap or the mask is empty (not convex).
    """
    rows = np.flatnonzero(np.asarray(mask).any(axis=1))
    if rows.size == 0 or rows[-1] - rows[0] + 1 != rows.size:
        raise ValueError("mask_outline needs a non-empty mask without empty rows between pixels")
    runs: list[tuple[int, int, int]] = []
    for row in rows.tolist():
        cols = np.flatnonzero(mask[row])
        if cols[-1] - cols[0] + 1 != cols.size:
            raise ValueError(f"row {row} of the mask has a gap; mask_outline needs a convex mask")
        runs.append((row, int(cols[0]), int(cols[-1]) + 1))
    points: list[tuple[int, int]] = []
    for row, _, right in runs:  # down the right edge
        points += [(right, row), (right, row + 1)]
    for row, left, _ in reversed(runs):  # back up the left edge
        points += [(left, row + 1), (left, row)]
    corners = _corners(points)
    return [float(v) for point in corners for v in point]


def _corners(points: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """``points`` of a closed axis-aligned path without repeats and straight-through points."""
    unique = [p for i, p in enumerate(points) if p != points[i - 1]]
    kept = []
    for i, (x, y) in enumerate(unique):
        (px, py), (nx, ny) = unique[i - 1], unique[(i + 1) % len(unique)]
        if not ((px == x == nx) or (py == y == ny)):
            kept.append((x, y))
    return kept


def mask_predictions_to_coco(
    image_id: int,
    masks: ArrayInput,
    scores: ArrayInput,
    labels: ArrayInput,
    label2cat: Mapping[int, int],
    *,
    image_size: tuple[int, int],
    boxes_xyxy: ArrayInput | None = None,
) -> list[dict[str, Any]]:
    """One image's predicted masks as COCO result dicts with compressed-RLE ``segmentation``.

    Args:
        masks: ``(N, H, W)`` or ``(N, 1, H, W)`` binary masks (bool, or numbers that are all 0
            or 1; threshold probabilities first) already at the image's size.
        image_size: ``(height, width)`` of the image; masks of another size are refused, since
            COCO compares masks pixel for pixel on the image grid.
        boxes_xyxy: Optional ``(N, 4)`` absolute boxes: each result then carries a ``bbox`` too,
            so one list serves bbox and segm evaluation.

    Labels are mapped through ``label2cat`` as in ``predictions_to_coco``; unmapped ones dropped.

    Raises:
        InvalidSpecError: shapes that disagree, masks that are not binary or not at image size.
    """
    mask_arr = _numpy(masks)
    score_arr = _numpy(scores).astype(np.float64)
    label_arr = _numpy(labels)
    if mask_arr.ndim == 4 and mask_arr.shape[1] == 1:
        mask_arr = mask_arr[:, 0]
    n = score_arr.shape[0] if score_arr.ndim == 1 else -1
    box_arr = None if boxes_xyxy is None else _numpy(boxes_xyxy).astype(np.float64)
    if box_arr is not None and box_arr.size == 0 and n == 0:
        box_arr = box_arr.reshape(0, 4)
    if (
        mask_arr.ndim != 3
        or mask_arr.shape[0] != n
        or label_arr.shape != (n,)
        or (box_arr is not None and box_arr.shape != (n, 4))
    ):
        boxes_shape = "" if box_arr is None else f", boxes {box_arr.shape}"
        raise InvalidSpecError(
            f"predictions must be masks (N, H, W), scores (N,) and labels (N,); got masks "
            f"{mask_arr.shape}, scores {score_arr.shape}, labels {label_arr.shape}{boxes_shape}",
            field="predictions",
        )
    if n and tuple(mask_arr.shape[1:]) != tuple(image_size):
        raise InvalidSpecError(
            f"masks are {mask_arr.shape[1]}x{mask_arr.shape[2]} (height x width) but the image "
            f"is {image_size[0]}x{image_size[1]}; upsample the masks to the image size first",
            field="masks",
        )
    if mask_arr.dtype != np.bool_:
        if mask_arr.size and not np.isin(mask_arr, (0, 1)).all():
            raise InvalidSpecError(
                "masks must be binary (bool or 0/1); threshold mask probabilities first",
                field="masks",
            )
        mask_arr = mask_arr.astype(bool)
    out: list[dict[str, Any]] = []
    pairs = zip(score_arr.tolist(), label_arr.tolist(), strict=True)
    for index, (score, label) in enumerate(pairs):
        category_id = label2cat.get(int(label))
        if category_id is None:
            continue
        result: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(category_id),
            "segmentation": encode_mask(mask_arr[index]),
            "score": score,
        }
        if box_arr is not None:
            x1, y1, x2, y2 = box_arr[index].tolist()
            result["bbox"] = [x1, y1, x2 - x1, y2 - y1]
        out.append(result)
    return out


def _numpy(value: ArrayInput) -> np.ndarray[Any, Any]:
    if hasattr(value, "detach"):  # a torch tensor on any device, in any dtype (bf16 too)
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.double()
        value = value.numpy()
    return np.asarray(value)


def bbox_iou(first: Sequence[float], second: Sequence[float]) -> float:
    """Intersection over union of two ``[x, y, width, height]`` boxes (0 when both are empty)."""
    ax, ay, aw, ah = first
    bx, by, bw, bh = second
    overlap_w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    overlap_h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    overlap = overlap_w * overlap_h
    union = aw * ah + bw * bh - overlap
    return overlap / union if union > 0 else 0.0
