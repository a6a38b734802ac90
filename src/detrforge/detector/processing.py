"""Pre- and post-processing shared by the predictors, in torch and in a numpy twin of each.

Both follow rfdetr ``predict()``: bytes / 255, antialias-free bilinear resize to
``resolution x resolution``, ImageNet normalisation; and rfdetr's ``PostProcess``: per-class
sigmoid, top-k over every query/class pair, boxes scaled back to the original image and clamped.
The numpy versions agree with torch to float32 rounding, so an ONNX Runtime pipeline runs no
torch op and its detections differ from torch eager only by the numerics of the forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from detrforge.detector.predictor import DEFAULT_MAX_DETECTIONS, Detections
from detrforge.platform.errors import InvalidSpecError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "postprocess_numpy",
    "preprocess_images",
    "preprocess_images_numpy",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_images(
    images: Sequence[Image.Image], resolution: int, *, device: Any = "cpu"
) -> Any:
    """rfdetr ``predict()``'s model input for PIL images, as a float32 torch tensor on ``device``.

    Bytes are divided by 255 (as ``to_tensor``), resized to ``resolution`` square with bilinear
    interpolation and no antialiasing (what rfdetr trains with), then ImageNet-normalised.
    """
    import torch
    import torchvision.transforms.functional as tvf

    if not images:
        raise InvalidSpecError("no images to preprocess", field="images")
    scale = torch.tensor(255.0, dtype=torch.float32, device=device)
    resized = []
    for image in images:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        array = np.asarray(rgb, dtype=np.uint8)
        chw = torch.from_numpy(array.transpose(2, 0, 1).copy()).to(device)
        # A tensor divisor keeps correctly rounded division on every device (rfdetr does the same).
        floats = chw.to(torch.float32).div_(scale)
        resized.append(tvf.resize(floats, [resolution, resolution], antialias=False))
    return tvf.normalize(torch.stack(resized), list(IMAGENET_MEAN), list(IMAGENET_STD))


def _resize_taps(
    in_size: int, out_size: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Half-pixel bilinear taps as torch computes them: both source indices, second weight."""
    # In float32, like torch's kernel: float64 positions would differ from it by up to ~1e-4.
    half = np.float32(0.5)
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.maximum(scale * (np.arange(out_size, dtype=np.float32) + half) - half, np.float32(0))
    first = np.minimum(src.astype(np.intp), in_size - 1)
    second = np.minimum(first + 1, in_size - 1)
    weight = np.clip(src - first.astype(np.float32), np.float32(0), np.float32(1))
    return first, second, weight


def preprocess_images_numpy(
    images: Sequence[Image.Image], resolution: int
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """:func:`preprocess_images` in numpy alone (equal up to float32 rounding, ~1e-6).

    An ONNX Runtime pipeline then runs no torch op: torch's idle OpenMP workers spin between
    parallel regions and would compete with ORT's own thread pool.
    """
    if not images:
        raise InvalidSpecError("no images to preprocess", field="images")
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    out = np.empty((len(images), 3, resolution, resolution), dtype=np.float32)
    for n, image in enumerate(images):
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        pixels = np.asarray(rgb, dtype=np.float32) / np.float32(255.0)  # H, W, 3
        y0, y1, wy = _resize_taps(pixels.shape[0], resolution)
        x0, x1, wx = _resize_taps(pixels.shape[1], resolution)
        wy, wx = wy[:, None, None], wx[None, :, None]
        # Horizontal pass first, then vertical: torch's order of operations.
        left, right = pixels[:, x0], pixels[:, x1]
        across = left * (1 - wx) + right * wx
        resized = across[y0] * (1 - wy) + across[y1] * wy
        out[n] = ((resized - mean) / std).transpose(2, 0, 1)
    return out


def postprocess_numpy(
    boxes_cxcywh: np.ndarray[Any, Any],
    logits: np.ndarray[Any, Any],
    sizes: Sequence[tuple[int, int]],
    *,
    max_detections: int = DEFAULT_MAX_DETECTIONS,
    threshold: float = 0.0,
) -> list[Detections]:
    """rfdetr's ``PostProcess`` in numpy (same top-k tie rule), then the score threshold.

    Args:
        boxes_cxcywh: Normalised boxes (B, Q, 4).
        logits: Class logits (B, Q, C), the last slot being "no object".
        sizes: ``(height, width)`` of each original image.
    """
    boxes_cxcywh = np.asarray(boxes_cxcywh, dtype=np.float32)
    logits = np.asarray(logits, dtype=np.float32)
    batch, _, num_slots = logits.shape
    if len(sizes) != batch or boxes_cxcywh.shape[0] != batch:
        raise InvalidSpecError(f"{len(sizes)} image sizes for a batch of {batch}", field="sizes")
    with np.errstate(over="ignore"):
        prob = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    flat = prob.reshape(batch, -1)
    k = min(max_detections, flat.shape[1])
    out: list[Detections] = []
    for i, (height, width) in enumerate(sizes):
        # Descending score, ties by ascending flat index: torch.argsort(descending, stable=True).
        order = np.argsort(-flat[i], kind="stable")[:k]
        scores = flat[i, order]
        queries, labels = np.divmod(order, num_slots)
        cx, cy, w, h = boxes_cxcywh[i, queries].T
        xyxy = np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=1)
        scale = np.array([width, height, width, height], dtype=np.float32)
        xyxy = np.minimum(np.maximum(xyxy * scale, 0.0), scale).astype(np.float32)
        keep = scores > threshold
        out.append(
            Detections(
                boxes_xyxy=np.ascontiguousarray(xyxy[keep]),
                scores=scores[keep].astype(np.float32),
                labels=labels[keep].astype(np.int64),
            )
        )
    return out
