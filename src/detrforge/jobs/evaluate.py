"""The evaluation job: COCO bbox AP of a checkpoint on one split, run as a Ray task; a
segmentation model's mask AP too, on the same predictions.

``python -m detrforge.jobs.evaluate --job-id ID --spec JSON``; metrics go to the job's MLflow run
under ``bbox/*`` (and ``segm/*``), the per-class table as ``eval/per_class.json`` (and
``eval/per_class_segm.json``), and the eval split's fingerprint as a tag (results on different
fingerprints are never compared).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detrforge.detector.specs import BenchmarkSpec, EvaluateSpec, VariantArtifact
from detrforge.jobs.driver import JobContext, run_driver
from detrforge.platform.tags import Tag

if TYPE_CHECKING:
    from detrforge.detector.predictor import Predictor

__all__ = ["evaluate_task", "local_checkpoint", "local_variant", "main", "make_predictor"]


def local_checkpoint(uri: str, expected_sha256: str | None, cache: Path) -> Path:
    """The checkpoint on this node, its sha256 verified when one is expected."""
    from detrforge.platform.blobs import sha256_file
    from detrforge.platform.errors import IntegrityError
    from detrforge.platform.storage import fetch_local

    path = Path(fetch_local(uri, cache))
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise IntegrityError(
                f"checkpoint changed or corrupt: {uri} has sha256 {actual}, expected "
                f"{expected_sha256}",
                field="checkpoint",
            )
    return path


def local_variant(artifact: VariantArtifact, cache: Path) -> Path:
    """The variant's folder on this node, its content address verified: the file a runtime
    loads is in it."""
    from detrforge.detector.variants import artifact_sha256
    from detrforge.platform.errors import IntegrityError
    from detrforge.platform.storage import fetch_local

    folder = Path(fetch_local(artifact.uri, cache))
    actual = artifact_sha256(folder)
    if actual != artifact.sha256:
        raise IntegrityError(
            f"variant {artifact.name} changed or corrupt: {artifact.uri} has sha256 {actual}, "
            f"expected {artifact.sha256}",
            field="variant",
        )
    if not (folder / artifact.model_file).is_file():
        raise IntegrityError(
            f"variant {artifact.name} at {artifact.uri} has no {artifact.model_file}",
            field="variant",
        )
    return folder / artifact.model_file


def make_predictor(
    spec: EvaluateSpec | BenchmarkSpec, checkpoint: Path, *, workdir: Path
) -> tuple[Predictor[Any], Path | None]:
    """A predictor for ``spec.variant`` when set (the stored artifact, verified), else for
    ``spec.backend``; for ONNX Runtime also the exported ``.onnx`` file (with a ``masks`` output
    for a segmentation model)."""
    from detrforge.detector.onnx_predictor import OnnxPredictor
    from detrforge.detector.torch_predictor import TorchPredictor

    size, resolution, threads = spec.model_size, spec.resolution, spec.num_threads
    if spec.variant is not None:
        from detrforge.detector.variants import load_predictor

        cache = Path(tempfile.gettempdir()) / "detrforge-cache"
        model_path = local_variant(spec.variant, cache)
        return load_predictor(spec.variant.name, model_path, resolution, num_threads=threads), None
    if spec.backend == "onnxruntime":
        from detrforge.detector.export import export_onnx

        exported = export_onnx(checkpoint, size, resolution, workdir / f"model-{resolution}.onnx")
        return OnnxPredictor(exported.path, resolution, num_threads=threads), exported.path
    return TorchPredictor(checkpoint, size, resolution, num_threads=threads), None


def evaluate_task(spec_data: dict[str, Any]) -> dict[str, Any]:
    """Runs on a Ray worker: fetch, verify, predict the split, COCOeval."""
    import ray

    from detrforge.detector.data import fingerprint_dataset
    from detrforge.detector.inference import evaluate_predictor
    from detrforge.platform.storage import fetch_local

    spec = EvaluateSpec.model_validate(spec_data)
    with tempfile.TemporaryDirectory(prefix="detrforge-eval-") as tmp:
        cache = Path(tempfile.gettempdir()) / "detrforge-cache"
        checkpoint = local_checkpoint(spec.checkpoint, spec.checkpoint_sha256, cache)
        dataset = Path(fetch_local(spec.dataset, cache))
        predictor, _ = make_predictor(spec, checkpoint, workdir=Path(tmp))
        results = evaluate_predictor(predictor, dataset, spec.split, backend=spec.eval_backend)
    return {
        "result": results[0].to_dict(),
        "segm": results[1].to_dict() if len(results) > 1 else None,
        "eval_fingerprint": fingerprint_dataset(dataset, splits=(spec.split,)),
        "node_id": ray.get_runtime_context().get_node_id(),
    }


def _body(ctx: JobContext) -> dict[str, str]:
    import ray

    spec = EvaluateSpec.model_validate(ctx.spec)
    task = ray.remote(num_cpus=spec.num_threads or 1)(evaluate_task)
    out = ray.get(task.remote(spec.model_dump(mode="json")))
    results = {"per_class.json": out["result"], "per_class_segm.json": out.get("segm")}
    stats = {
        k: v
        for result in results.values()
        if result is not None
        for k, v in result["stats"].items()
        if v is not None
    }
    ctx.tracker.log_metrics(ctx.run_id, stats, step=0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, result in results.items():
            if result is None:
                continue
            path = Path(tmp) / name
            path.write_text(json.dumps(result, indent=2))
            ctx.tracker.log_artifact(ctx.run_id, path, "eval")
    return {
        Tag.EVAL_FINGERPRINT: out["eval_fingerprint"],
        Tag.EVAL_SPLIT: spec.split,
        Tag.NODE_ID: out["node_id"],
        Tag.CHECKPOINT: spec.checkpoint,
    }


def main(argv: list[str] | None = None) -> int:
    return run_driver("evaluate", _body, argv)


if __name__ == "__main__":
    sys.exit(main())
