"""A deterministic synthetic COCO dataset of filled shapes, for tests and benchmarks.

With ``masks=True`` every object also carries its exact mask: squares and triangles as polygons
tracing the painted pixels' edges, circles as compressed RLE of the painted pixels, so both of
rfdetr's mask paths are exercised. The images and boxes are the same bytes either way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from detrforge.detector.data import DatasetInfo, require_valid_dataset
from detrforge.detector.dataset_checks import ANNOTATION_FILE, SPLITS
from detrforge.detector.masks import encode_mask, mask_outline
from detrforge.platform.errors import InvalidSpecError

__all__ = ["synth_dataset"]

_SHAPES = ("square", "circle", "triangle")
_PALETTE = (
    (240, 70, 60),
    (70, 210, 90),
    (80, 130, 250),
    (245, 225, 60),
    (225, 90, 225),
    (70, 225, 225),
    (250, 160, 50),
    (245, 245, 245),
)
_GAP_PX = 2
_PLACEMENT_TRIES = 50
_CIRCLE = 1  # the shape whose mask is written as RLE


def _class_name(index: int) -> str:
    return _SHAPES[index] if index < len(_SHAPES) else f"shape{index}"


def _class_colour(index: int) -> tuple[int, int, int]:
    if index < len(_PALETTE):
        return _PALETTE[index]
    red, green, blue = np.random.default_rng(10_000 + index).integers(128, 256, size=3)
    return int(red), int(green), int(blue)


def _draw_shape(
    image: np.ndarray[Any, np.dtype[np.uint8]],
    class_index: int,
    box: tuple[int, int, int, int],
) -> tuple[list[int], np.ndarray[Any, np.dtype[np.bool_]]]:
    """Paint one shape inside ``box`` (x, y, w, h); its tight COCO bbox and its pixels there."""
    x, y, width, height = box
    mask_image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask_image)
    shape = class_index % len(_SHAPES)
    if shape == 0:
        draw.rectangle((0, 0, width - 1, height - 1), fill=255)
    elif shape == 1:
        draw.ellipse((0, 0, width - 1, height - 1), fill=255)
    else:
        draw.polygon(((0, height - 1), (width - 1, height - 1), ((width - 1) / 2, 0)), fill=255)
    mask = np.asarray(mask_image) > 0
    if not mask.any():  # a 1 px wide triangle can rasterise to nothing; fill the box instead
        mask = np.ones_like(mask)
    image[y : y + height, x : x + width][mask] = _class_colour(class_index)
    # The annotation is the drawn pixels' extent, so it is exact whatever the rasteriser did.
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, left = int(rows[0]), int(cols[0])
    bbox = [x + left, y + top, int(cols[-1]) - left + 1, int(rows[-1]) - top + 1]
    return bbox, mask


def _segmentation(
    mask: np.ndarray[Any, np.dtype[np.bool_]],
    class_index: int,
    origin: tuple[int, int],
    image_size: int,
) -> list[list[float]] | dict[str, Any]:
    """The exact COCO mask of a shape's pixels ``mask`` painted with its corner at ``origin``."""
    x, y = origin
    if class_index % len(_SHAPES) == _CIRCLE:
        full = np.zeros((image_size, image_size), dtype=bool)
        full[y : y + mask.shape[0], x : x + mask.shape[1]] = mask
        return encode_mask(full)
    outline = mask_outline(mask)
    return [[value + (x if index % 2 == 0 else y) for index, value in enumerate(outline)]]


