"""Session fixtures for inference tests: a tiny synthetic dataset and an untrained Nano checkpoint.

No training: the checkpoint is a freshly built RF-DETR Nano (50 queries, one query group, 128 px)
saved in the ``.pth`` layout rfdetr's ``BestModelCallback`` writes (``model`` state dict plus
``args``, ``model_name``, ``model_config``). DETR zero-initialises the last layer of its box
regressors, which would make every box a copy of its anchor; those layers get small seeded random
weights so boxes depend on the image and an ONNX-vs-torch comparison covers the whole head.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from detrforge.detector.synthetic import synth_dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NANO_RESOLUTION = 128
NANO_NUM_CLASSES = 2
NANO_NUM_QUERIES = 50


def save_rfdetr_checkpoint(detector: Any, path: Path, class_names: list[str]) -> Path:
    """Write ``detector``'s weights in the layout of rfdetr's best-model ``.pth``."""
    from importlib.metadata import version

    import torch

    config = detector.model_config.model_dump()
    payload = {
        "model": detector.model.model.state_dict(),
        "args": {
            "num_classes": int(config["num_classes"]),
            "num_queries": int(config["num_queries"]),
            "group_detr": int(config["group_detr"]),
            "resolution": int(config["resolution"]),
            "class_names": list(class_names),
        },
        "model_name": type(detector).__name__,
        "model_config": config,
        "rfdetr_version": version("rfdetr"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def build_untrained_nano(seed: int = 0) -> Any:
    """A seeded Nano detector with randomised (instead of zero) final box-regression layers."""
    import torch

    from detrforge.detector.model import build_detector

    torch.manual_seed(seed)
    detector = build_detector(
        "nano",
        num_queries=NANO_NUM_QUERIES,
        group_detr=1,
        num_classes=NANO_NUM_CLASSES,
        resolution=NANO_RESOLUTION,
    )
    model = detector.model.model
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "bbox_embed" in name and name.endswith("layers.2.weight"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
            if name == "class_embed.weight":
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return detector


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of filled shapes, 128 px: 4 train and 6 valid images (rfdetr's layout)."""
    root = tmp_path_factory.mktemp("models") / "shapes"
    synth_dataset(
        root,
        seed=0,
        num_classes=NANO_NUM_CLASSES,
        train_images=4,
        valid_images=6,
        image_size=NANO_RESOLUTION,
    )
    return root


@pytest.fixture(scope="session")
def nano_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained Nano ``.pth`` for the shapes dataset's two classes."""
    detector = build_untrained_nano(seed=0)
    path = tmp_path_factory.mktemp("models") / "nano-128.pth"
    return save_rfdetr_checkpoint(detector, path, ["square", "circle"])


@pytest.fixture(scope="session")
def nano_onnx(nano_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``nano_checkpoint`` exported to ONNX at 128 px (an ``ExportResult``)."""
    from detrforge.detector.export import export_onnx

    out = tmp_path_factory.mktemp("models") / "nano-128.onnx"
    return export_onnx(nano_checkpoint, "nano", NANO_RESOLUTION, out)
