"""A segmentation model through ONNX: rfdetr's export with its ``masks`` output, ONNX Runtime
inference with masks decoded in numpy, and its A/B against torch eager.

The model is an untrained Seg Nano (20 queries, 2 classes) at 72 px, seg-nano's smallest valid
resolution (a multiple of 12 from 64), exported once for the module. Tolerances, against what
this repo's CPU measured (torch 2.14, onnxruntime 1.32):

- raw outputs on a seeded N(0, 1) input: boxes and class logits < 1e-4 (measured 0 and ~2e-6),
  mask logits < 1e-3 (measured ~4e-5);
- detections: identical labels and queries, boxes within 1e-2 px (measured 0), scores within
  1e-4 (measured ~1.5e-7);
- masks: every matched mask's IoU >= 0.99 (measured >= 0.9998) and at most 1% of all mask pixels
  differing (measured 3 of 1.48M, 2e-6): ORT's mask logits differ from torch's by ~4e-5, which
  flips only pixels whose upsampled logit is that close to 0;
- numpy vs torch mask decoding on the same logits: pixels may differ only where torch's upsampled
  logit is within 1e-4 of 0 (float32 rounding of the bilinear taps), at most 1e-5 of them
  (measured: none of 12.3M);
- AP on the model's own masks as ground truth: every bbox and segm stat within 0.005 of torch
  eager's (measured equal: segm/AP 0.9881 both; bbox/AP 0 both, the pseudo boxes being the
  masks' extents, which the untrained boxes miss).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image

from detrforge.detector.data import DatasetInfo
from detrforge.detector.export import compare_outputs, export_onnx
from detrforge.detector.onnx_predictor import OnnxPredictor
from detrforge.detector.processing import decode_mask_logits, decode_mask_logits_numpy
from detrforge.detector.specs import EvaluateSpec, parse_spec
from detrforge.detector.synthetic import synth_dataset
from detrforge.detector.torch_predictor import TorchPredictor
from fixtures_seg import SEG_NUM_QUERIES, pseudo_label_masks, save_untrained_seg_nano

RES = 72
MASK_SIDE = RES // 4
NUM_CLASSES = 2
MAX_DETECTIONS = 20
RAW_TOLERANCE = 1e-4
RAW_MASK_TOLERANCE = 1e-3
BOX_TOLERANCE_PX = 1e-2
SCORE_TOLERANCE = 1e-4
MIN_MASK_IOU = 0.99
MAX_PIXEL_DISAGREEMENT = 0.01
DECODE_NEAR_ZERO = 1e-4
MAX_DECODE_DISAGREEMENT = 1e-5
AP_TOLERANCE = 0.005


@pytest.fixture(scope="module")
def seg_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seg-onnx") / f"seg-nano-{RES}.pth"
    return save_untrained_seg_nano(path, class_names=["square", "circle"], resolution=RES)


@pytest.fixture(scope="module")
def seg_onnx(seg_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("seg-onnx") / f"seg-nano-{RES}.onnx"
    return export_onnx(seg_checkpoint, "seg-nano", RES, out)


@pytest.fixture(scope="module")
def torch_predictor(seg_checkpoint: Path) -> TorchPredictor:
    return TorchPredictor(seg_checkpoint, "seg-nano", RES, max_detections=MAX_DETECTIONS)


@pytest.fixture(scope="module")
def onnx_predictor(seg_onnx: Any) -> OnnxPredictor:
    return OnnxPredictor(seg_onnx.path, RES, num_threads=2, max_detections=MAX_DETECTIONS)


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    # Neither square nor the model's size: masks come back at each image's own size.
    return [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        for h, w in ((70, 110), (96, 64), (200, 300))
    ]


def test_export_has_a_masks_output(seg_onnx: Any) -> None:
    assert seg_onnx.outputs == ("dets", "labels", "masks") and seg_onnx.has_masks
    model = onnx.load(str(seg_onnx.path))
    dims = {
        value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
        for value in [*model.graph.input, *model.graph.output]
    }
    assert dims == {
        "input": [1, 3, RES, RES],
        "dets": [1, SEG_NUM_QUERIES, 4],
        "labels": [1, SEG_NUM_QUERIES, NUM_CLASSES + 1],
        "masks": [1, SEG_NUM_QUERIES, MASK_SIDE, MASK_SIDE],
    }


def test_raw_outputs_match_torch(seg_checkpoint: Path, seg_onnx: Any) -> None:
    diffs = compare_outputs(seg_checkpoint, seg_onnx.path, "seg-nano", RES, seed=0)
    assert set(diffs) == {"max_abs_diff_boxes", "max_abs_diff_logits", "max_abs_diff_masks"}
    assert 0.0 <= diffs["max_abs_diff_boxes"] < RAW_TOLERANCE
    assert 0.0 <= diffs["max_abs_diff_logits"] < RAW_TOLERANCE
    assert 0.0 <= diffs["max_abs_diff_masks"] < RAW_MASK_TOLERANCE


def test_detections_and_masks_match_torch(
    torch_predictor: TorchPredictor, onnx_predictor: OnnxPredictor
) -> None:
    assert onnx_predictor.has_masks and torch_predictor.has_masks
    images = _images()
    eager = torch_predictor.predict(images)
    ort = onnx_predictor.predict(images)  # a batch of 3 through a batch-1 graph
    differing = total = 0
    for image, a, b in zip(images, eager, ort, strict=True):
        assert len(a) == len(b) == MAX_DETECTIONS
        assert a.queries is not None and b.queries is not None
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.queries, b.queries)
        np.testing.assert_allclose(a.boxes_xyxy, b.boxes_xyxy, rtol=0, atol=BOX_TOLERANCE_PX)
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=SCORE_TOLERANCE)
        assert a.masks is not None and b.masks is not None and b.masks.dtype == np.bool_
        assert b.masks.shape == a.masks.shape == (MAX_DETECTIONS, image.height, image.width)
        union = (a.masks | b.masks).sum(axis=(1, 2))
        iou = (a.masks & b.masks).sum(axis=(1, 2)) / np.maximum(union, 1)
        assert iou[union > 0].min() >= MIN_MASK_IOU
        differing += int((a.masks != b.masks).sum())
        total += a.masks.size
        # Untrained, yet its masks are neither empty nor full: the comparison has content.
        assert 0.05 < a.masks.mean() < 0.95
    assert differing / total <= MAX_PIXEL_DISAGREEMENT


def test_numpy_mask_decoding_equals_torchs(onnx_predictor: OnnxPredictor) -> None:
    import torch
    import torch.nn.functional as F  # noqa: N812

    images = _images()
    raw = onnx_predictor.forward(onnx_predictor.preprocess(images))
    assert raw.masks is not None and raw.masks.shape == (3, SEG_NUM_QUERIES, MASK_SIDE, MASK_SIDE)
    rng = np.random.default_rng(1)
    cases = [(raw.masks[0], 70, 110), (raw.masks[2], 200, 300), (raw.masks[1], 10, 7)]
    cases.append((rng.standard_normal((40, MASK_SIDE, MASK_SIDE)).astype(np.float32), 427, 640))
    differing = total = 0
    for logits, height, width in cases:
        ours = decode_mask_logits_numpy(logits, height, width)
        theirs = decode_mask_logits(torch.from_numpy(logits), height, width)
        assert ours.dtype == theirs.dtype == np.bool_
        assert ours.shape == theirs.shape == (logits.shape[0], height, width)
        upsampled = F.interpolate(
            torch.from_numpy(logits).unsqueeze(1),
            size=(height, width),
            mode="bilinear",
            align_corners=False,
        )[:, 0].numpy()
        np.testing.assert_array_equal(theirs, upsampled > 0)
        apart = ours != theirs
        assert np.all(np.abs(upsampled[apart]) < DECODE_NEAR_ZERO)
        differing += int(apart.sum())
        total += ours.size
        assert 0.05 < ours.mean() < 0.95
    assert differing / total <= MAX_DECODE_DISAGREEMENT
    # No detection kept: no mask, at the image's size.
    assert decode_mask_logits_numpy(raw.masks[0][:0], 5, 9).shape == (0, 5, 9)


def test_ap_on_onnxruntime_matches_eager(
    torch_predictor: TorchPredictor,
    onnx_predictor: OnnxPredictor,
    seg_checkpoint: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from detrforge.detector.inference import evaluate_predictor

    root = tmp_path_factory.mktemp("seg-onnx-data")
    dataset: DatasetInfo = synth_dataset(
        root / "masks",
        seed=1,
        num_classes=2,
        train_images=2,
        valid_images=3,
        image_size=80,
        masks=True,
    )
    pseudo = pseudo_label_masks(
        Path(dataset.root), root / "pseudo", seg_checkpoint, per_image=3, resolution=RES
    )
    eager = evaluate_predictor(torch_predictor, pseudo, "valid")
    ort = evaluate_predictor(onnx_predictor, pseudo, "valid")
    assert [r.iou_type for r in ort] == ["bbox", "segm"]
    assert eager[1].stats["segm/AP"] > 0.5, "the comparison must not be vacuous"
    for ours, theirs in zip(ort, eager, strict=True):
        assert ours.num_detections == theirs.num_detections
        for name, value in theirs.stats.items():
            other = ours.stats[name]
            assert (math.isnan(value) and math.isnan(other)) or abs(value - other) <= AP_TOLERANCE


def test_jobs_build_an_onnxruntime_seg_predictor(seg_checkpoint: Path, tmp_path: Path) -> None:
    from detrforge.detector.latency import measure_latency
    from detrforge.jobs.evaluate import make_predictor

    body = {
        "checkpoint": str(seg_checkpoint),
        "dataset": "/d",
        "model_size": "seg-nano",
        "resolution": RES,
        "backend": "onnxruntime",
        "num_threads": 2,
    }
    predictor, onnx_path = make_predictor(
        parse_spec(EvaluateSpec, body), seg_checkpoint, workdir=tmp_path
    )
    assert isinstance(predictor, OnnxPredictor) and predictor.has_masks
    assert onnx_path is not None and onnx_path.is_file()
    # What the benchmark job times: mask decoding apart, inside end to end.
    report = measure_latency(predictor, _images()[:1], warmup=1, runs=3)
    assert report.masks is not None and report.samples_mask_ms is not None
    assert len(report.samples_mask_ms) == 3 and min(report.samples_mask_ms) > 0
    for model, masks, e2e in zip(
        report.samples_model_ms, report.samples_mask_ms, report.samples_e2e_ms, strict=True
    ):
        assert 0 < model < e2e and masks < e2e
    assert report.to_metrics()["mask_ms/p50"] == report.masks.p50 > 0