def _overlaps(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    x, y, w, h = box
    return any(
        x < px + pw + _GAP_PX
        and px < x + w + _GAP_PX
        and y < py + ph + _GAP_PX
        and py < y + h + _GAP_PX
        for px, py, pw, ph in placed
    )


def _synth_split(
    split_dir: Path,
    rng: np.random.Generator,
    *,
    num_images: int,
    num_classes: int,
    image_size: int,
    max_objects: int,
    min_box: int,
    categories: list[dict[str, Any]],
    masks: bool,
) -> None:
    split_dir.mkdir(parents=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    max_box = max(min_box, image_size // 2)
    for image_id in range(num_images):
        background = rng.integers(0, 48, size=3, dtype=np.uint8)
        pixels = np.empty((image_size, image_size, 3), dtype=np.uint8)
        pixels[:] = background
        placed: list[tuple[int, int, int, int]] = []
        wanted = int(rng.integers(1, max_objects + 1))
        for object_index in range(wanted):
            # The first object cycles through the classes so every class appears.
            if object_index == 0:
                class_index = image_id % num_classes
            else:
                class_index = int(rng.integers(num_classes))
            for _ in range(_PLACEMENT_TRIES):
                width, height = (int(v) for v in rng.integers(min_box, max_box + 1, size=2))
                if class_index % len(_SHAPES) in (0, 1):  # squares and circles stay round
                    height = width
                x = int(rng.integers(0, image_size - width + 1))
                y = int(rng.integers(0, image_size - height + 1))
                if not _overlaps((x, y, width, height), placed):
                    break
            else:
                continue
            placed.append((x, y, width, height))
            bbox, drawn = _draw_shape(pixels, class_index, (x, y, width, height))
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": image_id,
                    "category_id": int(categories[class_index]["id"]),
                    "bbox": bbox,
                    "area": int(drawn.sum()) if masks else bbox[2] * bbox[3],
                    "segmentation": (
                        _segmentation(drawn, class_index, (x, y), image_size) if masks else []
                    ),
                    "iscrowd": 0,
                }
            )
        file_name = f"{image_id:06d}.png"
        Image.fromarray(pixels).save(split_dir / file_name, format="PNG")
        images.append(
            {"id": image_id, "file_name": file_name, "width": image_size, "height": image_size}
        )
    document = {
        "info": {"description": "detrforge synthetic shapes dataset"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (split_dir / ANNOTATION_FILE).write_text(
        json.dumps(document, indent=2) + "\n", encoding="utf-8"
    )


def synth_dataset(
    out: Path,
    *,
    seed: int = 0,
    num_classes: int = 1,
    train_images: int = 64,
    valid_images: int = 16,
    test_images: int = 0,
    image_size: int = 128,
    max_objects: int = 3,
    min_box: int = 16,
    masks: bool = False,
) -> DatasetInfo:
    """Write a deterministic dataset of filled shapes on dark backgrounds; same seed, same bytes.

    ``masks`` adds each object's exact mask (and makes ``area`` its pixel count); the images and
    boxes do not change.

    Raises:
        InvalidSpecError: for impossible sizes or counts, or when ``out`` is a non-empty folder.
    """
    out = Path(out)
    limits = {
        "num_classes": (num_classes, 1),
        "train_images": (train_images, 1),
        "valid_images": (valid_images, 1),
        "test_images": (test_images, 0),
        "max_objects": (max_objects, 1),
        "min_box": (min_box, 1),
        "seed": (seed, 0),
    }
    for name, (value, minimum) in limits.items():
        if value < minimum:
            raise InvalidSpecError(f"{name} must be >= {minimum}, not {value}", field=name)
    if image_size < min_box:
        raise InvalidSpecError(
            f"image_size {image_size} is smaller than min_box {min_box}; raise image_size",
            field="image_size",
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidSpecError(
            f"{out} already exists and is not an empty folder; choose a new path", field="out"
        )
    categories = [
        {"id": index + 1, "name": _class_name(index), "supercategory": "shapes"}
        for index in range(num_classes)
    ]
    counts = {"train": train_images, "valid": valid_images, "test": test_images}
    for split_index, split in enumerate(SPLITS):
        if counts[split] == 0:
            continue
        _synth_split(
            out / split,
            np.random.default_rng([seed, split_index]),
            num_images=counts[split],
            num_classes=num_classes,
            image_size=image_size,
            max_objects=max_objects,
            min_box=min_box,
            categories=categories,
            masks=masks,
        )
    return require_valid_dataset(out, require_masks=masks)
