"""COCO bbox evaluation wall time: ours (``evaluate_coco``) vs plain pycocotools, same numbers.

A seeded synthetic set held in memory: ``--images`` images of 640 x 480 with 1-8 ground-truth
boxes each over 10 categories, and exactly ``--dets`` detections per image (a jittered copy of
most ground-truth boxes, the rest random boxes, random scores). Timed, each from the same
in-memory dicts:

- ``ours/faster``:      ``evaluate_coco(gt, dets, backend="faster")`` (validation, copies,
  faster-coco-eval's C++ evaluate/accumulate, per-class table),
- ``ours/pycocotools``: ``evaluate_coco(..., backend="pycocotools")``,
- ``plain pycocotools``: ``COCO()`` + ``loadRes`` + ``COCOeval`` evaluate/accumulate/summarize
  on deep copies, as a user would call it.

The 12 stats of every run must be identical to plain pycocotools' (exact float equality); the
script exits 1 otherwise.

    .venv/bin/python bench/eval_speed.py                     # 5,000 images x 20 detections
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import sys
import time
from typing import Any

import numpy as np

from detrforge.detector.evaluation import STAT_NAMES, evaluate_coco

WIDTH, HEIGHT = 640, 480
NUM_CATEGORIES = 10


def make_data(
    num_images: int, dets_per_image: int, seed: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        images.append(
            {"id": image_id, "width": WIDTH, "height": HEIGHT, "file_name": f"{image_id}.jpg"}
        )
        n_gt = int(rng.integers(1, 9))
        sizes = np.exp(rng.uniform(np.log(8), np.log(300), size=(n_gt, 2)))  # small..large
        gt_boxes = []
        for w, h in sizes:
            x = rng.uniform(0, WIDTH - w)
            y = rng.uniform(0, HEIGHT - h)
            category = int(rng.integers(1, NUM_CATEGORIES + 1))
            gt_boxes.append((x, y, w, h, category))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
        for k in range(dets_per_image):
            if k < len(gt_boxes) and rng.random() < 0.85:
                x, y, w, h, category = gt_boxes[k]
                jitter = rng.normal(0, 0.08, size=4) * np.array([w, h, w, h])
                x, y, w, h = np.array([x, y, w, h]) + jitter
                if rng.random() < 0.1:
                    category = int(rng.integers(1, NUM_CATEGORIES + 1))
                score = rng.uniform(0.3, 1.0)
            else:
                w, h = np.exp(rng.uniform(np.log(8), np.log(300), size=2))
                x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
                category = int(rng.integers(1, NUM_CATEGORIES + 1))
                score = rng.uniform(0.0, 0.7)
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(category),
                    "bbox": [float(x), float(y), float(max(w, 1.0)), float(max(h, 1.0))],
                    "score": float(score),
                }
            )
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, NUM_CATEGORIES + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def plain_pycocotools(gt: dict[str, Any], dets: list[dict[str, Any]]) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats[:12]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dets", type=int, default=20, help="detections per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each (min reported)")
    args = parser.parse_args()

    started = time.perf_counter()
    gt, dets = make_data(args.images, args.dets, args.seed)
    print(
        f"{len(gt['images'])} images, {len(gt['annotations'])} GT boxes, {len(dets)} detections, "
        f"{NUM_CATEGORIES} categories (generated in {time.perf_counter() - started:.1f} s)"
    )

    def ours(backend: str) -> list[float]:
        stats = evaluate_coco(gt, dets, backend=backend).stats
        # evaluate_coco reports "undefined" as NaN where COCOeval writes -1.
        return [-1.0 if math.isnan(stats[name]) else stats[name] for name in STAT_NAMES]

    runners = {
        "plain pycocotools": lambda: plain_pycocotools(gt, dets),
        "ours/pycocotools": lambda: ours("pycocotools"),
        "ours/faster": lambda: ours("faster"),
    }
    times: dict[str, float] = {}
    results: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, run in runners.items():
            t0 = time.perf_counter()
            results[name] = run()
            elapsed = time.perf_counter() - t0
            times[name] = min(times.get(name, math.inf), elapsed)

    reference = results["plain pycocotools"]
    print(f"\n{'':<20}{'wall s':>8}{'vs plain':>10}   12 stats identical to plain pycocotools")
    ok = True
    for name, seconds in times.items():
        same = results[name] == reference
        ok &= same
        diff = max(abs(a - b) for a, b in zip(results[name], reference, strict=True))
        print(
            f"{name:<20}{seconds:8.2f}{times['plain pycocotools'] / seconds:9.2f}x   "
            f"{'yes' if same else f'NO (max abs diff {diff:.3g})'}"
        )
    print("\nstats (plain pycocotools):")
    for name, value in zip(STAT_NAMES, reference, strict=True):
        print(f"  {name:<12} {value:.6f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
