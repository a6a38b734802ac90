"""A segmentation model behind the predictor: masks decoded as rfdetr decodes them, in a stage of
their own that latency times apart, and bbox plus segm AP from one pass over a split.

The model is an untrained Seg Nano (20 queries, 96 px), built once for the module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from detrforge.detector.data import DatasetInfo
from detrforge.detector.synthetic import synth_dataset
from fixtures_seg import save_untrained_seg_nano

RESOLUTION = 96


@pytest.fixture(scope="module")
def seg_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seg") / "seg-nano-96.pth"
    return save_untrained_seg_nano(path, class_names=["square", "circle"], resolution=RESOLUTION)


@pytest.fixture(scope="module")
def predictor(seg_checkpoint: Path) -> Any:
    from detrforge.detector.torch_predictor import TorchPredictor

    return TorchPredictor(seg_checkpoint, "seg-nano", RESOLUTION, max_detections=10)


@pytest.fixture(scope="module")
def mask_dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetInfo:
    out = tmp_path_factory.mktemp("seg") / "masks"
    return synth_dataset(
        out, seed=1, num_classes=2, train_images=2, valid_images=3, image_size=80, masks=True
    )


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    # Not square and not the model's size: masks must come back at each image's own size.
    return [
        Image.fromarray(rng.integers(0, 255, (70, 110, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 255, (96, 64, 3), dtype=np.uint8)),
    ]


def test_masks_match_rfdetr_postprocess_at_the_image_size(predictor: Any) -> None:
    import torch
    from rfdetr.models import PostProcess

    images = _images()
    detections = predictor.predict(images)
    with torch.inference_mode():
        outputs = predictor.model(predictor.preprocess(images))
        sizes = torch.tensor([(im.height, im.width) for im in images])
        reference = PostProcess(num_select=10)(outputs, sizes)
    assert predictor.has_masks
    for image, det, ref in zip(images, detections, reference, strict=True):
        assert det.masks is not None and det.masks.dtype == np.bool_
        assert det.masks.shape == (10, image.height, image.width)
        np.testing.assert_array_equal(det.masks, ref["masks"][:, 0].numpy())
        np.testing.assert_array_equal(det.labels, ref["labels"].numpy())
        np.testing.assert_allclose(det.scores, ref["scores"].numpy(), rtol=0, atol=0)
    # Untrained, yet its masks are not all empty or all full: the comparison has content.
    filled = np.mean([d.masks.mean() for d in detections])
    assert 0.0 < filled < 1.0


def test_latency_times_mask_decoding_apart(predictor: Any) -> None:
    from detrforge.detector.latency import measure_latency

    report = measure_latency(predictor, _images(), warmup=1, runs=4)
    assert report.masks is not None and report.samples_mask_ms is not None
    assert len(report.samples_mask_ms) == 4 and min(report.samples_mask_ms) > 0
    for model, masks, e2e in zip(
        report.samples_model_ms, report.samples_mask_ms, report.samples_e2e_ms, strict=True
    ):
        assert 0 < model < e2e and masks < e2e
    metrics = report.to_metrics()
    assert metrics["mask_ms/p95"] == report.masks.p95 > 0


def test_one_pass_gives_bbox_and_segm_ap(predictor: Any, mask_dataset: DatasetInfo) -> None:
    from detrforge.detector.inference import evaluate_predictor, predict_split

    root = Path(mask_dataset.root)
    results = predict_split(predictor, root, "valid")
    # Every detection with a category (not the "no object" slot): its box and mask in one dict.
    assert 0 < len(results) <= 3 * 10
    assert all("bbox" in r and r["segmentation"]["size"] == [80, 80] for r in results)
    bbox, segm = evaluate_predictor(predictor, root, "valid", backend="pycocotools")
    assert (bbox.iou_type, segm.iou_type) == ("bbox", "segm")
    assert set(segm.stats) == {name.replace("bbox/", "segm/") for name in bbox.stats}
    assert all(0.0 <= v <= 1.0 for v in segm.stats.values() if not np.isnan(v))
    assert segm.num_detections == bbox.num_detections == len(results)
    faster = evaluate_predictor(predictor, root, "valid", backend="faster")
    for ours, theirs in zip((bbox, segm), faster, strict=True):
        for name, value in ours.stats.items():
            assert value == pytest.approx(theirs.stats[name], abs=1e-9, nan_ok=True)
