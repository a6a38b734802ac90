"""Torch eager inference on a trained RF-DETR checkpoint, with rfdetr's own module and
``PostProcess``; also reading such a checkpoint back into an rfdetr detector.

A segmentation model's masks are decoded as rfdetr's ``PostProcess`` does (each kept detection's
mask logits upsampled bilinearly to the image size, then ``> 0``, i.e. sigmoid above 0.5, by
:func:`~detrforge.detector.processing.decode_mask_logits`), but in a stage of their own
(:meth:`TorchPredictor.decode_masks`) so latency can time it apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detrforge.detector.model import build_detector
from detrforge.detector.predictor import (
    DEFAULT_MAX_DETECTIONS,
    Detections,
    Predictor,
    RawOutputs,
    check_predictor_options,
)
from detrforge.detector.processing import decode_mask_logits, preprocess_images
from detrforge.platform.checkpoints import CHECKPOINT_SAFE_GLOBALS, class_names_in
from detrforge.platform.errors import InvalidSpecError

__all__ = ["TorchPredictor", "checkpoint_class_names", "load_inference_detector"]


def _read_checkpoint(checkpoint: Path) -> Mapping[str, Any]:
    import torch

    if not checkpoint.is_file():
        raise InvalidSpecError(
            f"checkpoint {checkpoint} does not exist; pass the path of a trained .pth",
            field="checkpoint",
        )
    try:
        with torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS)):
            data = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise InvalidSpecError(
            f"checkpoint {checkpoint} is not a readable RF-DETR .pth ({type(e).__name__}: {e})",
            field="checkpoint",
        ) from None
    if not isinstance(data, Mapping) or not isinstance(data.get("model"), Mapping):
        raise InvalidSpecError(
            f"checkpoint {checkpoint} has no 'model' state dict; pass an RF-DETR training "
            "checkpoint such as checkpoint_best_total.pth",
            field="checkpoint",
        )
    return data


def _arch_value(data: Mapping[str, Any], key: str) -> int | None:
    for source in (data.get("model_config"), data.get("args")):
        value = source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def checkpoint_class_names(checkpoint: Path) -> list[str]:
    """The class names an rfdetr checkpoint records in its ``args`` (empty when it has none).

    Raises:
        InvalidSpecError: the file is not a readable RF-DETR checkpoint.
    """
    return class_names_in(_read_checkpoint(Path(checkpoint)))


def load_inference_detector(checkpoint: Path, size: str, resolution: int) -> Any:
    """rfdetr's detector for ``checkpoint`` (its trained head and query count) at ``resolution``.

    Raises:
        InvalidSpecError: unreadable checkpoint, or a resolution the backbone cannot take.
    """
    checkpoint = Path(checkpoint)
    data = _read_checkpoint(checkpoint)
    state = data["model"]
    # The head's width is the truth about the class count (+1 for "no object"); args can be stale.
    bias = state.get("class_embed.bias")
    num_classes = int(bias.shape[0]) - 1 if bias is not None else _arch_value(data, "num_classes")
    num_queries = _arch_value(data, "num_queries")
    group_detr = _arch_value(data, "group_detr")
    if resolution < 1:
        raise InvalidSpecError(f"resolution must be positive, got {resolution}", field="resolution")
    detector = build_detector(
        size,
        weights=checkpoint,
        num_queries=num_queries,
        group_detr=group_detr,
        num_classes=num_classes,
        resolution=resolution,
    )
    block = int(detector.model_config.patch_size) * int(detector.model_config.num_windows)
    if resolution % block:
        lower = max(block, resolution // block * block)
        raise InvalidSpecError(
            f"resolution {resolution} is not divisible by {block} (patch size x windows of "
            f"{size}); use {lower} or {lower + block}",
            field="resolution",
        )
    return detector


class TorchPredictor(Predictor[Any]):
    """Torch eager inference with rfdetr's own module and ``PostProcess``.

    Args:
        checkpoint: An rfdetr ``.pth`` (``{"model": state_dict, "args": ...}``).
        size: ``nano``, ``small``, ``medium``, ``large`` or a ``seg-*`` size (masks too).
        resolution: Square input side; must divide by the backbone's block (32 for the
            detection sizes, 12 or 24 for the segmentation ones).
        device: A torch device string (``cpu``, ``cuda``, ``cuda:1``).
        threshold: Keep detections scoring above this; 0 keeps everything (what AP needs).
        max_detections: Top-k query/class pairs kept per image.
        num_threads: torch intra-op threads; set process-wide, as torch only has one pool.
    """

    backend = "torch"

    def __init__(
        self,
        checkpoint: Path,
        size: str,
        resolution: int,
        *,
        device: str = "cpu",
        threshold: float = 0.0,
        max_detections: int = DEFAULT_MAX_DETECTIONS,
        num_threads: int | None = None,
    ) -> None:
        import torch
        from rfdetr.models import PostProcess

        check_predictor_options(threshold, max_detections)
        if num_threads is not None:
            if num_threads < 1:
                raise InvalidSpecError(
                    f"num_threads must be >= 1, got {num_threads}", field="num_threads"
                )
            torch.set_num_threads(num_threads)
        self._torch_device = torch.device(device)
        if self._torch_device.type == "cuda":
            if not torch.cuda.is_available():
                raise InvalidSpecError(
                    f"device {device!r} asked for CUDA but torch sees no GPU; use device='cpu'",
                    field="device",
                )
            if self._torch_device.index is None:
                self._torch_device = torch.device("cuda", torch.cuda.current_device())
        self.detector = load_inference_detector(Path(checkpoint), size, resolution)
        # rfdetr's own predict()/export() move the (shared) module to this device on first use;
        # left at its default (CUDA when present) it would pull our CPU model onto the GPU.
        self.detector.model.device = self._torch_device
        self.model = self.detector.model.model.to(self._torch_device).eval()
        self._postprocess = PostProcess(num_select=max_detections)
        self.device = str(self._torch_device)
        self.resolution = resolution
        self.threshold = threshold
        self.max_detections = max_detections
        self.num_classes = int(self.detector.model_config.num_classes)
        self.has_masks = bool(getattr(self.detector.model_config, "segmentation_head", False))

    @property
    def threads(self) -> int:
        import torch

        return int(torch.get_num_threads())

    def synchronize(self) -> None:
        import torch

        if self._torch_device.type == "cuda":
            torch.cuda.synchronize(self._torch_device)

    def preprocess(self, images: Sequence[Image.Image]) -> Any:
        import torch

        with torch.inference_mode():
            return preprocess_images(images, self.resolution, device=self._torch_device)

    def forward(self, batch: Any) -> RawOutputs[Any]:
        import torch

        with torch.inference_mode():
            outputs = self.model(batch)
        masks = outputs.get("pred_masks") if self.has_masks else None
        return RawOutputs(boxes=outputs["pred_boxes"], logits=outputs["pred_logits"], masks=masks)

    def postprocess(
        self, raw: RawOutputs[Any], sizes: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        import torch

        with torch.inference_mode():
            target_sizes = torch.tensor(list(sizes), device=raw.boxes.device)
            results = self._postprocess(
                {"pred_logits": raw.logits, "pred_boxes": raw.boxes}, target_sizes
            )
            queries = self._topk_queries(raw.logits) if self.has_masks else None
            out = []
            for i, result in enumerate(results):
                keep = result["scores"] > self.threshold
                out.append(
                    Detections(
                        boxes_xyxy=result["boxes"][keep].float().cpu().numpy(),
                        scores=result["scores"][keep].float().cpu().numpy(),
                        labels=result["labels"][keep].cpu().numpy().astype(np.int64),
                        queries=None
                        if queries is None
                        else queries[i][keep].cpu().numpy().astype(np.int64),
                    )
                )
        return out

    def _topk_queries(self, logits: Any) -> Any:
        """The query of each of ``PostProcess``'s top-k picks (its order and tie rule)."""
        import torch

        flat = logits.sigmoid().reshape(logits.shape[0], -1)
        k = min(self._postprocess.num_select, flat.shape[1])
        order = torch.argsort(flat, dim=1, descending=True, stable=True)[:, :k]
        return torch.div(order, logits.shape[2], rounding_mode="floor")

    def _image_masks(
        self, masks: Any, image: int, queries: np.ndarray[Any, Any], height: int, width: int
    ) -> np.ndarray[Any, np.dtype[np.bool_]]:
        import torch

        with torch.inference_mode():
            index = torch.as_tensor(queries, device=masks.device)
            return decode_mask_logits(masks[image].index_select(0, index), height, width)
