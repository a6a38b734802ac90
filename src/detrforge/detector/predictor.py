"""The predictor interface: ``preprocess -> forward -> postprocess (-> decode_masks)`` and the
detections it gives.

Implementations are :class:`~detrforge.detector.torch_predictor.TorchPredictor` (torch eager) and
:class:`~detrforge.detector.onnx_predictor.OnnxPredictor` (ONNX Runtime). The stages are separate
methods so latency can time the forward pass alone, and a segmentation model's mask decoding
(upsampling each kept mask to the image and thresholding it) apart from both.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from PIL import Image

from detrforge.platform.errors import InvalidSpecError

__all__ = [
    "DEFAULT_MAX_DETECTIONS",
    "Detections",
    "Predictor",
    "RawOutputs",
    "check_predictor_options",
]

# COCO scores at most 100 detections per image; more only inflates the result files.
DEFAULT_MAX_DETECTIONS = 100

ArrayT = TypeVar("ArrayT")


@dataclass(frozen=True)
class Detections:
    """One image's detections: xyxy boxes in pixels of the original image, scores, labels.

    ``labels`` are the model's contiguous class indices (map them with :func:`label2cat_for`); the
    last logit slot (``label == num_classes``) is RF-DETR's "no object" and has no category.
    """

    boxes_xyxy: np.ndarray[Any, np.dtype[np.float32]]
    scores: np.ndarray[Any, np.dtype[np.float32]]
    labels: np.ndarray[Any, np.dtype[np.int64]]
    # Segmentation models: the query each detection came from (which mask is its own), then,
    # once decoded, the (N, height, width) boolean masks at the original image's size.
    queries: np.ndarray[Any, np.dtype[np.int64]] | None = None
    masks: np.ndarray[Any, np.dtype[np.bool_]] | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@dataclass(frozen=True)
class RawOutputs(Generic[ArrayT]):
    """The forward pass's outputs: normalised cxcywh boxes (B, Q, 4), class logits (B, Q, C) and,
    from a segmentation model, mask logits (B, Q, Hm, Wm) at the mask head's resolution."""

    boxes: ArrayT
    logits: ArrayT
    masks: ArrayT | None = None


class Predictor(abc.ABC, Generic[ArrayT]):
    """An RF-DETR detector behind ``preprocess -> forward -> postprocess``.

    ``sizes`` are ``(height, width)`` of each original image, as rfdetr's ``target_sizes``.
    """

    backend: str
    device: str
    resolution: int
    threshold: float
    max_detections: int
    # True for a segmentation model: postprocess gives queries and decode_masks the masks.
    has_masks: bool = False

    @abc.abstractmethod
    def preprocess(self, images: Sequence[Image.Image]) -> ArrayT:
        """The model input (B, 3, resolution, resolution) for ``images``, on the model's device."""

    @abc.abstractmethod
    def forward(self, batch: ArrayT) -> RawOutputs[ArrayT]:
        """The model alone on a preprocessed batch."""

    @abc.abstractmethod
    def postprocess(
        self, raw: RawOutputs[ArrayT], sizes: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        """Top-k detections per image, boxes in original-image pixels, as numpy on the host."""

    @property
    @abc.abstractmethod
    def threads(self) -> int:
        """CPU threads the forward pass may use (torch intra-op threads, or ORT intra-op)."""

    def decode_masks(
        self,
        raw: RawOutputs[ArrayT],
        detections: list[Detections],
        sizes: Sequence[tuple[int, int]],
    ) -> list[Detections]:
        """``detections`` with their masks at each image's size (unchanged without a mask head):
        each kept detection's mask upsampled to its image's size and thresholded at logit 0."""
        if not self.has_masks or raw.masks is None:
            return detections
        out = []
        for image, (det, (height, width)) in enumerate(zip(detections, sizes, strict=True)):
            queries = det.queries if det.queries is not None else np.zeros(0, np.int64)
            masks = self._image_masks(raw.masks, image, queries, height, width)
            out.append(dataclasses.replace(det, masks=masks))
        return out

    def _image_masks(
        self, masks: ArrayT, image: int, queries: np.ndarray[Any, Any], height: int, width: int
    ) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """The (N, height, width) masks of ``queries`` of batch item ``image`` (mask heads only)."""
        raise NotImplementedError(f"{type(self).__name__} has no mask head")

    def synchronize(self) -> None:  # noqa: B027 -- a no-op unless the device runs asynchronously
        """Wait until queued device work is done, so a clock read after it is honest."""

    def predict(self, images: Sequence[Image.Image]) -> list[Detections]:
        """Detections for each image, in input order."""
        if not images:
            return []
        sizes = [(image.height, image.width) for image in images]
        raw = self.forward(self.preprocess(images))
        detections = self.postprocess(raw, sizes)
        return self.decode_masks(raw, detections, sizes) if self.has_masks else detections


def check_predictor_options(threshold: float, max_detections: int) -> None:
    """Refuse a score threshold outside [0, 1) or fewer than one detection per image."""
    if not 0.0 <= threshold < 1.0:
        raise InvalidSpecError(
            f"threshold must be in [0, 1), got {threshold}; use 0 to keep every detection for AP",
            field="threshold",
        )
    if max_detections < 1:
        raise InvalidSpecError(
            f"max_detections must be >= 1, got {max_detections}", field="max_detections"
        )
