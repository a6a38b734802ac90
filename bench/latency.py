"""CPU inference latency: our torch eager and ONNX Runtime predictors vs rfdetr's own ``predict()``.

For each resolution, one RF-DETR Nano (rfdetr's default architecture: 300 queries, 2 classes
here, untrained with seeded weights; no weights are downloaded) is timed three ways, alternating
round-robin per repeat in one process so drift hits all backends alike:

- ``torch``:  ``TorchPredictor`` (rfdetr's module and ``PostProcess``, our loop),
- ``onnxrt``: ``OnnxPredictor`` on the model exported by rfdetr's exporter (ORT, CPU provider),
- ``rfdetr``: ``model.predict(images, threshold=0.0, include_source_image=False)``.

Every run is end-to-end from encoded PNG bytes in memory: decode, preprocess, forward,
postprocess (``detrforge.detector.latency.measure_latency``); model-only is the forward pass
alone, which rfdetr's ``predict()`` does not expose. Both torch and ORT use the same number of
intra-op threads. Percentiles: numpy linear interpolation over the samples pooled across repeats;
the p95 spread is the min and max of the per-repeat p95s.

AP is measured on a small synthetic split; the model is untrained, so it is ~0 for every backend:
it shows the three backends agree, not that the model detects anything.

``--size seg-nano`` (or another ``seg-*`` size) times an RF-DETR-Seg model the same way: ORT runs
its export's ``masks`` output, and the table adds each backend's mask decoding p50 (upsampling
the kept masks to the image and thresholding them; part of end to end, rfdetr's included) and
mask AP on a synthetic split with masks.

    .venv/bin/python bench/latency.py                      # 20 runs x 3 repeats, 384 and 192 px
    .venv/bin/python bench/latency.py --runs 10 --repeats 2 --resolutions 192
    .venv/bin/python bench/latency.py --size seg-nano --resolutions 72 --runs 10 --repeats 2

``--variants``: every CPU inference variant (``detrforge.detector.variants``: onnx-fp32,
onnx-opt, onnx-int8, openvino-fp32, openvino-int8) of a *trained* Nano against rfdetr's own
``predict()`` eager, at the first ``--resolutions`` entry (384 by default), batch 1, round-robin
per repeat in one process. The checkpoint is ``--checkpoint`` or one trained here first with
rfdetr's ``train()`` on the synthetic shapes (``--train-epochs``, ``--train-images``,
``--train-resolution``), so AP is above zero; ``--dataset`` measures on a COCO set of your
own (e.g. the one the checkpoint was trained on) instead of the synthetic one. Prints, per
variant: end-to-end p50/p95/p99 and model-only p50/p95 (ms), the p95 speedup over rfdetr eager
(pooled; in brackets the lowest and highest of the per-repeat ratios), AP and its change vs
eager, artifact size and build time, and marks with ``*`` the fastest (end-to-end p95) whose AP
is at most ``--ap-tolerance`` below eager.

    .venv/bin/python bench/latency.py --variants --runs 20 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from detrforge.detector.export import export_onnx  # noqa: E402
from detrforge.detector.inference import evaluate_checkpoint, evaluate_predictor  # noqa: E402
from detrforge.detector.latency import LatencyReport, LatencyStats, measure_latency  # noqa: E402
from detrforge.detector.model import build_detector  # noqa: E402
from detrforge.detector.onnx_predictor import OnnxPredictor  # noqa: E402
from detrforge.detector.predictor import Detections, Predictor, RawOutputs  # noqa: E402
from detrforge.detector.sizes import SEG_MODEL_SIZES, check_resolution  # noqa: E402
from detrforge.detector.synthetic import synth_dataset  # noqa: E402
from detrforge.detector.torch_predictor import TorchPredictor, load_inference_detector  # noqa: E402
from detrforge.platform.environment import capture_environment  # noqa: E402

IMAGE_SIZE = 512  # source images are 512 x 512 PNGs, resized by each backend to the input size
NUM_CLASSES = 2


class RfdetrPredict(Predictor[Any]):
    """rfdetr's ``predict()`` as one opaque step (it cannot be split), top-100 like ours."""

    backend = "rfdetr.predict"
    threshold = 0.0
    max_detections = 100

    def __init__(self, detector: Any, resolution: int, device: str) -> None:
        # predict() moves the model to this device on first use (rfdetr's default is CUDA if any).
        detector.model.device = torch.device(device)
        self.detector = detector
        self.resolution = resolution
        self.device = device

    @property
    def threads(self) -> int:
        return int(torch.get_num_threads())

    def preprocess(self, images: Sequence[Image.Image]) -> Any:
        return list(images)

    def forward(self, batch: Any) -> RawOutputs[Any]:
        out = self.detector.predict(batch, threshold=0.0, include_source_image=False)
        return RawOutputs(boxes=out, logits=None)

    def postprocess(
        self, raw: RawOutputs[Any], sizes: Sequence[tuple[int, int]]
    ) -> list[Detections]:
        k = self.max_detections
        return [
            Detections(
                boxes_xyxy=np.asarray(d.xyxy[:k], dtype=np.float32),
                scores=np.asarray(d.confidence[:k], dtype=np.float32),
                labels=np.asarray(d.class_id[:k], dtype=np.int64),
            )
            for d in raw.boxes
        ]


