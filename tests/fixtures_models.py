"""Session fixtures for inference tests: a tiny synthetic dataset and an untrained Nano checkpoint.

No training: the checkpoint is a freshly built RF-DETR Nano (50 queries, one query group, 128 px)
saved in the ``.pth`` layout rfdetr's ``BestModelCallback`` writes (``model`` state dict plus
``args``, ``model_name``, ``model_config``). DETR zero-initialises the last layer of its box
regressors, which would make every box a copy of its anchor; those layers get small seeded random
weights so boxes depend on the image and an ONNX-vs-torch comparison covers the whole head.
"""

from __future__ import annotations

import json
import os
import shutil
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


def valid_images(split_dir: Path) -> list[tuple[int, Any]]:
    """``(image id, RGB PIL image)`` of a COCO split folder, by image id."""
    from PIL import Image

    doc = json.loads((split_dir / "_annotations.coco.json").read_text())
    out = []
    for entry in sorted(doc["images"], key=lambda e: e["id"]):
        with Image.open(split_dir / entry["file_name"]) as image:
            out.append((int(entry["id"]), image.convert("RGB")))
    return out


def pseudo_label(dataset: Path, out: Path, checkpoint: Path, *, per_image: int = 3) -> Path:
    """A copy of ``dataset`` whose valid ground truth is ``checkpoint``'s top real detections.

    The untrained model scores AP ~0 on the true shapes, which makes any AP comparison
    (ONNX vs torch, one evaluation vs the next) pass whatever happens. Against its own best
    guesses eager AP is high but not 1 (lower-ranked duplicates and the other class compete),
    so a drift in boxes, scores or their order moves it.
    """
    from detrforge.detector.inference import label2cat_for
    from detrforge.detector.torch_predictor import TorchPredictor

    predictor = TorchPredictor(checkpoint, "nano", NANO_RESOLUTION)
    shutil.copytree(dataset, out)
    path = out / "valid" / "_annotations.coco.json"
    doc = json.loads(path.read_text())
    label2cat = label2cat_for(out)
    annotations = []
    for image_id, image in valid_images(out / "valid"):
        det = predictor.predict([image])[0]
        real = det.labels < NANO_NUM_CLASSES
        boxes = det.boxes_xyxy[real].tolist()[:per_image]
        for (x1, y1, x2, y2), label in zip(boxes, det.labels[real].tolist(), strict=False):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": label2cat[label],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    doc["annotations"] = annotations
    path.write_text(json.dumps(doc))
    return out


@pytest.fixture(scope="session")
def pseudo_labelled_dataset(
    shapes_dataset: Path, nano_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``shapes_dataset`` with ``nano_checkpoint``'s own top-3 detections as valid ground truth.

    Eager AP on it is ~0.86 (0.8645 on this repo's CPU), so AP comparisons can fail.
    """
    out = tmp_path_factory.mktemp("models") / "pseudo"
    return pseudo_label(shapes_dataset, out, nano_checkpoint)
