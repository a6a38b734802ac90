"""Dataset validation, fingerprints and the synthetic dataset (detrforge.detector.data,
``dataset_checks`` and ``synthetic``)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from detrforge.detector.data import (
    DatasetInfo,
    fingerprint_dataset,
    require_valid_dataset,
    validate_dataset,
)
from detrforge.detector.dataset_checks import SPLITS
from detrforge.detector.synthetic import synth_dataset
from detrforge.platform.errors import DatasetProblem, InvalidDatasetError, InvalidSpecError

ANN = "_annotations.coco.json"


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    synth_dataset(
        root, seed=7, num_classes=2, train_images=4, valid_images=2, image_size=64, min_box=8
    )
    return root


def load(root: Path, split: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / split / ANN).read_text())
    return data


def save(root: Path, split: str, data: dict[str, Any]) -> None:
    (root / split / ANN).write_text(json.dumps(data))


def edit(root: Path, split: str, section: str, index: int, **changes: Any) -> None:
    data = load(root, split)
    data[section][index].update(changes)
    save(root, split, data)


def only(problems: list[DatasetProblem]) -> DatasetProblem:
    assert len(problems) == 1, problems
    return problems[0]


def test_public_names() -> None:
    import detrforge.detector.data as data
    import detrforge.detector.dataset_checks as dataset_checks
    import detrforge.detector.synthetic as synthetic

    assert SPLITS == ("train", "valid", "test")
    assert {
        "DatasetInfo",
        "fingerprint_dataset",
        "require_valid_dataset",
        "validate_dataset",
    } <= set(data.__all__)
    assert {"ANNOTATION_FILE", "SPLITS"} <= set(dataset_checks.__all__)
    assert synthetic.__all__ == ["synth_dataset"]
    for module in (data, dataset_checks, synthetic):
        assert all(hasattr(module, name) for name in module.__all__)


def test_synth_dataset_is_valid_and_described(dataset: Path) -> None:
    assert validate_dataset(dataset) == []
    info = require_valid_dataset(dataset)
    assert info.root == str(dataset.resolve())
    assert info.class_names == ("square", "circle")
    assert info.category_ids == (1, 2)
    assert info.num_images == {"train": 4, "valid": 2}
    train = load(dataset, "train")
    assert info.num_annotations == {
        "train": len(train["annotations"]),
        "valid": len(load(dataset, "valid")["annotations"]),
    }
    assert 4 <= info.num_annotations["train"] <= 12
    assert len(info.fingerprint) == 64 and info.fingerprint == fingerprint_dataset(dataset)
    assert sorted(p.name for p in (dataset / "train").iterdir()) == [
        "000000.png",
        "000001.png",
        "000002.png",
        "000003.png",
        ANN,
    ]
    assert not (dataset / "test").exists()
    assert [c["name"] for c in train["categories"]] == ["square", "circle"]
    with pytest.raises(AttributeError):
        info.fingerprint = "x"  # type: ignore[misc]


def test_synth_boxes_are_exact_and_apart(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    info = synth_dataset(
        root, seed=3, num_classes=5, train_images=12, valid_images=1, test_images=2
    )
    assert info.class_names == ("square", "circle", "triangle", "shape3", "shape4")
    assert info.num_images == {"train": 12, "valid": 1, "test": 2}
    data = load(root, "train")
    by_image: dict[int, list[list[int]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann["bbox"])
        assert ann["area"] == ann["bbox"][2] * ann["bbox"][3]
        assert ann["bbox"][2] >= 1 and ann["bbox"][3] >= 1
    assert set(by_image) == set(range(12))  # every image has at least one object
    assert {ann["category_id"] for ann in data["annotations"]} == {1, 2, 3, 4, 5}
    for image in data["images"]:
        pixels = np.asarray(Image.open(root / "train" / image["file_name"]).convert("RGB"))
        foreground = (pixels != pixels[0, 0]).any(axis=2)
        boxes = by_image[image["id"]]
        covered = np.zeros_like(foreground)
        for x, y, w, h in boxes:
            # Tight extent of the painted pixels inside the box grown by 1 px is the box itself.
            x0, y0 = max(x - 1, 0), max(y - 1, 0)
            region = foreground[y0 : y + h + 1, x0 : x + w + 1]
            rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
            assert [x0 + cols[0], y0 + rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1] == [
                x,
                y,
                w,
                h,
            ]
            covered[y : y + h, x : x + w] = True
        assert not (foreground & ~covered).any()  # nothing painted outside the boxes
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                apart = a[0] + a[2] <= b[0] or b[0] + b[2] <= a[0]
                apart = apart or a[1] + a[3] <= b[1] or b[1] + b[3] <= a[1]
                assert apart, (a, b)


def test_synth_is_deterministic_per_seed(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"num_classes": 3, "train_images": 6, "valid_images": 2}
    first = synth_dataset(tmp_path / "a", seed=11, **kwargs)
    second = synth_dataset(tmp_path / "b", seed=11, **kwargs)
    other = synth_dataset(tmp_path / "c", seed=12, **kwargs)
    assert first.fingerprint == second.fingerprint
    assert other.fingerprint != first.fingerprint
    for split in ("train", "valid"):
        assert (tmp_path / "a" / split / ANN).read_bytes() == (
            tmp_path / "b" / split / ANN
        ).read_bytes()
        for png in sorted((tmp_path / "a" / split).glob("*.png")):
            assert png.read_bytes() == (tmp_path / "b" / split / png.name).read_bytes()
    assert (tmp_path / "a" / "train" / ANN).read_bytes() != (
        tmp_path / "c" / "train" / ANN
    ).read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_classes": 0}, "num_classes"),
        ({"valid_images": 0}, "valid_images"),
        ({"image_size": 8, "min_box": 16}, "image_size"),
        ({"seed": -1}, "seed"),
    ],
)
def test_synth_rejects_impossible_arguments(
    tmp_path: Path, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidSpecError) as excinfo:
        synth_dataset(tmp_path / "ds", **kwargs)
    assert excinfo.value.field == field


def test_synth_refuses_a_non_empty_folder(dataset: Path) -> None:
    with pytest.raises(InvalidSpecError, match="not an empty folder") as excinfo:
        synth_dataset(dataset)
    assert excinfo.value.field == "out"


# --- fingerprint ---------------------------------------------------------------------------------


def test_fingerprint_survives_copy_and_touch(dataset: Path, tmp_path: Path) -> None:
    before = fingerprint_dataset(dataset)
    copy = tmp_path / "elsewhere" / "copied"
    shutil.copytree(dataset, copy)  # new absolute path, new mtimes
    (copy / "train" / ".DS_Store").write_bytes(b"finder junk")
    assert fingerprint_dataset(copy) == before
    assert fingerprint_dataset(dataset) == before


def test_fingerprint_changes_when_one_image_byte_flips(dataset: Path) -> None:
    before = fingerprint_dataset(dataset)
    image = dataset / "valid" / "000001.png"
    raw = bytearray(image.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    image.write_bytes(bytes(raw))
    assert fingerprint_dataset(dataset) != before


def test_fingerprint_follows_annotation_content_not_formatting(dataset: Path) -> None:
    before = fingerprint_dataset(dataset)
    data = load(dataset, "train")
    (dataset / "train" / ANN).write_text(json.dumps(data, indent=7, sort_keys=True))
    assert fingerprint_dataset(dataset) == before
    data["annotations"][0]["bbox"][0] += 1
    save(dataset, "train", data)
    assert fingerprint_dataset(dataset) != before


def test_fingerprint_of_missing_root_raises(tmp_path: Path) -> None:
    with pytest.raises(InvalidDatasetError) as excinfo:
        fingerprint_dataset(tmp_path / "nope")
    assert excinfo.value.details[0]["field"] == "root"


# --- one test per problem ------------------------------------------------------------------------


def test_root_missing_or_not_a_folder(tmp_path: Path) -> None:
    problem = only(validate_dataset(tmp_path / "absent"))
    assert (problem["file"], problem["field"]) == (".", "root")
    assert "does not exist" in problem["message"]
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(InvalidDatasetError) as excinfo:
        require_valid_dataset(a_file)
    assert len(excinfo.value.details) == 1
    assert "is not a folder" in excinfo.value.details[0]["message"]


@pytest.mark.parametrize("split", ["train", "valid"])
def test_missing_required_split(dataset: Path, split: str) -> None:
    shutil.rmtree(dataset / split)
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == (split, "split")
    assert f"{split}/ is missing" in problem["message"]


def test_test_split_is_optional_but_checked_when_present(dataset: Path) -> None:
    assert not (dataset / "test").exists()
    assert validate_dataset(dataset) == []
    shutil.copytree(dataset / "valid", dataset / "test")
    (dataset / "test" / "000000.png").unlink()
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == ("test/000000.png", "images[0].file_name")


def test_missing_annotation_file(dataset: Path) -> None:
    (dataset / "valid" / ANN).unlink()
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == (f"valid/{ANN}", "file")
    assert "missing" in problem["message"]


def test_unreadable_annotation_file(dataset: Path) -> None:
    (dataset / "valid" / ANN).unlink()
    (dataset / "valid" / ANN).mkdir()  # exists, but reading it fails (chmod is moot as root)
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == (f"valid/{ANN}", "file")
    assert "unreadable" in problem["message"]


def test_invalid_json(dataset: Path) -> None:
    (dataset / "train" / ANN).write_text('{"images": [')
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == (f"train/{ANN}", "json")
    assert "not valid JSON" in problem["message"]


def test_json_that_is_not_an_object(dataset: Path) -> None:
    (dataset / "train" / ANN).write_text("[1, 2]")
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == (f"train/{ANN}", "json")
    assert "object" in problem["message"]


def test_missing_top_level_key(dataset: Path) -> None:
    data = load(dataset, "valid")
    del data["categories"]
    save(dataset, "valid", data)
    problems = validate_dataset(dataset)
    assert problems[0]["file"] == f"valid/{ANN}"
    assert problems[0]["field"] == "categories"
    assert "missing required key 'categories'" in problems[0]["message"]
    # Without categories the split cannot agree with train's: reported too, nothing else.
    assert [p["field"] for p in problems] == ["categories", "categories"]


def test_missing_key_in_an_entry(dataset: Path) -> None:
    data = load(dataset, "train")
    del data["annotations"][1]["area"]
    del data["images"][2]["height"]
    save(dataset, "train", data)
    problems = validate_dataset(dataset)
    assert [(p["file"], p["field"]) for p in problems] == [
        (f"train/{ANN}", "images[2].height"),
        (f"train/{ANN}", "annotations[1].area"),
    ]
    assert all("missing required key" in p["message"] for p in problems)


def test_image_file_missing(dataset: Path) -> None:
    (dataset / "valid" / "000001.png").unlink()
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == ("valid/000001.png", "images[1].file_name")
    assert "missing" in problem["message"]


def test_image_undecodable(dataset: Path) -> None:
    (dataset / "train" / "000002.png").write_bytes(b"this is not a png at all")
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == ("train/000002.png", "images[2].file_name")
    assert "cannot be decoded" in problem["message"]


def test_truncated_png_is_undecodable(dataset: Path) -> None:
    image = dataset / "train" / "000000.png"
    image.write_bytes(image.read_bytes()[:60])
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == ("train/000000.png", "images[0].file_name")
    assert "cannot be decoded" in problem["message"]


def test_image_size_mismatch(dataset: Path) -> None:
    edit(dataset, "train", "images", 1, width=80)
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == ("train/000001.png", "images[1].width")
    assert "width is 80" in problem["message"] and "image is 64 px" in problem["message"]


def test_bbox_non_positive(dataset: Path) -> None:
    edit(dataset, "train", "annotations", 0, bbox=[3, 4, 0, 10])
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == (f"train/{ANN}", "annotations[0].bbox")
    assert "non-positive width or height" in problem["message"]


def test_bbox_malformed(dataset: Path) -> None:
    edit(dataset, "train", "annotations", 0, bbox=[3, 4, 10])
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == (f"train/{ANN}", "annotations[0].bbox")
    assert "[x, y, width, height]" in problem["message"]


def test_bbox_outside_image_beyond_tolerance(dataset: Path) -> None:
    edit(dataset, "valid", "annotations", 0, bbox=[40, 50, 20, 14.5])  # bottom 64.5: tolerated
    assert validate_dataset(dataset) == []
    edit(dataset, "valid", "annotations", 0, bbox=[50, 10, 20, 10])  # right edge 70 > 64 + 1
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == (f"valid/{ANN}", "annotations[0].bbox")
    assert "outside the 64x64 image" in problem["message"]
    edit(dataset, "valid", "annotations", 0, bbox=[-3, 10, 20, 10])
    assert only(validate_dataset(dataset))["field"] == "annotations[0].bbox"


def test_annotation_unknown_image_id(dataset: Path) -> None:
    edit(dataset, "train", "annotations", 2, image_id=999)
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == (f"train/{ANN}", "annotations[2].image_id")
    assert "image_id 999 matches no entry in images" in problem["message"]


def test_annotation_unknown_category_id(dataset: Path) -> None:
    edit(dataset, "train", "annotations", 1, category_id=42)
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == (f"train/{ANN}", "annotations[1].category_id")
    assert "category_id 42 matches no entry in categories (known: [1, 2])" in problem["message"]


@pytest.mark.parametrize("section", ["images", "annotations"])
def test_duplicate_ids(dataset: Path, section: str) -> None:
    duplicate = load(dataset, "train")[section][0]["id"]
    edit(dataset, "train", section, 1, id=duplicate)
    problems = validate_dataset(dataset)
    assert problems[0]["file"] == f"train/{ANN}"
    assert problems[0]["field"] == f"{section}[1].id"
    assert f"duplicate id {duplicate}" in problems[0]["message"]
    if section == "annotations":
        assert len(problems) == 1


def test_duplicate_category_ids(dataset: Path) -> None:
    for split in ("train", "valid"):
        edit(dataset, split, "categories", 1, id=1)
    problems = validate_dataset(dataset)
    duplicates = [(p["file"], p["field"]) for p in problems if p["field"].startswith("categories")]
    assert duplicates == [
        (f"train/{ANN}", "categories[1].id"),
        (f"valid/{ANN}", "categories[1].id"),
    ]
    assert "duplicate id 1" in problems[0]["message"]
    # Annotations of class 2 now point at a category that no longer exists; nothing else is wrong.
    rest = [p for p in problems if not p["field"].startswith("categories")]
    assert rest and all(p["field"].endswith(".category_id") for p in rest)
    assert all("category_id 2 matches no entry" in p["message"] for p in rest)


def test_split_without_images(dataset: Path) -> None:
    data = load(dataset, "valid")
    data["images"], data["annotations"] = [], []
    save(dataset, "valid", data)
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == (f"valid/{ANN}", "images")
    assert "no images" in problem["message"]


def test_train_without_annotations(dataset: Path) -> None:
    data = load(dataset, "train")
    data["annotations"] = []
    save(dataset, "train", data)
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == (f"train/{ANN}", "annotations")
    assert "no annotations" in problem["message"]


def test_categories_differ_between_splits(dataset: Path) -> None:
    data = load(dataset, "valid")
    data["categories"][1]["name"] = "disc"
    data["categories"].append({"id": 3, "name": "star", "supercategory": "shapes"})
    save(dataset, "valid", data)
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == (f"valid/{ANN}", "categories")
    assert "id 2 is 'disc' here but 'circle'" in problem["message"]
    assert "id 3 ('star') is not in train" in problem["message"]


# --- require_valid_dataset ----------------------------------------------------------------------


def test_require_valid_dataset_lists_every_problem(dataset: Path) -> None:
    (dataset / "valid" / "000000.png").unlink()
    edit(dataset, "train", "annotations", 0, bbox=[1, 1, -5, 5])
    with pytest.raises(InvalidDatasetError) as excinfo:
        require_valid_dataset(dataset)
    error = excinfo.value
    assert error.code == "INVALID_DATASET"
    assert error.field == "dataset"
    assert len(error.details) == 2
    assert {(d["file"], d["field"]) for d in error.details} == {
        (f"train/{ANN}", "annotations[0].bbox"),
        ("valid/000000.png", "images[0].file_name"),
    }
    first = error.details[0]
    assert error.message.startswith(f"dataset at {dataset} has 2 problem(s): {first['file']}")
    assert first["message"] in error.message
    restored = pickle.loads(pickle.dumps(error))
    assert restored.details == error.details and restored.message == error.message


def _roboflow_categories(root: Path, parent_id: int = 0) -> None:
    for split in ("train", "valid"):
        data = load(root, split)
        for category in data["categories"]:
            category["supercategory"] = "shapes"
        data["categories"].insert(0, {"id": parent_id, "name": "shapes", "supercategory": "none"})
        save(root, split, data)


def test_class_names_drop_unused_roboflow_parent(dataset: Path) -> None:
    _roboflow_categories(dataset)
    info = require_valid_dataset(dataset)
    assert info.class_names == ("square", "circle")
    assert info.category_ids == (1, 2)


def test_class_names_keep_a_parent_that_is_annotated(dataset: Path) -> None:
    _roboflow_categories(dataset)
    edit(dataset, "valid", "annotations", 0, category_id=0)
    info = require_valid_dataset(dataset)
    assert info.class_names == ("shapes", "square", "circle")
    assert info.category_ids == (0, 1, 2)


def test_class_names_keep_unused_flat_category(dataset: Path) -> None:
    for split in ("train", "valid"):
        data = load(dataset, split)
        data["categories"].append({"id": 3, "name": "unused", "supercategory": "none"})
        save(dataset, split, data)
    info = require_valid_dataset(dataset)
    assert info.class_names == ("square", "circle", "unused")
    assert isinstance(info, DatasetInfo)


def test_wrong_types_are_reported_not_raised(dataset: Path) -> None:
    data = load(dataset, "train")
    data["images"][0]["id"] = "zero"
    data["images"][1] = "not an object"
    data["annotations"][0].update(image_id=[0], category_id=None, bbox=None, iscrowd=True)
    data["categories"][0]["name"] = ""
    save(dataset, "train", data)
    fields = [p["field"] for p in validate_dataset(dataset)]
    assert fields[:7] == [
        "categories[0].name",
        "images[0].id",
        "images[1]",
        "annotations[0].image_id",
        "annotations[0].category_id",
        "annotations[0].bbox",
        "annotations[0].iscrowd",
    ]
    # Annotations of the images that lost their usable id, and the renamed category, follow.
    assert set(fields[7:]) <= {"categories"} | {
        f"annotations[{i}].image_id" for i in range(len(data["annotations"]))
    }


@pytest.mark.parametrize("depth", [5_000, 200_000])
def test_deeply_nested_annotation_file_is_a_problem_naming_it(dataset: Path, depth: int) -> None:
    (dataset / "train" / ANN).write_text('{"images": ' + "[" * depth + "]" * depth + "}")
    problem = only(validate_dataset(dataset))
    assert (problem["file"], problem["field"]) == (f"train/{ANN}", "json")
    assert "too deeply" in problem["message"]
    with pytest.raises(InvalidDatasetError) as caught:
        require_valid_dataset(dataset)
    assert f"train/{ANN}" in caught.value.message
    # The fingerprint of such a file is still defined (its raw bytes), not a crash.
    assert len(fingerprint_dataset(dataset)) == 64


def test_annotation_file_over_the_size_cap_is_a_problem_not_read(dataset: Path) -> None:
    size = (dataset / "valid" / ANN).stat().st_size
    problems = validate_dataset(dataset, max_annotation_bytes=size - 1)
    assert f"valid/{ANN}" in {p["file"] for p in problems}
    assert {p["field"] for p in problems} == {"file"}
    valid = next(p for p in problems if p["file"] == f"valid/{ANN}")
    assert f"is {size} bytes; the limit is {size - 1}" in valid["message"]
    assert "DETRFORGE_MAX_ANNOTATION_BYTES" in valid["message"]
    assert validate_dataset(dataset, max_annotation_bytes=10**9) == []