def save_checkpoint(detector: Any, path: Path) -> Path:
    config = detector.model_config.model_dump()
    torch.save(
        {
            "model": detector.model.model.state_dict(),
            "args": {k: config[k] for k in ("num_classes", "num_queries", "group_detr")},
            "model_name": type(detector).__name__,
            "model_config": config,
        },
        path,
    )
    return path


def load_images(split_dir: Path) -> list[Image.Image]:
    out = []
    for path in sorted(split_dir.glob("*.png")):
        with Image.open(path) as image:
            out.append(image.convert("RGB"))
    return out


def fmt(value: float) -> str:
    return f"{value:8.1f}"


def bench_resolution(args: argparse.Namespace, resolution: int, work: Path, dataset: Path) -> None:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    size = args.size
    detector = build_detector(size, num_classes=NUM_CLASSES, resolution=resolution)
    checkpoint = save_checkpoint(detector, work / f"{size}-{resolution}.pth")
    exported = export_onnx(checkpoint, size, resolution, work / f"{size}-{resolution}.onnx")
    predictors: dict[str, Predictor[Any]] = {
        "torch": TorchPredictor(checkpoint, size, resolution, device=args.device),
        "onnxrt": OnnxPredictor(
            exported.path, resolution, providers=["CPUExecutionProvider"], num_threads=threads
        ),
        "rfdetr": RfdetrPredict(
            load_inference_detector(checkpoint, size, resolution), resolution, args.device
        ),
    }
    images = load_images(dataset / "valid")
    print(
        f"\n=== {size} @ {resolution} px, torch/rfdetr on {args.device}, ORT on CPU: {threads} "
        f"threads, batch 1, {args.warmup} warmup + "
        f"{args.runs} runs x {args.repeats} repeats, {IMAGE_SIZE}px PNG sources; ONNX export "
        f"{exported.export_seconds:.1f} s, {exported.size_bytes / 2**20:.0f} MiB, "
        f"opset {exported.opset}, outputs {', '.join(exported.outputs)}"
    )
    reports: dict[str, list[LatencyReport]] = {name: [] for name in predictors}
    for repeat in range(args.repeats):
        for name, predictor in predictors.items():
            report = measure_latency(predictor, images, warmup=args.warmup, runs=args.runs)
            reports[name].append(report)
            masks = f"   mask p50 {report.masks.p50:7.1f} ms" if report.masks else ""
            print(
                f"  repeat {repeat + 1} {name:<7} e2e p50 {report.end_to_end.p50:7.1f} "
                f"p95 {report.end_to_end.p95:7.1f} ms   model p50 {report.model_only.p50:7.1f} ms"
                f"{masks}"
            )
    pooled = {
        name: (
            LatencyStats.from_samples([s for r in rs for s in r.samples_e2e_ms]),
            LatencyStats.from_samples([s for r in rs for s in r.samples_model_ms]),
            [r.end_to_end.p95 for r in rs],
            [s for r in rs for s in r.samples_mask_ms or []],
        )
        for name, rs in reports.items()
    }
    segmentation = size in SEG_MODEL_SIZES
    base = pooled["rfdetr"][0]
    print(
        f"\n  {'backend':<8}{'e2e p50':>9}{'e2e p95':>9}{'p95 min':>9}{'p95 max':>9}"
        f"{'model p50':>11}{'model p95':>11}{'mask p50' if segmentation else '':>10}"
        f"{'p50/rf':>8}{'p95/rf':>8}   (ms)"
    )
    for name, (e2e, model, p95s, mask_ms) in pooled.items():
        model_cols = (
            f"{'n/a':>11}{'n/a':>11}" if name == "rfdetr" else f"{model.p50:11.1f}{model.p95:11.1f}"
        )
        if segmentation:
            mask_p50 = LatencyStats.from_samples(mask_ms).p50 if mask_ms else None
            model_cols += f"{'n/a':>10}" if mask_p50 is None else f"{mask_p50:10.1f}"
        print(
            f"  {name:<8}{e2e.p50:9.1f}{e2e.p95:9.1f}{min(p95s):9.1f}{max(p95s):9.1f}"
            f"{model_cols}{e2e.p50 / base.p50:8.2f}{e2e.p95 / base.p95:8.2f}"
        )
    print(
        f"\n  AP on the synthetic valid split ({len(images)} images, untrained model: ~0 is "
        "expected; the point is that the backends agree; rfdetr's boxes only)"
    )
    for name, predictor in predictors.items():
        started = time.perf_counter()
        results = evaluate_predictor(predictor, dataset, "valid")
        stats = {k: v for result in results for k, v in result.stats.items()}
        segm = f"  segm/AP {stats['segm/AP']:.4f}" if "segm/AP" in stats else ""
        print(
            f"  {name:<8} bbox/AP {stats['bbox/AP']:.4f}  AP50 "
            f"{stats['bbox/AP50']:.4f}  AR100 {stats['bbox/AR100']:.4f}{segm}  "
            f"({results[0].num_detections} detections, {time.perf_counter() - started:.1f} s)"
        )


