"""The benchmark job: latency of a checkpoint on a named hardware target.

The measurement runs as a Ray task that asks for the target's resources, so Ray places it on a
node that has that hardware ("on-hardware"). A target no node offers fails at once. Results go to
the job's MLflow run: ``latency_ms/*`` (end to end), ``model_ms/*`` (forward only),
``mask_ms/*`` (a segmentation model's mask decoding, inside end to end), throughput,
the environment pins as tags, and the raw samples plus the whole record as artifacts, from which
the API appends one row to the benchmark history.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from detrforge.detector.specs import BenchmarkSpec
from detrforge.jobs.driver import JobContext, check_resources, run_driver
from detrforge.jobs.evaluate import local_checkpoint, make_predictor
from detrforge.platform.tags import Tag
from detrforge.platform.tracking import Tracker

__all__ = [
    "bench_images",
    "benchmark_task",
    "log_benchmark_result",
    "main",
    "on_target",
    "pair_seed",
    "submit_benchmark_task",
]

SYNTHETIC_IMAGES = 8


def bench_images(
    dataset: Path | None, split: str, resolution: int, *, limit: int = 16
) -> list[Any]:
    """The images to time: the split's first ``limit`` images, or seeded synthetic ones."""
    import numpy as np
    from PIL import Image

    if dataset is not None:
        data = json.loads((dataset / split / "_annotations.coco.json").read_text())
        entries = sorted(data["images"], key=lambda e: int(e["id"]))[:limit]
        return [Image.open(dataset / split / e["file_name"]).convert("RGB") for e in entries]
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8))
        for _ in range(SYNTHETIC_IMAGES)
    ]


def benchmark_task(spec_data: dict[str, Any], artifact_root: str, job_id: str) -> dict[str, Any]:
    """Runs on the target's node: load, (export), time, capture the environment."""
    import ray

    from detrforge.detector.data import fingerprint_dataset
    from detrforge.detector.inference import evaluate_predictor
    from detrforge.detector.latency import measure_latency
    from detrforge.detector.paired_latency import measure_paired
    from detrforge.platform.blobs import sha256_file
    from detrforge.platform.environment import capture_environment
    from detrforge.platform.node_load import LoadWatch
    from detrforge.platform.storage import fetch_local, open_store

    spec = BenchmarkSpec.model_validate(spec_data)
    cache = Path(tempfile.gettempdir()) / "detrforge-cache"
    with tempfile.TemporaryDirectory(prefix="detrforge-bench-") as tmp:
        checkpoint = local_checkpoint(spec.checkpoint, spec.checkpoint_sha256, cache)
        checkpoint_sha = spec.checkpoint_sha256 or sha256_file(checkpoint)
        dataset = Path(fetch_local(spec.dataset, cache)) if spec.dataset else None
        predictor, onnx_path = make_predictor(spec, checkpoint, workdir=Path(tmp))
        export = None
        if onnx_path is not None:
            stored = open_store(artifact_root).put_file(
                onnx_path, f"exports/{checkpoint_sha[:16]}/{spec.resolution}/model.onnx"
            )
            export = {"uri": stored.uri, "sha256": stored.sha256, "size": stored.size}
        images = bench_images(dataset, spec.split, spec.resolution)
        paired = None
        watch = LoadWatch()
        if spec.baseline is not None:
            arm = spec.baseline
            baseline_spec = spec.model_copy(
                update={
                    "checkpoint": arm.checkpoint,
                    "model_size": arm.model_size,
                    "resolution": arm.resolution,
                    "variant": spec.baseline_variant,
                }
            )
            baseline_checkpoint = local_checkpoint(arm.checkpoint, arm.checkpoint_sha256, cache)
            baseline, _ = make_predictor(baseline_spec, baseline_checkpoint, workdir=Path(tmp))
            watch.start()
            paired = measure_paired(
                predictor,
                baseline,
                images,
                warmup=spec.warmup,
                runs=spec.runs,
                seed=pair_seed(job_id),
                max_ratio=spec.max_ratio,
                confidence=spec.confidence,
                max_rounds=spec.max_rounds,
            )
            report = paired.candidate
        else:
            watch.start()
            report = measure_latency(
                predictor,
                images,
                warmup=spec.warmup,
                runs=spec.runs,
                batch_size=spec.batch_size,
                inter_run_sleep_ms=spec.inter_run_sleep_ms,
            )
        node_load = watch.stop()
        fingerprint = fingerprint_dataset(dataset, splits=(spec.split,)) if dataset else None
        ap: dict[str, float] | None = None
        if spec.evaluate and dataset is not None:
            ap = {}
            for result in evaluate_predictor(predictor, dataset, spec.split):
                ap.update(result.stats)
    env = capture_environment(
        # A stored variant's runtime is named by the variant (onnx-int8, openvino-fp32, ...).
        backend=spec.variant.name if spec.variant else spec.backend,
        precision=spec.precision,
        checkpoint_sha256=checkpoint_sha,
        dataset_fingerprint=fingerprint,
    )
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "checkpoint_sha256": checkpoint_sha,
        "model_only": report.model_only.to_dict(),
        "end_to_end": report.end_to_end.to_dict(),
        # Mask decoding (segmentation models): part of end to end, not of model-only.
        "masks": report.masks.to_dict() if report.masks is not None else None,
        "samples_mask_ms": report.samples_mask_ms,
        "images_per_s": report.images_per_s,
        "threads": report.threads,
        "device": report.device,
        "samples_model_ms": report.samples_model_ms,
        "samples_e2e_ms": report.samples_e2e_ms,
        "environment": env,
        "dataset_fingerprint": fingerprint,
        "export": export,
        # The variant artifacts timed instead of the checkpoints (verified by sha256).
        "variant": spec.variant.model_dump() if spec.variant else None,
        "baseline_variant": spec.baseline_variant.model_dump() if spec.baseline_variant else None,
        "ap": ap,
        "node_load": node_load,
        # With both arms' raw samples: the history keeps them (the gate reads the summary).
        "paired": None if paired is None else {**paired.summary(), "samples": paired.samples()},
    }


