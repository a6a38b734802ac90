"""Session fixtures for the segmentation tests: one real 2-worker RF-DETR Seg Nano fine-tune on
``synth --masks`` data, on the session's Ray head, behind an API that the seg tests share.

Tiny on purpose (16 train and 8 valid images at 96 px, 2 epochs, 20 queries, one group): the
model learns little, but every part of the loop runs for real. A test that needs one model to
be better than another compares it with the same architecture after 0 steps
(:func:`untrained_seg_checkpoint`), on an eval set whose masks are the trained model's own
(:func:`pseudo_label_masks`): on the true shapes both would score ~0 after 4 steps.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from detrforge.detector.data import DatasetInfo
from detrforge.detector.synthetic import synth_dataset
from detrforge.platform.cluster import LocalRayHead
from fixtures_cluster import ApiHarness, harness, head_alive, make_settings
from fixtures_models import save_rfdetr_checkpoint, valid_images

SEG_RESOLUTION = 96
SEG_NUM_QUERIES = 20
SEG_SPEC: dict[str, Any] = {
    "model_size": "seg-nano",
    "resolution": SEG_RESOLUTION,
    "epochs": 2,
    "batch_size": 4,
    # Small steps: a few steps at 5e-4 once left every mask empty (masks start by shrinking),
    # and the gate test needs the trained model's own masks as its eval set.
    "lr": 1e-4,
    "num_queries": SEG_NUM_QUERIES,
    "group_detr": 1,
    "num_workers": 2,
    "resources_per_worker": {"CPU": 1},
    "num_checkpoints_to_keep": 1,
}


@dataclass(frozen=True)
class SegRun:
    """The finished seg fine-tune: its API, dataset and job (as ``GET /finetune-jobs`` gives)."""

    api: ApiHarness
    dataset: DatasetInfo
    job: dict[str, Any]


@pytest.fixture(scope="session")
def seg_dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetInfo:
    """One class of shapes with exact masks, 96 px: 16 train and 8 valid images."""
    out = tmp_path_factory.mktemp("seg") / "shapes-masks"
    return synth_dataset(
        out, seed=0, train_images=16, valid_images=8, image_size=SEG_RESOLUTION, masks=True
    )


@pytest.fixture(scope="session")
def seg_api(
    tmp_path_factory: pytest.TempPathFactory, ray_head: LocalRayHead
) -> Iterator[ApiHarness]:
    """The API against the session's Ray head, kept for every seg test (SQLite, file://)."""
    home = tmp_path_factory.mktemp("seg-api")
    settings = make_settings(
        home / "home",
        database_url=f"sqlite:///{home / 'registry.db'}",
        ray_address=ray_head.dashboard_url,
        artifact_root=None,
    )
    yield from harness(settings, alive=head_alive(ray_head))
    shutil.rmtree(home / "home" / "artifacts", ignore_errors=True)


@pytest.fixture(scope="session")
def seg_run(seg_api: ApiHarness, seg_dataset: DatasetInfo) -> SegRun:
    """A 2-worker Seg Nano fine-tune that reached SUCCEEDED (asserted here, with its error)."""
    response = seg_api.submit({**SEG_SPEC, "dataset": str(seg_dataset.root)})
    assert response.status_code == 201, response.text
    job = seg_api.wait(response.json()["id"], timeout_s=900)
    assert job["state"] == "SUCCEEDED", job.get("error")
    return SegRun(api=seg_api, dataset=seg_dataset, job=job)


def model_path(job: dict[str, Any]) -> Path:
    """The local file of a finished fine-tune's model (the tests' artifact root is local)."""
    return Path(str(job["model_uri"]).removeprefix("file://"))


def save_untrained_seg_nano(
    out: Path, *, class_names: list[str], resolution: int = SEG_RESOLUTION, seed: int = 0
) -> Path:
    """A Seg Nano ``.pth`` after 0 training steps (``SEG_NUM_QUERIES`` queries, one group)."""
    import torch

    from detrforge.detector.model import build_detector

    torch.manual_seed(seed)
    detector = build_detector(
        "seg-nano",
        num_queries=SEG_NUM_QUERIES,
        group_detr=1,
        num_classes=len(class_names),
        resolution=resolution,
    )
    return save_rfdetr_checkpoint(detector, out, class_names)


def untrained_seg_checkpoint(out: Path, *, like: Path, seed: int = 0) -> Path:
    """A Seg Nano ``.pth`` after 0 training steps, shaped like the checkpoint ``like``."""
    import torch

    state = torch.load(like, map_location="cpu", weights_only=False)["model"]
    num_classes = int(state["class_embed.bias"].shape[0]) - 1
    names = [f"class{i}" for i in range(num_classes)]
    return save_untrained_seg_nano(out, class_names=names, seed=seed)


def pseudo_label_masks(
    dataset: Path,
    out: Path,
    checkpoint: Path,
    *,
    per_image: int = 3,
    resolution: int = SEG_RESOLUTION,
) -> Path:
    """A copy of ``dataset`` whose valid ground truth is ``checkpoint``'s (a Seg Nano at
    ``resolution``) most confident non-empty masks across the split, ``per_image`` times its
    image count (RLE, with the mask's own box and area), so mask AP can tell that model from
    another.

    Ranked across the split, not per image: every detection scoring above the least confident
    label is then a label itself (or an empty mask), so the model's own mask AP stays high however
    flat a barely trained model's scores are; per image, another image's weaker labels fall
    below this image's unlabelled detections, and the figure swung with each training run.
    """
    import json

    import numpy as np

    from detrforge.detector.inference import label2cat_for
    from detrforge.detector.masks import encode_mask
    from detrforge.detector.torch_predictor import TorchPredictor

    predictor = TorchPredictor(checkpoint, "seg-nano", resolution)
    shutil.copytree(dataset, out)
    path = out / "valid" / "_annotations.coco.json"
    doc = json.loads(path.read_text())
    label2cat = label2cat_for(out)
    images = valid_images(out / "valid")
    candidates: list[tuple[float, int, Any, int]] = []  # (score, image id, mask, label)
    for image_id, image in images:
        det = predictor.predict([image])[0]
        assert det.masks is not None
        for mask, label, score in zip(
            det.masks, det.labels.tolist(), det.scores.tolist(), strict=True
        ):
            if label in label2cat and mask.any():
                candidates.append((float(score), image_id, mask, label))
    assert candidates, "the trained model predicted no non-empty mask"
    # Highest score first; a tie keeps the predictor's order (image id, then rank).
    ranked = sorted(candidates, key=lambda c: -c[0])[: per_image * len(images)]
    annotations: list[dict[str, Any]] = []
    for _, image_id, mask, label in sorted(ranked, key=lambda c: c[1]):
        ys, xs = np.nonzero(mask)
        x, y = int(xs.min()), int(ys.min())
        w, h = int(xs.max()) + 1 - x, int(ys.max()) + 1 - y
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": label2cat[label],
                "segmentation": encode_mask(np.asarray(mask)),
                "bbox": [x, y, w, h],
                "area": int(mask.sum()),
                "iscrowd": 0,
            }
        )
    doc["annotations"] = annotations
    path.write_text(json.dumps(doc))
    return out
