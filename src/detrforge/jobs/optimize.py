"""The optimize job: build a version's inference variants on its target's node, time each against
eager in the same process, score each on the eval set, and store each artifact by its sha256.

``python -m detrforge.jobs.optimize --job-id ID --spec JSON``. The work runs as one Ray task that
asks for the target's resources, so the variants are built and timed on the hardware they are
for. Each variant is timed paired with eager (the paired harness of ``detector.paired_latency``:
interleaved blocks, one process), so a speedup is measured under the same load as its baseline.
Each built variant's folder goes to ``<artifact root>/variants/<sha256>/``; the table goes to the
job's MLflow run as ``optimize/result.json``, and the API records the variants on the version
when the job succeeds.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from detrforge.detector.optimize_specs import OptimizeSpec
from detrforge.jobs.benchmark import bench_images, on_target, pair_seed
from detrforge.jobs.driver import JobContext, check_resources, run_driver
from detrforge.jobs.evaluate import local_checkpoint
from detrforge.platform.tags import Tag

__all__ = ["RESULT_ARTIFACT", "main", "optimize_task", "submit_optimize_task"]

RESULT_ARTIFACT = "optimize/result.json"


def optimize_task(spec_data: dict[str, Any], artifact_root: str, job_id: str) -> dict[str, Any]:
    """Runs on the target's node: build, store, time against eager, evaluate."""
    import ray

    from detrforge.detector.inference import evaluate_predictor
    from detrforge.detector.latency import LatencyStats
    from detrforge.detector.paired_latency import measure_paired
    from detrforge.detector.torch_predictor import TorchPredictor
    from detrforge.detector.variants import (
        VARIANT_PREFIX,
        BuiltVariant,
        build_variants,
        calibration_set,
        load_predictor,
    )
    from detrforge.platform.environment import capture_environment
    from detrforge.platform.storage import fetch_local, open_store

    spec = OptimizeSpec.model_validate(spec_data)
    names = list(spec.variants or [])
    cache = Path(tempfile.gettempdir()) / "detrforge-cache"
    store = open_store(artifact_root)
    with tempfile.TemporaryDirectory(prefix="detrforge-optimize-") as tmp:
        checkpoint = local_checkpoint(spec.checkpoint, spec.checkpoint_sha256, cache)
        dataset = Path(fetch_local(spec.dataset, cache))
        calibration = None
        if any(name.endswith("-int8") for name in names):
            calibration = calibration_set(
                dataset,
                spec.resolution,
                num_images=spec.calibration_images,
                split=spec.calibration_split,
            )
        built = build_variants(
            checkpoint,
            spec.model_size,
            spec.resolution,
            Path(tmp) / "variants",
            names=names,
            calibration=calibration,
        )
        eager = TorchPredictor(
            checkpoint, spec.model_size, spec.resolution, num_threads=spec.num_threads
        )
        images = bench_images(dataset, spec.split, spec.resolution)
        eager_ap = _ap(evaluate_predictor(eager, dataset, spec.split))
        eager_e2e: list[float] = []
        eager_model: list[float] = []
        rows: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        for item in built:
            if not isinstance(item, BuiltVariant):
                skipped.append({"variant": item.name, "reason": item.reason})
                continue
            prefix = f"{VARIANT_PREFIX}/{item.sha256}"
            store.put_dir(item.folder, prefix)
            predictor = load_predictor(
                item, item.model_path, spec.resolution, num_threads=spec.num_threads
            )
            paired = measure_paired(
                predictor,
                eager,
                images,
                warmup=spec.warmup,
                runs=spec.runs,
                seed=pair_seed(f"{job_id}/{item.name}"),
                confidence=spec.confidence,
            )
            eager_e2e += paired.baseline.samples_e2e_ms
            eager_model += paired.baseline.samples_model_ms
            ap = _ap(evaluate_predictor(predictor, dataset, spec.split))
            rows.append(
                {
                    "variant": item.name,
                    "runtime": item.runtime,
                    "precision": item.precision,
                    "artifact_uri": store.uri_for(prefix),
                    "model_file": item.model_file,
                    "sha256": item.sha256,
                    "size_bytes": item.size_bytes,
                    "build_seconds": round(item.build_seconds, 3),
                    "recipe": item.recipe,
                    **_figures(paired, ap, eager_ap, spec.ap_tolerance),
                }
            )
            del predictor
    eager_row = {
        "variant": "eager",
        "e2e_ms": _percentiles(LatencyStats.from_samples(eager_e2e)) if eager_e2e else None,
        "model_ms": _percentiles(LatencyStats.from_samples(eager_model)) if eager_model else None,
        "ap": eager_ap,
    }
    within = [row for row in rows if row["within_tolerance"]]
    best = min(within, key=lambda row: row["e2e_ms"]["p95"])["variant"] if within else None
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "target": spec.target,
        "eager": eager_row,
        "variants": rows,
        "skipped": skipped,
        "best": best,
        "ap_tolerance": spec.ap_tolerance,
        "split": spec.split,
        "runs": spec.runs,
        "environment": capture_environment(
            backend="torch", precision="fp32", checkpoint_sha256=spec.checkpoint_sha256
        ),
    }