def train_checkpoint(args: argparse.Namespace, dataset: Path, out: Path) -> Path:
    """A Nano trained by rfdetr's own ``train()`` on the synthetic shapes (CPU)."""
    from rfdetr import RFDETRNano

    model = RFDETRNano(pretrain_weights=None, num_queries=50, group_detr=1)
    started = time.perf_counter()
    model.train(
        dataset_dir=str(dataset),
        epochs=args.train_epochs,
        batch_size=4,
        resolution=args.train_resolution,
        device="cpu",
        output_dir=str(out),
        num_workers=0,
        progress_bar=None,
        lr=5e-4,
        seed=0,
    )
    for name in ("checkpoint_best_total.pth", "checkpoint_best_ema.pth", "checkpoint.pth"):
        if (out / name).is_file():
            print(f"  trained {args.train_epochs} epochs in {time.perf_counter() - started:.0f} s")
            return out / name
    raise SystemExit(f"rfdetr's train() left no checkpoint in {out}: {sorted(out.iterdir())}")


def bench_variants(args: argparse.Namespace, work: Path, dataset: Path) -> None:
    from detrforge.detector.variants import (
        BuiltVariant,
        build_variants,
        calibration_set,
        load_predictor,
    )

    resolution = args.resolutions[0]
    threads = torch.get_num_threads()
    checkpoint = args.checkpoint or train_checkpoint(args, dataset, work / "train")
    calibration = calibration_set(dataset, resolution, num_images=args.calibration_images, seed=0)
    started = time.perf_counter()
    built = build_variants(
        checkpoint, "nano", resolution, work / "variants", calibration=calibration
    )
    print(
        f"\n=== variants of {checkpoint.name} at {resolution} px built in "
        f"{time.perf_counter() - started:.0f} s; calibration {calibration.record['num_images']}"
        f" train images, fingerprint {calibration.fingerprint[:12]}"
    )
    variants = {b.name: b for b in built if isinstance(b, BuiltVariant)}
    for b in built:
        if not isinstance(b, BuiltVariant):
            print(f"  skipped {b.name}: {b.reason}")
    predictors: dict[str, Predictor[Any]] = {
        "rfdetr": RfdetrPredict(
            load_inference_detector(checkpoint, "nano", resolution), resolution, "cpu"
        ),
    }
    for name, variant in variants.items():
        predictors[name] = load_predictor(
            variant, variant.model_path, resolution, num_threads=threads
        )
    images = load_images(dataset / "valid")
    print(
        f"  {threads} threads, batch 1, {args.warmup} warmup + {args.runs} runs x "
        f"{args.repeats} repeats, round-robin, {IMAGE_SIZE}px PNG sources"
    )
    reports: dict[str, list[LatencyReport]] = {name: [] for name in predictors}
    for _ in range(args.repeats):
        for name, predictor in predictors.items():
            reports[name].append(
                measure_latency(predictor, images, warmup=args.warmup, runs=args.runs)
            )
    ap: dict[str, float] = {}
    for name, predictor in predictors.items():
        ap[name] = evaluate_checkpoint(predictor, dataset, "valid").stats["bbox/AP"]
    e2e = {
        name: LatencyStats.from_samples([s for r in rs for s in r.samples_e2e_ms])
        for name, rs in reports.items()
    }
    model = {
        name: LatencyStats.from_samples([s for r in rs for s in r.samples_model_ms])
        for name, rs in reports.items()
    }
    base = e2e["rfdetr"].p95
    ratios = {
        name: [
            b.end_to_end.p95 / r.end_to_end.p95 for r, b in zip(rs, reports["rfdetr"], strict=True)
        ]
        for name, rs in reports.items()
    }
    eligible = [n for n in variants if ap[n] >= ap["rfdetr"] - args.ap_tolerance]
    best = min(eligible, key=lambda n: e2e[n].p95) if eligible else None
    print(
        f"\n  {'variant':<15}{'e2e p50':>8}{'p95':>8}{'p99':>8}{'model p50':>10}{'p95':>7}"
        f"{'speedup p95':>19}{'AP':>8}{'dAP':>8}{'MiB':>6}{'build s':>8}"
    )
    for name in predictors:
        m = (
            "     n/a    n/a"
            if name == "rfdetr"
            else f"{model[name].p50:10.1f}{model[name].p95:7.1f}"
        )
        size = variants[name].size_bytes / 2**20 if name in variants else 0.0
        build = variants[name].build_seconds if name in variants else 0.0
        speed = f"{base / e2e[name].p95:5.2f}x [{min(ratios[name]):4.2f},{max(ratios[name]):4.2f}]"
        print(
            f"{'*' if name == best else ' '} {name:<15}{e2e[name].p50:8.1f}{e2e[name].p95:8.1f}"
            f"{e2e[name].p99:8.1f}{m}{speed:>19}{ap[name]:8.4f}{ap[name] - ap['rfdetr']:+8.4f}"
            f"{size:6.0f}{build:8.1f}"
        )
    if best is None:
        print(f"\n  no variant is within {args.ap_tolerance} AP of eager")
    else:
        print(
            f"\n  * fastest within {args.ap_tolerance} AP of eager: {best}, "
            f"{base / e2e[best].p95:.2f}x rfdetr eager's end-to-end p95 (target >= 2.0x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per repeat")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs before each repeat")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin repeats")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[384, 192])
    parser.add_argument("--eval-images", type=int, default=8, help="synthetic valid images")
    parser.add_argument("--device", default="cpu", help="torch device of torch and rfdetr")
    parser.add_argument(
        "--size",
        default="nano",
        choices=["nano", *SEG_MODEL_SIZES],
        help="the model size timed (seg-*: with masks); not with --variants",
    )
    parser.add_argument("--variants", action="store_true", help="CPU variants vs rfdetr eager")
    parser.add_argument("--checkpoint", type=Path, help="--variants: a trained Nano .pth")
    parser.add_argument(
        "--dataset",
        type=Path,
        help="--variants: a COCO set (train/ for int8 calibration, valid/ for AP and timing) "
        "instead of the synthetic one, e.g. the set --checkpoint was trained on",
    )
    parser.add_argument("--train-epochs", type=int, default=10, help="--variants: training")
    parser.add_argument("--train-images", type=int, default=64, help="--variants: training")
    parser.add_argument("--train-resolution", type=int, default=384, help="--variants")
    parser.add_argument("--calibration-images", type=int, default=16, help="--variants: int8")
    parser.add_argument("--ap-tolerance", type=float, default=0.005, help="--variants")
    args = parser.parse_args()
    if args.variants and args.resolutions == [384, 192]:
        args.resolutions = [384]
    if args.variants and args.size != "nano":
        parser.error("--variants builds Nano's variants; leave --size at nano")
    for resolution in args.resolutions:
        try:
            check_resolution(args.size, resolution)
        except ValueError as exc:
            parser.error(f"--resolutions: {exc}")

    env = capture_environment(backend="torch+onnxruntime", precision="fp32")
    print(
        f"detrforge {env['detrforge']} ({str(env['detrforge_git_sha'])[:10]}), rfdetr "
        f"{env['rfdetr']}, torch {env['torch']}, onnxruntime {env['onnxruntime']}, "
        f"python {env['python']}"
    )
    print(f"CPU: {env['cpu_model']} x {env['cpu_count']}; {env['os']}; GPU: {env['gpu_name']}")
    print(f"load average at start: {os.getloadavg()}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="detrforge-latency-") as tmp:
        work = Path(tmp)
        dataset = args.dataset if args.variants and args.dataset else work / "shapes"
        if dataset == work / "shapes":
            synth_dataset(
                dataset,
                seed=0,
                num_classes=NUM_CLASSES,
                train_images=args.train_images if args.variants else 4,
                valid_images=args.eval_images,
                image_size=IMAGE_SIZE,
                min_box=32,
                masks=args.size in SEG_MODEL_SIZES,
            )
        if args.variants:
            bench_variants(args, work, dataset)
        else:
            for resolution in args.resolutions:
                bench_resolution(args, resolution, work, dataset)
    print(f"\nload average at end: {os.getloadavg()}")
    print(f"total wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