def pair_seed(job_id: str) -> int:
    """The AB/BA order's seed: fixed per job (a rerun of the job repeats it), different across
    jobs."""
    return int(hashlib.sha256(job_id.encode()).hexdigest()[:8], 16)


def on_target(func: Any, num_threads: int | None, target_resources: dict[str, float]) -> Any:
    """``func`` as a Ray task that asks for a hardware target's resources and its threads, so
    Ray places it on a node with that hardware."""
    import ray

    return ray.remote(
        num_cpus=num_threads or 1,
        resources={k: v for k, v in target_resources.items() if k not in ("CPU", "GPU")},
        num_gpus=target_resources.get("GPU", 0),
    )(func)


def submit_benchmark_task(spec: BenchmarkSpec, artifact_root: str, job_id: str) -> Any:
    """Start :func:`benchmark_task` on a node with the target's resources; its ``ObjectRef``."""
    task = on_target(benchmark_task, spec.num_threads, spec.target_resources)
    return task.remote(spec.model_dump(mode="json"), artifact_root, job_id)


def log_benchmark_result(
    tracker: Tracker, run_id: str, out: dict[str, Any], *, target: str
) -> dict[str, str]:
    """Log a :func:`benchmark_task` result to ``run_id``; returns the run's tags to set."""
    e2e, model = out["end_to_end"], out["model_only"]
    metrics = {f"latency_ms/{k}": float(e2e[k]) for k in ("p50", "p95", "p99", "mean", "std")}
    metrics.update({f"model_ms/{k}": float(model[k]) for k in ("p50", "p95", "p99", "mean")})
    if out.get("masks"):
        masks = out["masks"]
        metrics.update({f"mask_ms/{k}": float(masks[k]) for k in ("p50", "p95", "p99", "mean")})
    metrics["throughput/img_s"] = float(out["images_per_s"])
    if out.get("paired"):
        for name, interval in out["paired"]["ratio"].items():
            metrics[f"paired/{name}_ratio"] = float(interval["ratio"])
            metrics[f"paired/{name}_ratio_low"] = float(interval["low"])
            metrics[f"paired/{name}_ratio_high"] = float(interval["high"])
    if out["ap"]:
        metrics.update({k: v for k, v in out["ap"].items() if v is not None})
    tracker.log_metrics(run_id, metrics, step=0)
    with tempfile.TemporaryDirectory() as tmp:
        samples = Path(tmp) / "samples.json"
        raw = {"model_ms": out["samples_model_ms"], "e2e_ms": out["samples_e2e_ms"]}
        if out.get("samples_mask_ms"):
            raw["mask_ms"] = out["samples_mask_ms"]
        if out.get("paired"):
            raw["paired"] = out["paired"]["samples"]  # both arms, in measurement order
        samples.write_text(json.dumps(raw))
        record = Path(tmp) / "record.json"
        record.write_text(json.dumps({k: v for k, v in out.items() if not k.startswith("samples")}))
        tracker.log_artifact(run_id, samples, "benchmark")
        tracker.log_artifact(run_id, record, "benchmark")
    tags = {Tag.env(k): str(v) for k, v in out["environment"].items() if v is not None}
    tags[Tag.NODE_ID] = out["node_id"]
    tags[Tag.TARGET] = target
    if out["export"]:
        tags[Tag.ONNX_URI] = out["export"]["uri"]
        tags[Tag.ONNX_SHA256] = out["export"]["sha256"]
    return tags


def _body(ctx: JobContext) -> dict[str, str]:
    import ray

    spec = BenchmarkSpec.model_validate(ctx.spec)
    wanted = {"CPU": float(spec.num_threads or 1), **spec.target_resources}
    check_resources(wanted, what=f"hardware target {spec.target!r}", field="target")
    out = ray.get(submit_benchmark_task(spec, ctx.artifact_root, ctx.job_id))
    return log_benchmark_result(ctx.tracker, ctx.run_id, out, target=spec.target)


def main(argv: list[str] | None = None) -> int:
    return run_driver("benchmark", _body, argv)


if __name__ == "__main__":
    sys.exit(main())
