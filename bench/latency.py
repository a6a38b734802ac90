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

    .venv/bin/python bench/latency.py                      # 20 runs x 3 repeats, 384 and 192 px
    .venv/bin/python bench/latency.py --runs 10 --repeats 2 --resolutions 192
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
from detrforge.detector.inference import evaluate_checkpoint  # noqa: E402
from detrforge.detector.latency import LatencyReport, LatencyStats, measure_latency  # noqa: E402
from detrforge.detector.model import build_detector  # noqa: E402
from detrforge.detector.onnx_predictor import OnnxPredictor  # noqa: E402
from detrforge.detector.predictor import Detections, Predictor, RawOutputs  # noqa: E402
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
    detector = build_detector("nano", num_classes=NUM_CLASSES, resolution=resolution)
    checkpoint = save_checkpoint(detector, work / f"nano-{resolution}.pth")
    exported = export_onnx(checkpoint, "nano", resolution, work / f"nano-{resolution}.onnx")
    predictors: dict[str, Predictor[Any]] = {
        "torch": TorchPredictor(checkpoint, "nano", resolution, device=args.device),
        "onnxrt": OnnxPredictor(
            exported.path, resolution, providers=["CPUExecutionProvider"], num_threads=threads
        ),
        "rfdetr": RfdetrPredict(
            load_inference_detector(checkpoint, "nano", resolution), resolution, args.device
        ),
    }
    images = load_images(dataset / "valid")
    print(
        f"\n=== Nano @ {resolution} px, torch/rfdetr on {args.device}, ORT on CPU: {threads} "
        f"threads, batch 1, {args.warmup} warmup + "
        f"{args.runs} runs x {args.repeats} repeats, {IMAGE_SIZE}px PNG sources; ONNX export "
        f"{exported.export_seconds:.1f} s, {exported.size_bytes / 2**20:.0f} MiB, "
        f"opset {exported.opset}"
    )
    reports: dict[str, list[LatencyReport]] = {name: [] for name in predictors}
    for repeat in range(args.repeats):
        for name, predictor in predictors.items():
            report = measure_latency(predictor, images, warmup=args.warmup, runs=args.runs)
            reports[name].append(report)
            print(
                f"  repeat {repeat + 1} {name:<7} e2e p50 {report.end_to_end.p50:7.1f} "
                f"p95 {report.end_to_end.p95:7.1f} ms   model p50 {report.model_only.p50:7.1f} ms"
            )
    pooled = {
        name: (
            LatencyStats.from_samples([s for r in rs for s in r.samples_e2e_ms]),
            LatencyStats.from_samples([s for r in rs for s in r.samples_model_ms]),
            [r.end_to_end.p95 for r in rs],
        )
        for name, rs in reports.items()
    }
    base = pooled["rfdetr"][0]
    print(
        f"\n  {'backend':<8}{'e2e p50':>9}{'e2e p95':>9}{'p95 min':>9}{'p95 max':>9}"
        f"{'model p50':>11}{'model p95':>11}{'p50/rf':>8}{'p95/rf':>8}   (ms)"
    )
    for name, (e2e, model, p95s) in pooled.items():
        model_cols = (
            f"{'n/a':>11}{'n/a':>11}" if name == "rfdetr" else f"{model.p50:11.1f}{model.p95:11.1f}"
        )
        print(
            f"  {name:<8}{e2e.p50:9.1f}{e2e.p95:9.1f}{min(p95s):9.1f}{max(p95s):9.1f}"
            f"{model_cols}{e2e.p50 / base.p50:8.2f}{e2e.p95 / base.p95:8.2f}"
        )
    print(
        f"\n  AP on the synthetic valid split ({len(images)} images, untrained model: ~0 is "
        "expected; the point is that the backends agree)"
    )
    for name, predictor in predictors.items():
        started = time.perf_counter()
        result = evaluate_checkpoint(predictor, dataset, "valid")
        print(
            f"  {name:<8} bbox/AP {result.stats['bbox/AP']:.4f}  AP50 "
            f"{result.stats['bbox/AP50']:.4f}  AR100 {result.stats['bbox/AR100']:.4f}  "
            f"({result.num_detections} detections, {time.perf_counter() - started:.1f} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="timed runs per repeat")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs before each repeat")
    parser.add_argument("--repeats", type=int, default=3, help="round-robin repeats")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[384, 192])
    parser.add_argument("--eval-images", type=int, default=8, help="synthetic valid images")
    parser.add_argument("--device", default="cpu", help="torch device of torch and rfdetr")
    args = parser.parse_args()

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
        dataset = work / "shapes"
        synth_dataset(
            dataset,
            seed=0,
            num_classes=NUM_CLASSES,
            train_images=4,
            valid_images=args.eval_images,
            image_size=IMAGE_SIZE,
            min_box=32,
        )
        for resolution in args.resolutions:
            bench_resolution(args, resolution, work, dataset)
    print(f"\nload average at end: {os.getloadavg()}")
    print(f"total wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