def _ap(results: list[Any]) -> float:
    return float(results[0].stats["bbox/AP"])


def _percentiles(stats: Any) -> dict[str, float]:
    return {key: round(float(getattr(stats, key)), 3) for key in ("p50", "p95", "p99")}


def _figures(paired: Any, ap: float, eager_ap: float, tolerance: float) -> dict[str, Any]:
    """A variant's row: its latency, its speedup over eager (end-to-end p95; model-only p95
    with the paired interval) and its AP change."""
    variant, eager = paired.candidate, paired.baseline
    ratio = paired.intervals["p95"]  # variant / eager, model-only
    return {
        "e2e_ms": _percentiles(variant.end_to_end),
        "model_ms": _percentiles(variant.model_only),
        "eager_e2e_ms": _percentiles(eager.end_to_end),
        "speedup_e2e_p95": round(eager.end_to_end.p95 / variant.end_to_end.p95, 4),
        "speedup_model_p95": {
            "speedup": round(1.0 / ratio.ratio, 4),
            "low": round(1.0 / ratio.high, 4),
            "high": round(1.0 / ratio.low, 4),
            "confidence": ratio.confidence,
        },
        "ap": ap,
        "ap_change": ap - eager_ap,
        "within_tolerance": ap >= eager_ap - tolerance,
    }


def submit_optimize_task(spec: OptimizeSpec, artifact_root: str, job_id: str) -> Any:
    """Start :func:`optimize_task` on a node with the target's resources; its ``ObjectRef``."""
    task = on_target(optimize_task, spec.num_threads, spec.target_resources)
    return task.remote(spec.model_dump(mode="json"), artifact_root, job_id)


def _body(ctx: JobContext) -> dict[str, str]:
    import json

    import ray

    spec = OptimizeSpec.model_validate(ctx.spec)
    wanted = {"CPU": float(spec.num_threads or 1), **spec.target_resources}
    check_resources(wanted, what=f"hardware target {spec.target!r}", field="target")
    out = ray.get(submit_optimize_task(spec, ctx.artifact_root, ctx.job_id))
    metrics = {"eager/ap": float(out["eager"]["ap"])}
    for row in out["variants"]:
        name = row["variant"]
        metrics[f"{name}/e2e_p95_ms"] = float(row["e2e_ms"]["p95"])
        metrics[f"{name}/model_p95_ms"] = float(row["model_ms"]["p95"])
        metrics[f"{name}/speedup_e2e_p95"] = float(row["speedup_e2e_p95"])
        metrics[f"{name}/ap"] = float(row["ap"])
    ctx.tracker.log_metrics(ctx.run_id, metrics, step=0)
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / Path(RESULT_ARTIFACT).name
        result.write_text(json.dumps(out))
        ctx.tracker.log_artifact(ctx.run_id, result, str(Path(RESULT_ARTIFACT).parent))
    tags = {Tag.env(k): str(v) for k, v in out["environment"].items() if v is not None}
    tags[Tag.NODE_ID] = out["node_id"]
    tags[Tag.TARGET] = spec.target
    return tags


def main(argv: list[str] | None = None) -> int:
    return run_driver("optimize", _body, argv)


if __name__ == "__main__":
    sys.exit(main())
