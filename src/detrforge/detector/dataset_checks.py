"""Checking a Roboflow COCO export folder, reporting every problem rather than the first.

The layout is ``ROOT/{train,valid,test}/`` each holding the images and an
``_annotations.coco.json``; ``test`` is optional.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeGuard

from PIL import Image

from detrforge.detector.mask_checks import (
    EDGE_TOLERANCE_PX,
    FieldProblem,
    has_segmentation,
    mask_problems,
    read_segmentation,
)
from detrforge.platform.errors import DatasetProblem
from detrforge.platform.limits import DEFAULT_MAX_ANNOTATION_BYTES

__all__ = [
    "ANNOTATION_FILE",
    "REQUIRED_SPLITS",
    "SPLITS",
    "SplitSummary",
    "root_problem",
    "scan_dataset",
]

SPLITS = ("train", "valid", "test")
REQUIRED_SPLITS = ("train", "valid")
ANNOTATION_FILE = "_annotations.coco.json"

_REQUIRED_KEYS = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox", "area", "iscrowd"),
    "categories": ("id", "name"),
}


@dataclass
class SplitSummary:
    """What one readable annotation file holds, as far as it could be parsed."""

    categories: list[dict[str, Any]]
    category_names: dict[int, str]
    annotated_ids: set[int]
    num_images: int
    num_annotations: int
    num_masks: int


def _problem(file: str, field: str, message: str) -> DatasetProblem:
    return DatasetProblem(file=file, field=field, message=message)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def root_problem(root: Path) -> DatasetProblem | None:
    """The problem with ``root`` itself (missing, or not a folder), else None."""
    if not root.exists():
        return _problem(".", "root", f"dataset folder {root} does not exist; check the path")
    if not root.is_dir():
        return _problem(
            ".", "root", f"{root} is not a folder; point at the folder holding train/ and valid/"
        )
    return None


def scan_dataset(
    root: Path, max_annotation_bytes: int, *, require_masks: bool = False
) -> tuple[list[DatasetProblem], dict[str, SplitSummary]]:
    """Every problem in the dataset at ``root``, and what each readable split holds.

    Masks are checked wherever an annotation has one; ``require_masks`` also makes a missing
    mask on an object (not a crowd region) a problem, as a segmentation model needs.
    """
    problem = root_problem(root)
    if problem is not None:
        return [problem], {}
    problems: list[DatasetProblem] = []
    splits: dict[str, SplitSummary] = {}
    for name in SPLITS:
        split_dir = root / name
        if split_dir.is_dir():
            parsed = _SplitChecker(
                split_dir, name, problems, max_annotation_bytes, require_masks=require_masks
            ).run()
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
        *,
        require_masks: bool = False,
    ) -> None:
        self.max_annotation_bytes = max_annotation_bytes
        self.split_dir = split_dir
        self.split = split
        self.ann_file = f"{split}/{ANNOTATION_FILE}"
        self.problems = problems
        self.require_masks = require_masks
        # Image id -> (width, height) where the JSON agrees with the decodable file: masks are
        # rasterised on that grid, so they are checked against the image only where it is known.
        self.mask_grids: dict[int, tuple[int, int]] = {}
        self.num_masks = 0

    def add(self, field: str, message: str, *, file: str | None = None) -> None:
        self.problems.append(_problem(file or self.ann_file, field, message))

    def run(self) -> SplitSummary | None:
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
        return SplitSummary(
            categories=usable,
            category_names=categories or {},
            annotated_ids=annotated,
            num_images=len(images or []),
            num_annotations=len(annotations or []),
            num_masks=self.num_masks,
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
            unique = self._unique_id(entry, where, seen)
            if unique:
                sizes[entry["id"]] = json_size
            if "file_name" in entry:
                verified = self._image_file(entry["file_name"], json_size, where)
                if unique and verified and json_size is not None:
                    self.mask_grids[entry["id"]] = json_size
        return sizes

    def _image_file(self, file_name: Any, json_size: tuple[int, int] | None, where: str) -> bool:
        """Checks the image file; whether it decodes at the size the JSON declares."""
        field_name = f"{where}.file_name"
        if not isinstance(file_name, str) or not file_name:
            self.add(field_name, f"file_name must be a non-empty string, not {file_name!r}")
            return False
        relative = PurePosixPath(file_name)
        if relative.is_absolute() or ".." in relative.parts:
            self.add(field_name, f"{file_name!r} must be a path inside the {self.split}/ folder")
            return False
        image_file = f"{self.split}/{relative}"
        path = self.split_dir / relative
        if not path.is_file():
            message = (
                f"image file is missing; add it to {self.split}/ or remove the image entry "
                "and its annotations"
            )
            self.add(field_name, message, file=image_file)
            return False
        try:
            # Opening reads only the header; verify() checks the rest without decoding pixels.
            with Image.open(path) as image:
                real_size = image.size
                image.verify()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            message = f"image cannot be decoded ({exc}); replace the file or remove its entry"
            self.add(field_name, message, file=image_file)
            return False
        if json_size is None:
            return False
        matches = True
        for key, declared, real in zip(("width", "height"), json_size, real_size, strict=True):
            if declared != real:
                message = (
                    f"{key} is {declared} in {self.ann_file} but the image is {real} px; set "
                    f"{key} to {real} (and rescale its boxes if they were drawn at {declared})"
                )
                self.add(f"{where}.{key}", message, file=image_file)
                matches = False
        return matches

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
            self._segmentation(entry, where)
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
        tol = EDGE_TOLERANCE_PX
        if x < -tol or y < -tol or x + width > image_w + tol or y + height > image_h + tol:
            self.add(field_name, f"bbox {bbox} lies outside the {image_w}x{image_h} image; clip it")

    def _segmentation(self, entry: dict[str, Any], where: str) -> None:
        segmentation = entry.get("segmentation")
        if not has_segmentation(segmentation):
            if self.require_masks and entry.get("iscrowd", 0) != 1:
                self.add(
                    f"{where}.segmentation",
                    "the object has no mask; a segmentation model needs one for every object "
                    "(polygons or RLE): add it, or mark the region iscrowd: 1",
                )
            return
        self.num_masks += 1
        image_id = entry.get("image_id")
        grid = self.mask_grids.get(image_id) if _is_int(image_id) else None
        found: list[FieldProblem] = []
        mask = read_segmentation(segmentation, where, grid, found)
        if mask is not None:
            found += mask_problems(mask, where, entry.get("bbox"))
        for problem in found:
            self.add(problem.field, problem.message)


def _check_categories_agree(
    splits: dict[str, SplitSummary], problems: list[DatasetProblem]
) -> None:
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
