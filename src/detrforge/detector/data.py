"""RF-DETR COCO datasets: validation that reports every problem, fingerprints, synthetic data.

The layout is Roboflow's COCO export: ``ROOT/{train,valid,test}/`` each holding the images and an
``_annotations.coco.json``; ``test`` is optional.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeGuard

import numpy as np
from PIL import Image, ImageDraw

from detrforge.platform.errors import DatasetProblem, InvalidDatasetError, InvalidSpecError
from detrforge.platform.limits import DEFAULT_MAX_ANNOTATION_BYTES

__all__ = [
    "ANNOTATION_FILE",
    "SPLITS",
    "DatasetInfo",
    "fingerprint_dataset",
    "require_valid_dataset",
    "synth_dataset",
    "validate_dataset",
]

SPLITS = ("train", "valid", "test")
REQUIRED_SPLITS = ("train", "valid")
ANNOTATION_FILE = "_annotations.coco.json"

# A box may overshoot the image by this many pixels (rounding in exporters) before it is a problem.
BBOX_TOLERANCE_PX = 1.0
# Values a COCO export uses to say "this category has no parent" (the same set rfdetr uses).
_NO_PARENT: frozenset[Any] = frozenset({"", "none", "null", None})
_REQUIRED_KEYS = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox", "area", "iscrowd"),
    "categories": ("id", "name"),
}
_FINGERPRINT_VERSION = b"detrforge-dataset-fingerprint-v1\n"


@dataclass(frozen=True)
class DatasetInfo:
    """What a valid dataset holds: its fingerprint, classes (as the model sees them) and sizes."""

    root: str
    fingerprint: str
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    num_images: dict[str, int]
    num_annotations: dict[str, int]


@dataclass
class _Split:
    """What one readable annotation file holds, as far as it could be parsed."""

    categories: list[dict[str, Any]]
    category_names: dict[int, str]
    annotated_ids: set[int]
    num_images: int
    num_annotations: int


def _problem(file: str, field: str, message: str) -> DatasetProblem:
    return DatasetProblem(file=file, field=field, message=message)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate_dataset(
    root: Path, *, max_annotation_bytes: int = DEFAULT_MAX_ANNOTATION_BYTES
) -> list[DatasetProblem]:
    """Every problem in the dataset at ``root``; an empty list means it is valid.

    An annotation file larger than ``max_annotation_bytes`` is a problem, not read.
    """
    return _scan(Path(root), max_annotation_bytes)[0]


def require_valid_dataset(
    root: Path, *, max_annotation_bytes: int = DEFAULT_MAX_ANNOTATION_BYTES
) -> DatasetInfo:
    """Describe the dataset at ``root``.

    Raises:
        InvalidDatasetError: listing every problem in ``details`` when the dataset is not valid.
    """
    root = Path(root)
    problems, splits = _scan(root, max_annotation_bytes)
    if problems:
        first = problems[0]
        raise InvalidDatasetError(
            f"dataset at {root} has {len(problems)} problem(s): "
            f"{first['file']} [{first['field']}]: {first['message']}",
            field="dataset",
            details=list(problems),
        )
    annotated = set().union(*(split.annotated_ids for split in splits.values()))
    kept = _drop_parent_categories(splits["train"].categories, annotated)
    return DatasetInfo(
        root=str(root.resolve()),
        fingerprint=fingerprint_dataset(root),
        class_names=tuple(str(category["name"]) for category in kept),
        category_ids=tuple(int(category["id"]) for category in kept),
        num_images={name: split.num_images for name, split in splits.items()},
        num_annotations={name: split.num_annotations for name, split in splits.items()},
    )


def _drop_parent_categories(
    categories: list[dict[str, Any]], annotated_ids: set[int]
) -> list[dict[str, Any]]:
    """Categories sorted by id, less unannotated grouping parents (rfdetr does the same)."""
    ordered = sorted(categories, key=lambda category: int(category["id"]))
    parents = {
        category.get("supercategory")
        for category in ordered
        if category.get("supercategory") not in _NO_PARENT
        and category.get("supercategory") != category["name"]
    }
    kept = [
        category
        for category in ordered
        if not (category["name"] in parents and int(category["id"]) not in annotated_ids)
    ]
    return kept or ordered


def _root_problem(root: Path) -> DatasetProblem | None:
    if not root.exists():
        return _problem(".", "root", f"dataset folder {root} does not exist; check the path")
    if not root.is_dir():
        return _problem(
            ".", "root", f"{root} is not a folder; point at the folder holding train/ and valid/"
        )
    return None


def _scan(root: Path, max_annotation_bytes: int) -> tuple[list[DatasetProblem], dict[str, _Split]]:
    root_problem = _root_problem(root)
    if root_problem is not None:
        return [root_problem], {}
    problems: list[DatasetProblem] = []
    splits: dict[str, _Split] = {}
    for name in SPLITS:
        split_dir = root / name
        if split_dir.is_dir():
            parsed = _SplitChecker(split_dir, name, problems, max_annotation_bytes).run()
            if parsed is not None:
                splits[name] = parsed
        elif split_dir.exists():
            problems.append(_problem(name, "split", f"{name} is a file; make it a folder"))
        elif name in REQUIRED_SPLITS:
            message = (
                f"split folder {name}/ is missing; RF-DETR needs train/ and valid/, "
                f"each with images and {ANNOTATION_FILE}"
            )
            problems.append(_problem(name, "split", message))
    _check_categories_agree(splits, problems)
    return problems, splits


class _SplitChecker:
    """Checks one split folder, appending every problem it finds to a shared list."""

    def __init__(
        self,
        split_dir: Path,
        split: str,
        problems: list[DatasetProblem],
        max_annotation_bytes: int = DEFAULT_MAX_ANNOTATION_BYTES,
    ) -> None:
        self.max_annotation_bytes = max_annotation_bytes
        self.split_dir = split_dir
        self.split = split
        self.ann_file = f"{split}/{ANNOTATION_FILE}"
        self.problems = problems

    def add(self, field: str, message: str, *, file: str | None = None) -> None:
        self.problems.append(_problem(file or self.ann_file, field, message))

    def run(self) -> _Split | None:
        data = self._load()
        if data is None:
            return None
        sections: dict[str, list[Any] | None] = {}
        for key in _REQUIRED_KEYS:
            value = data.get(key)
            if key not in data:
                self.add(key, f"missing required key {key!r}; add a {key} list")
            elif not isinstance(value, list):
                self.add(key, f"{key!r} must be a list, not {type(value).__name__}")
            sections[key] = value if isinstance(value, list) else None
        images, annotations = sections["images"], sections["annotations"]
        categories = self._categories(sections["categories"])
        image_sizes = self._images(images)
        annotated = self._annotations(annotations, image_sizes, categories)
        if images is not None and not images:
            self.add("images", f"the {self.split} split has no images; add labelled images")
        if self.split == "train" and annotations is not None and not annotations:
            self.add("annotations", "the train split has no annotations; label objects first")
        usable = [
            category
            for category in sections["categories"] or []
            if isinstance(category, dict)
            and _is_int(category.get("id"))
            and isinstance(category.get("name"), str)
        ]
        return _Split(
            categories=usable,
            category_names=categories or {},
            annotated_ids=annotated,
            num_images=len(images or []),
            num_annotations=len(annotations or []),
        )

    def _load(self) -> dict[str, Any] | None:
        path = self.split_dir / ANNOTATION_FILE
        if not path.exists():
            self.add("file", f"annotation file is missing; export {self.split} in COCO format")
            return None
        try:
            size = path.stat().st_size
            if size > self.max_annotation_bytes:
                self.add(
                    "file",
                    f"annotation file is {size} bytes; the limit is {self.max_annotation_bytes} "
                    "(DETRFORGE_MAX_ANNOTATION_BYTES)",
                )
                return None
            data = json.loads(path.read_bytes())
        except OSError as exc:
            self.add("file", f"annotation file is unreadable ({exc}); fix its permissions")
            return None
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            self.add("json", f"annotation file is not valid JSON ({exc}); re-export it")
            return None
        except RecursionError:
            self.add(
                "json",
                "annotation file nests its arrays or objects too deeply to read; a COCO export "
                "nests a few levels, re-export it",
            )
            return None
        if not isinstance(data, dict):
            self.add(
                "json", "annotation file must hold an object with images/annotations/categories"
            )
            return None
        return data

    def _entry(self, entry: Any, section: str, index: int) -> dict[str, Any] | None:
        """``entry`` if it is an object, reporting each required key it lacks; else None."""
        where = f"{section}[{index}]"
        if not isinstance(entry, dict):
            self.add(where, f"{where} must be a JSON object")
            return None
        for key in _REQUIRED_KEYS[section]:
            if key not in entry:
                self.add(f"{where}.{key}", f"missing required key {key!r}; add it")
        return entry

    def _unique_id(self, entry: dict[str, Any], where: str, seen: set[int]) -> bool:
        """Whether ``entry`` has an integer id not seen before (reporting why not)."""
        if "id" not in entry:
            return False
        entry_id = entry["id"]
        if not _is_int(entry_id):
            self.add(f"{where}.id", f"id must be an integer, not {entry_id!r}")
            return False
        if entry_id in seen:
            self.add(f"{where}.id", f"duplicate id {entry_id}; give each entry its own id")
            return False
        seen.add(entry_id)
        return True

    def _categories(self, entries: list[Any] | None) -> dict[int, str] | None:
        if entries is None:
            return None
        names: dict[int, str] = {}
        seen: set[int] = set()
        for index, raw in enumerate(entries):
            where = f"categories[{index}]"
            entry = self._entry(raw, "categories", index)
            if entry is None:
                continue
            name = entry.get("name")
            if "name" in entry and (not isinstance(name, str) or not name):
                self.add(f"{where}.name", f"name must be a non-empty string, not {name!r}")
            if self._unique_id(entry, where, seen):
                names[entry["id"]] = str(name)
        return names

    def _images(self, entries: list[Any] | None) -> dict[int, tuple[int, int] | None] | None:
        """Image id -> (width, height) from the JSON (None where unusable); checks each file."""
        if entries is None:
            return None
        sizes: dict[int, tuple[int, int] | None] = {}
        seen: set[int] = set()
        for index, raw in enumerate(entries):
            where = f"images[{index}]"
            entry = self._entry(raw, "images", index)
            if entry is None:
                continue
            size_ok = "width" in entry and "height" in entry
            for key in ("width", "height"):
                if key in entry and (not _is_int(entry[key]) or entry[key] <= 0):
                    size_ok = False
                    self.add(f"{where}.{key}", f"{key} must be a positive integer")
            json_size = (entry["width"], entry["height"]) if size_ok else None
            if self._unique_id(entry, where, seen):
                sizes[entry["id"]] = json_size
            if "file_name" in entry:
                self._image_file(entry["file_name"], json_size, where)
        return sizes

    def _image_file(self, file_name: Any, json_size: tuple[int, int] | None, where: str) -> None:
        field_name = f"{where}.file_name"
        if not isinstance(file_name, str) or not file_name:
            self.add(field_name, f"file_name must be a non-empty string, not {file_name!r}")
            return
        relative = PurePosixPath(file_name)
        if relative.is_absolute() or ".." in relative.parts:
            self.add(field_name, f"{file_name!r} must be a path inside the {self.split}/ folder")
            return
        image_file = f"{self.split}/{relative}"
        path = self.split_dir / relative
        if not path.is_file():
            message = (
                f"image file is missing; add it to {self.split}/ or remove the image entry "
                "and its annotations"
            )
            self.add(field_name, message, file=image_file)
            return
        try:
            # Opening reads only the header; verify() checks the rest without decoding pixels.
            with Image.open(path) as image:
                real_size = image.size
                image.verify()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            message = f"image cannot be decoded ({exc}); replace the file or remove its entry"
            self.add(field_name, message, file=image_file)
            return
        if json_size is None:
            return
        for key, declared, real in zip(("width", "height"), json_size, real_size, strict=True):
            if declared != real:
                message = (
                    f"{key} is {declared} in {self.ann_file} but the image is {real} px; set "
                    f"{key} to {real} (and rescale its boxes if they were drawn at {declared})"
                )
                self.add(f"{where}.{key}", message, file=image_file)

    def _annotations(
        self,
        entries: list[Any] | None,
        image_sizes: dict[int, tuple[int, int] | None] | None,
        categories: dict[int, str] | None,
    ) -> set[int]:
        """Checks every annotation; returns the category ids they use."""
        used: set[int] = set()
        seen: set[int] = set()
        for index, raw in enumerate(entries or []):
            where = f"annotations[{index}]"
            entry = self._entry(raw, "annotations", index)
            if entry is None:
                continue
            self._unique_id(entry, where, seen)
            image_id, category_id = entry.get("image_id"), entry.get("category_id")
            for key in ("image_id", "category_id"):
                if key in entry and not _is_int(entry[key]):
                    self.add(f"{where}.{key}", f"{key} must be an integer, not {entry[key]!r}")
            if _is_int(image_id) and image_sizes is not None and image_id not in image_sizes:
                self.add(
                    f"{where}.image_id",
                    f"image_id {image_id} matches no entry in images; fix it or drop the box",
                )
            if _is_int(category_id):
                used.add(category_id)
                if categories is not None and category_id not in categories:
                    self.add(
                        f"{where}.category_id",
                        f"category_id {category_id} matches no entry in categories (known: "
                        f"{sorted(categories)}); fix the id or add the category",
                    )
            if "bbox" in entry:
                size = None
                if image_sizes is not None and _is_int(image_id):
                    size = image_sizes.get(image_id)
                self._bbox(entry["bbox"], size, where)
            area, iscrowd = entry.get("area", 0), entry.get("iscrowd", 0)
            if not _is_number(area) or area < 0:
                self.add(f"{where}.area", f"area must be a number >= 0, not {area!r}")
            if iscrowd not in (0, 1) or isinstance(iscrowd, bool):
                self.add(f"{where}.iscrowd", f"iscrowd must be 0 or 1, not {iscrowd!r}")
        return used

    def _bbox(self, bbox: Any, image_size: tuple[int, int] | None, where: str) -> None:
        field_name = f"{where}.bbox"
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            self.add(field_name, f"bbox must be 4 numbers [x, y, width, height], not {bbox!r}")
            return
        x, y, width, height = bbox
        if width <= 0 or height <= 0:
            self.add(
                field_name,
                f"bbox {bbox} has non-positive width or height; boxes are [x, y, width, height] "
                "with width and height > 0 (was it saved as [x1, y1, x2, y2]?)",
            )
            return
        if image_size is None:
            return
        image_w, image_h = image_size
        tol = BBOX_TOLERANCE_PX
        if x < -tol or y < -tol or x + width > image_w + tol or y + height > image_h + tol:
            self.add(field_name, f"bbox {bbox} lies outside the {image_w}x{image_h} image; clip it")


def _check_categories_agree(splits: dict[str, _Split], problems: list[DatasetProblem]) -> None:
    if not splits:
        return
    reference_name = "train" if "train" in splits else next(iter(splits))
    reference = splits[reference_name].category_names
    for name, split in splits.items():
        if name == reference_name or split.category_names == reference:
            continue
        differences = []
        for category_id in sorted(set(reference) | set(split.category_names)):
            mine, theirs = split.category_names.get(category_id), reference.get(category_id)
            if mine is None:
                differences.append(f"id {category_id} ({theirs!r}) is missing here")
            elif theirs is None:
                differences.append(f"id {category_id} ({mine!r}) is not in {reference_name}")
            elif mine != theirs:
                differences.append(f"id {category_id} is {mine!r} here but {theirs!r}")
        message = (
            f"categories differ from {reference_name}/{ANNOTATION_FILE}: {'; '.join(differences)}; "
            "export every split from the same dataset version"
        )
        problems.append(_problem(f"{name}/{ANNOTATION_FILE}", "categories", message))


def fingerprint_dataset(root: Path, *, splits: Sequence[str] = SPLITS) -> str:
    """Sha256 over every split's canonical annotation JSON and every other file's bytes.

    Depends only on relative paths and contents, so copies of a dataset share a fingerprint.
    ``splits=("valid",)`` fingerprints one evaluation split alone.

    Raises:
        InvalidDatasetError: when ``root`` is not a folder.
    """
    root = Path(root)
    root_problem = _root_problem(root)
    if root_problem is not None:
        raise InvalidDatasetError(
            f"dataset at {root} has 1 problem(s): {root_problem['message']}",
            field="dataset",
            details=[root_problem],
        )
    digest = hashlib.sha256(_FINGERPRINT_VERSION)
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        # Hidden files (.DS_Store, editor swap files) are not part of the dataset.
        files = sorted(
            (path.relative_to(root).as_posix(), path)
            for path in split_dir.rglob("*")
            if path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(root).parts)
        )
        for relative, path in files:
            if path.name == ANNOTATION_FILE:
                file_digest = _annotation_digest(path)
            else:
                with path.open("rb") as handle:
                    file_digest = hashlib.file_digest(handle, "sha256").hexdigest()
            digest.update(f"{relative}\0{file_digest}\n".encode())
    return digest.hexdigest()


def _annotation_digest(path: Path) -> str:
    raw = path.read_bytes()
    try:
        canonical = json.dumps(
            json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except (UnicodeDecodeError, ValueError, RecursionError):
        # An unparseable file still needs a fingerprint; its raw bytes are all there is.
        return "raw:" + hashlib.sha256(raw).hexdigest()
    return "json:" + hashlib.sha256(canonical).hexdigest()


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
) -> list[int]:
    """Paint one shape inside ``box`` (x, y, w, h) and return its tight COCO bbox."""
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
    return [
        x + left,
        y + top,
        int(cols[-1]) - left + 1,
        int(rows[-1]) - top + 1,
    ]


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
            bbox = _draw_shape(pixels, class_index, (x, y, width, height))
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": image_id,
                    "category_id": int(categories[class_index]["id"]),
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "segmentation": [],
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
) -> DatasetInfo:
    """Write a deterministic dataset of filled shapes on dark backgrounds; same seed, same bytes.

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
        )
    return require_valid_dataset(out)
