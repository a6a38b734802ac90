"""The calibration sample of an int8 variant: seeded images of the training split, fingerprinted.

Static quantization picks each activation's int8 range from what the network sees on real
inputs. The sample is drawn from the training split (never the eval split the gates read), and
its fingerprint (which files, their bytes, the seed and the preprocessing) goes into the
variant's recipe so the same artifact can be rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from detrforge.detector.processing import preprocess_images_numpy
from detrforge.platform.blobs import sha256_file
from detrforge.platform.errors import InvalidDatasetError, InvalidSpecError

__all__ = ["DEFAULT_CALIBRATION_IMAGES", "CalibrationSet", "calibration_set"]

DEFAULT_CALIBRATION_IMAGES = 32
_ANNOTATIONS = "_annotations.coco.json"


@dataclass(frozen=True)
class CalibrationSet:
    """Preprocessed calibration inputs ([1, 3, res, res] each) and what they were made from."""

    inputs: tuple[np.ndarray[Any, np.dtype[np.float32]], ...]
    fingerprint: str
    record: dict[str, Any]


def calibration_set(
    dataset_dir: Path,
    resolution: int,
    *,
    num_images: int = DEFAULT_CALIBRATION_IMAGES,
    seed: int = 0,
    split: str = "train",
) -> CalibrationSet:
    """``num_images`` images of ``split`` (all when it has fewer), drawn with ``seed``.

    Raises:
        InvalidSpecError: ``num_images`` < 1.
        InvalidDatasetError: the split has no annotation file or no readable image.
    """
    if num_images < 1:
        raise InvalidSpecError(
            f"calibration_images must be >= 1, got {num_images}", field="calibration_images"
        )
    ann_file = Path(dataset_dir) / split / _ANNOTATIONS
    if not ann_file.is_file():
        raise InvalidDatasetError(
            f"no {split}/{_ANNOTATIONS} under {dataset_dir}; int8 variants calibrate on the "
            f"{split} split of the version's dataset",
            field="dataset",
        )
    entries = sorted(json.loads(ann_file.read_text()).get("images") or [], key=lambda e: e["id"])
    if not entries:
        raise InvalidDatasetError(f"{ann_file} lists no images to calibrate on", field="dataset")
    rng = np.random.default_rng(seed)
    picked = sorted(rng.permutation(len(entries))[: min(num_images, len(entries))].tolist())
    inputs = []
    files = []
    for index in picked:
        path = ann_file.parent / str(entries[index]["file_name"])
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, ValueError) as e:
            raise InvalidDatasetError(f"{path} could not be read as an image ({e})") from None
        inputs.append(preprocess_images_numpy([rgb], resolution))
        files.append([str(entries[index]["file_name"]), sha256_file(path)])
    record = {
        "split": split,
        "seed": seed,
        "num_images": len(files),
        "resolution": resolution,
        "preprocessing": "rfdetr predict(): /255, bilinear resize (no antialias), ImageNet norm",
        "files": files,
    }
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return CalibrationSet(inputs=tuple(inputs), fingerprint=digest, record=record)
