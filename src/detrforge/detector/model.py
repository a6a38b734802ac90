"""The RF-DETR family adapter: the one place that knows rfdetr's classes and config objects.

Everything rfdetr-specific (size -> class, the training config, the Lightning module and data
module, loading a trained ``.pth``) goes through here, so an rfdetr upgrade touches one file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detrforge.detector.specs import FinetuneSpec
from detrforge.platform.errors import InvalidSpecError

__all__ = ["TrainingParts", "build_detector", "build_training_parts"]

# rfdetr reads this before anything else; weights are never fetched from a hub here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _detector_class(size: str) -> type[Any]:
    from rfdetr import (
        RFDETRLarge,
        RFDETRMedium,
        RFDETRNano,
        RFDETRSeg2XLarge,
        RFDETRSegLarge,
        RFDETRSegMedium,
        RFDETRSegNano,
        RFDETRSegSmall,
        RFDETRSegXLarge,
        RFDETRSmall,
    )

    classes: dict[str, type[Any]] = {
        "nano": RFDETRNano,
        "small": RFDETRSmall,
        "medium": RFDETRMedium,
        "large": RFDETRLarge,
        # Instance segmentation: the same detector with a mask head (rfdetr's RFDETRSeg*).
        "seg-nano": RFDETRSegNano,
        "seg-small": RFDETRSegSmall,
        "seg-medium": RFDETRSegMedium,
        "seg-large": RFDETRSegLarge,
        "seg-xlarge": RFDETRSegXLarge,
        "seg-2xlarge": RFDETRSeg2XLarge,
    }
    if size not in classes:
        raise InvalidSpecError(
            f"unknown model size {size!r}; choose one of {sorted(classes)}", field="model_size"
        )
    return classes[size]


def build_detector(
    size: str,
    *,
    weights: Path | None = None,
    num_queries: int | None = None,
    group_detr: int | None = None,
    gradient_checkpointing: bool = False,
    num_classes: int | None = None,
    resolution: int | None = None,
) -> Any:
    """An rfdetr detector of ``size`` (``seg-*``: with a mask head); from scratch unless
    ``weights`` names a local ``.pth``."""
    kwargs: dict[str, Any] = {"pretrain_weights": str(weights) if weights else None}
    if num_queries is not None:
        kwargs["num_queries"] = num_queries
    if group_detr is not None:
        kwargs["group_detr"] = group_detr
    if gradient_checkpointing:
        kwargs["gradient_checkpointing"] = True
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if resolution is not None:
        kwargs["resolution"] = resolution
    return _detector_class(size)(**kwargs)


@dataclass
class TrainingParts:
    """What one training process needs: the detector, rfdetr's configs and Lightning pieces."""

    detector: Any
    train_config: Any
    module: Any
    datamodule: Any


def build_training_parts(
    spec: FinetuneSpec,
    *,
    dataset_dir: Path,
    output_dir: Path,
    weights: Path | None,
    accelerator: str,
) -> TrainingParts:
    """rfdetr's own Lightning module and data module for ``spec`` (its loss, matcher, augments)."""
    from rfdetr.detr import _prepare_run_config
    from rfdetr.training import RFDETRDataModule, RFDETRModelModule

    detector = build_detector(
        spec.model_size,
        weights=weights,
        num_queries=spec.num_queries,
        group_detr=spec.group_detr,
        gradient_checkpointing=spec.gradient_checkpointing,
    )
    train_config, _, _ = _prepare_run_config(
        detector,
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
        resolution=spec.res,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        grad_accum_steps=spec.grad_accum_steps,
        lr=spec.lr,
        lr_encoder=spec.lr_encoder,
        weight_decay=spec.weight_decay,
        use_ema=spec.use_ema,
        early_stopping=spec.early_stopping,
        early_stopping_patience=spec.early_stopping_patience,
        early_stopping_min_delta=spec.early_stopping_min_delta,
        checkpoint_interval=spec.checkpoint_frequency,
        num_workers=spec.dataloader_workers,
        seed=spec.seed,
        progress_bar=None,
        accelerator=accelerator,
    )
    # rfdetr sizes the class head from the dataset; it must happen before the module exists.
    detector._align_num_classes_from_dataset(str(dataset_dir))
    module = RFDETRModelModule(detector.model_config, train_config)
    datamodule = RFDETRDataModule(detector.model_config, train_config)
    return TrainingParts(detector, train_config, module, datamodule)
