"""What a job's MLflow run says about it, as job-row fields and benchmark history rows.

Pure functions of what the tracker returned: ``jobs.py`` reads the run, these shape what it read.
"""

from __future__ import annotations

from typing import Any

from detrforge.detector.specs import BenchmarkSpec
from detrforge.platform.tags import Tag
from detrforge.platform.tracking import RunSummary
from detrforge.registry.entities import Job

__all__ = ["PROGRESS_KEYS", "benchmark_row", "measured_fields", "tracking_fields"]

# Run metric -> the job row's ``progress`` key.
PROGRESS_KEYS = {
    "progress/epoch": "epoch",
    "progress/step": "step",
    "progress/total_steps": "total_steps",
    "progress/eta_s": "eta_s",
    "train/loss_step": "loss",
}


def tracking_fields(summary: RunSummary, checkpoints: list[str]) -> dict[str, Any]:
    """Job-row fields from the job's run: progress, metrics, model, newest checkpoint.

    ``_run_error`` (the run's error tag) is for the caller to use or drop, never to store.
    """
    progress = {
        dst: summary.metrics[src] for src, dst in PROGRESS_KEYS.items() if src in summary.metrics
    }
    metrics = {
        k: v
        for k, v in summary.metrics.items()
        if not k.startswith(("progress/", "attempt/", "checkpoint/"))
    }
    fields: dict[str, Any] = {
        "mlflow_run_id": summary.run_id,
        "progress": progress,
        "metrics": metrics,
    }
    if Tag.MODEL_URI in summary.tags:
        fields["model_uri"] = summary.tags[Tag.MODEL_URI]
        fields["model_sha256"] = summary.tags.get(Tag.MODEL_SHA256)
    if checkpoints:
        fields["checkpoint_uri"] = checkpoints[-1]
    if Tag.ERROR in summary.tags:
        fields["_run_error"] = summary.tags[Tag.ERROR]
    return fields


def benchmark_row(job: Job, run_id: str, out: dict[str, Any]) -> dict[str, Any]:
    """The benchmark history row of a finished benchmark job from its ``benchmark/record.json``."""
    spec = BenchmarkSpec.model_validate(job.spec)
    return {
        "job_id": job.id,
        "checkpoint_uri": spec.checkpoint,
        "checkpoint_sha256": out["checkpoint_sha256"],
        "model_size": spec.model_size,
        "target": spec.target,
        "target_resources": spec.target_resources,
        "node_id": out["node_id"],
        "backend": spec.variant.name if spec.variant else spec.backend,
        "precision": spec.precision,
        "resolution": spec.resolution,
        "batch_size": spec.batch_size,
        "warmup": spec.warmup,
        "runs": spec.runs,
        **measured_fields(out),
        "mlflow_run_id": run_id,
        "dataset_fingerprint": out["dataset_fingerprint"],
        "model_name": spec.model_name,
        "model_version": spec.model_version,
    }


def measured_fields(out: dict[str, Any]) -> dict[str, Any]:
    """The measured part of a benchmark history row, from a ``benchmark/record.json``."""
    e2e, model = out["end_to_end"], out["model_only"]
    masks = out.get("masks") or {}  # a segmentation model's mask decoding
    return {
        "threads": out["threads"],
        "device": out["device"],
        "p50_ms": model["p50"],
        "p95_ms": model["p95"],
        "p99_ms": model["p99"],
        "mean_ms": model["mean"],
        "std_ms": model["std"],
        "min_ms": model["min"],
        "max_ms": model["max"],
        "e2e_p50_ms": e2e["p50"],
        "e2e_p95_ms": e2e["p95"],
        "e2e_p99_ms": e2e["p99"],
        "mask_p50_ms": masks.get("p50"),
        "mask_p95_ms": masks.get("p95"),
        "mask_p99_ms": masks.get("p99"),
        "images_per_s": out["images_per_s"],
        "environment": out["environment"],
        "paired": out.get("paired"),  # absent from records of earlier versions
        "node_load": out.get("node_load"),
    }
