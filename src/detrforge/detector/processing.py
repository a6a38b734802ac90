"""Pre- and post-processing shared by the predictors, in torch and in a numpy twin of each.

Both follow rfdetr ``predict()``: bytes / 255, antialias-free bilinear resize to
``resolution x resolution``, ImageNet normalisation; and rfdetr's ``PostProcess``: per-class
sigmoid, top-k over every query/class pair, boxes scaled back to the original image and clamped;
for a segmentation model, each kept query's mask logits upsampled bilinearly (half-pixel centres,
``align_corners=False``) to the original image and thresholded at logit 0 (sigmoid above 0.5).
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
    "decode_mask_logits",
    "decode_mask_logits_numpy",
    "postprocess_numpy",
    "preprocess_images",
    "preprocess_images_numpy",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Masks upsampled per step (rfdetr's own chunk): bounds the float32 peak memory to 32 image-sized
# planes however many detections an image keeps.
MASK_CHUNK = 32
# The numpy decoder's step, in float32 output pixels (1 MiB per plane buffer).
_DECODE_PIXELS = 2**18


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
    with_queries: bool = False,
) -> list[Detections]:
    """rfdetr's ``PostProcess`` in numpy (same top-k tie rule), then the score threshold.

    Args:
        boxes_cxcywh: Normalised boxes (B, Q, 4).
        logits: Class logits (B, Q, C), the last slot being "no object".
        sizes: ``(height, width)`` of each original image.
        with_queries: Also give each detection's query (a segmentation model's mask index).
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
                queries=queries[keep].astype(np.int64) if with_queries else None,
            )
        )
    return out


def decode_mask_logits(logits: Any, height: int, width: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Mask logits (N, h, w), a torch tensor on any device, as (N, height, width) boolean masks.

    rfdetr ``PostProcess``'s decoding: bilinear upsampling with ``align_corners=False``, then
    logit > 0 (sigmoid > 0.5).
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    masks = np.empty((logits.shape[0], height, width), dtype=bool)
    with torch.inference_mode():
        for start in range(0, logits.shape[0], MASK_CHUNK):
            upsampled = F.interpolate(
                logits[start : start + MASK_CHUNK].unsqueeze(1),
                size=(height, width),
                mode="bilinear",
                align_corners=False,
            )
            masks[start : start + MASK_CHUNK] = (upsampled[:, 0] > 0.0).cpu().numpy()
    return masks


def decode_mask_logits_numpy(
    logits: np.ndarray[Any, Any], height: int, width: int
) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """:func:`decode_mask_logits` in numpy alone: torch's bilinear taps and order of operations
    (rows resampled across, then down) in float32, so the masks agree pixel for pixel except
    where the upsampled logit is within float32 rounding of 0."""
    logits = np.asarray(logits, dtype=np.float32)
    count = logits.shape[0]
    masks = np.empty((count, height, width), dtype=bool)
    y0, y1, wy = _resize_taps(logits.shape[1], height)
    x0, x1, wx = _resize_taps(logits.shape[2], width)
    one = np.float32(1)
    wx0, wy0, wy1 = one - wx, (one - wy)[:, None], wy[:, None]
    # A few image-sized planes per step, reused in place: ~4x faster than whole-chunk temporaries
    # (the decode is memory-bound; these stay in cache).
    step = max(1, _DECODE_PIXELS // max(1, height * width))
    top = np.empty((min(step, count), height, width), dtype=np.float32)
    bottom = np.empty_like(top)
    for start in range(0, count, step):
        chunk = logits[start : start + step]
        across = chunk[:, :, x0] * wx0 + chunk[:, :, x1] * wx
        upper, lower = top[: len(chunk)], bottom[: len(chunk)]
        np.take(across, y0, axis=1, out=upper)
        upper *= wy0
        np.take(across, y1, axis=1, out=lower)
        lower *= wy1
        upper += lower
        np.greater(upper, 0.0, out=masks[start : start + len(chunk)])
    return masks
