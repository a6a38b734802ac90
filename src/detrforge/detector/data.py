"""RF-DETR COCO datasets: what a valid dataset holds, its fingerprint, and its class order.

Checking the folder is :mod:`detrforge.detector.dataset_checks`; a synthetic dataset for tests and
benchmarks is :mod:`detrforge.detector.synthetic`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detrforge.detector.dataset_checks import ANNOTATION_FILE, SPLITS, root_problem, scan_dataset
from detrforge.platform.errors import DatasetProblem, InvalidDatasetError
from detrforge.platform.limits import DEFAULT_MAX_ANNOTATION_BYTES

__all__ = [
    "DatasetInfo",
    "category_id_of",
    "dataset_files",
    "fingerprint_dataset",
    "require_valid_dataset",
    "rfdetr_categories",
    "validate_dataset",
]

# Values a COCO export uses to say "this category has no parent" (the same set rfdetr uses).
_NO_PARENT: frozenset[Any] = frozenset({"", "none", "null", None})
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
    # Annotations that carry a mask (polygons or RLE), per split.
    num_masks: dict[str, int] = field(default_factory=dict)


def validate_dataset(
    root: Path,
    *,
    max_annotation_bytes: int = DEFAULT_MAX_ANNOTATION_BYTES,
    require_masks: bool = False,
) -> list[DatasetProblem]:
    """Every problem in the dataset at ``root``; an empty list means it is valid.

    An annotation file larger than ``max_annotation_bytes`` is a problem, not read. Masks are
    checked wherever present; ``require_masks`` (segmentation) wants one on every object.
    """
    return scan_dataset(Path(root), max_annotation_bytes, require_masks=require_masks)[0]


def require_valid_dataset(
    root: Path,
    *,
    max_annotation_bytes: int = DEFAULT_MAX_ANNOTATION_BYTES,
    require_masks: bool = False,
) -> DatasetInfo:
    """Describe the dataset at ``root``; ``require_masks`` as in :func:`validate_dataset`.

    Raises:
        InvalidDatasetError: listing every problem in ``details`` when the dataset is not valid.
    """
    root = Path(root)
    problems, splits = scan_dataset(root, max_annotation_bytes, require_masks=require_masks)
    if problems:
        first = problems[0]
        raise InvalidDatasetError(
            f"dataset at {root} has {len(problems)} problem(s): "
            f"{first['file']} [{first['field']}]: {first['message']}",
            field="dataset",
            details=list(problems),
        )
    annotated = set().union(*(split.annotated_ids for split in splits.values()))
    kept = rfdetr_categories(splits["train"].categories, annotated)
    return DatasetInfo(
        root=str(root.resolve()),
        fingerprint=fingerprint_dataset(root),
        class_names=tuple(str(category["name"]) for category in kept),
        category_ids=tuple(int(category["id"]) for category in kept),
        num_images={name: split.num_images for name, split in splits.items()},
        num_annotations={name: split.num_annotations for name, split in splits.items()},
        num_masks={name: split.num_masks for name, split in splits.items()},
    )


def rfdetr_categories(
    categories: Sequence[Mapping[str, Any]], annotated_ids: set[int]
) -> list[Mapping[str, Any]]:
    """The categories in the order rfdetr numbers its labels, as it derives them in training.

    Sorted by id, less unannotated "grouping" parents: a category named as another one's
    ``supercategory`` that no annotation uses (e.g. the root class Roboflow exports prepend).
    Categories without an integer id sort last and are never dropped as parents.
    """
    ordered = sorted(categories, key=lambda c: (category_id_of(c) is None, category_id_of(c) or 0))
    parents = {
        category.get("supercategory")
        for category in ordered
        if category.get("supercategory") not in _NO_PARENT
        and category.get("supercategory") != category.get("name")
    }
    kept = [
        category
        for category in ordered
        if not (category.get("name") in parents and category_id_of(category) not in annotated_ids)
    ]
    return kept or ordered


def category_id_of(category: Mapping[str, Any]) -> int | None:
    """The integer id of a COCO category entry, or None when it has none."""
    try:
        return int(category["id"])
    except (KeyError, TypeError, ValueError):
        return None


def fingerprint_dataset(root: Path, *, splits: Sequence[str] = SPLITS) -> str:
    """Sha256 over every split's canonical annotation JSON and every other file's bytes.

    Depends only on relative paths and contents, so copies of a dataset share a fingerprint. The
    canonical JSON holds every annotation field, masks (polygons, RLE) included, so one moved
    polygon point changes it; the format is versioned and unchanged since box-only datasets.
    ``splits=("valid",)`` fingerprints one evaluation split alone.

    Raises:
        InvalidDatasetError: when ``root`` is not a folder.
    """
    root = Path(root)
    problem = root_problem(root)
    if problem is not None:
        raise InvalidDatasetError(
            f"dataset at {root} has 1 problem(s): {problem['message']}",
            field="dataset",
            details=[problem],
        )
    digest = hashlib.sha256(_FINGERPRINT_VERSION)
    for relative, path in dataset_files(root, splits=splits):
        if path.name == ANNOTATION_FILE:
            file_digest = _annotation_digest(path)
        else:
            with path.open("rb") as handle:
                file_digest = hashlib.file_digest(handle, "sha256").hexdigest()
        digest.update(f"{relative}\0{file_digest}\n".encode())
    return digest.hexdigest()


def dataset_files(root: Path, *, splits: Sequence[str] = SPLITS) -> list[tuple[str, Path]]:
    """``(path relative to root, path)`` of every file the fingerprint covers, in its order:
    the files under each split's folder, less hidden ones (.DS_Store, editor swap files)."""
    root = Path(root)
    files: list[tuple[str, Path]] = []
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        files += sorted(
            (path.relative_to(root).as_posix(), path)
            for path in split_dir.rglob("*")
            if path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(root).parts)
        )
    return files


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
