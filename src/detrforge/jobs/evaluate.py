"""The evaluation job: COCO bbox AP of a checkpoint on one split, run as a Ray task.

``python -m detrforge.jobs.evaluate --job-id ID --spec JSON``; metrics go to the job's MLflow run
under ``bbox/*``, the per-class table as ``eval/per_class.json``, and the eval split's
fingerprint as a tag (results on different fingerprints are never compared).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detrforge.detector.specs import BenchmarkSpec, EvaluateSpec
from detrforge.jobs.driver import JobContext, run_driver
from detrforge.platform.tags import Tag

if TYPE_CHECKING:
    from detrforge.detector.predictor import Predictor

__all__ = ["evaluate_task", "local_checkpoint", "main", "make_predictor"]


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


def make_predictor(
    spec: EvaluateSpec | BenchmarkSpec, checkpoint: Path, *, workdir: Path
) -> tuple[Predictor[Any], Path | None]:
    """A predictor for ``spec.backend``; for ONNX Runtime also the exported ``.onnx`` file."""
    from detrforge.detector.onnx_predictor import OnnxPredictor
    from detrforge.detector.torch_predictor import TorchPredictor

    size, resolution, threads = spec.model_size, spec.resolution, spec.num_threads
    if spec.backend == "onnxruntime":
        from detrforge.detector.export import export_onnx

        exported = export_onnx(checkpoint, size, resolution, workdir / f"model-{resolution}.onnx")
        return OnnxPredictor(exported.path, resolution, num_threads=threads), exported.path
    return TorchPredictor(checkpoint, size, resolution, num_threads=threads), None


def evaluate_task(spec_data: dict[str, Any]) -> dict[str, Any]:
    """Runs on a Ray worker: fetch, verify, predict the split, COCOeval."""
    import ray

    from detrforge.detector.data import fingerprint_dataset
    from detrforge.detector.inference import evaluate_checkpoint
    from detrforge.platform.storage import fetch_local

    spec = EvaluateSpec.model_validate(spec_data)
    with tempfile.TemporaryDirectory(prefix="detrforge-eval-") as tmp:
        cache = Path(tempfile.gettempdir()) / "detrforge-cache"
        checkpoint = local_checkpoint(spec.checkpoint, spec.checkpoint_sha256, cache)
        dataset = Path(fetch_local(spec.dataset, cache))
        predictor, _ = make_predictor(spec, checkpoint, workdir=Path(tmp))
        result = evaluate_checkpoint(predictor, dataset, spec.split, backend=spec.eval_backend)
    return {
        "result": result.to_dict(),
        "eval_fingerprint": fingerprint_dataset(dataset, splits=(spec.split,)),
        "node_id": ray.get_runtime_context().get_node_id(),
    }


def _body(ctx: JobContext) -> dict[str, str]:
    import ray

    spec = EvaluateSpec.model_validate(ctx.spec)
    task = ray.remote(num_cpus=spec.num_threads or 1)(evaluate_task)
    out = ray.get(task.remote(spec.model_dump(mode="json")))
    stats = {k: v for k, v in out["result"]["stats"].items() if v is not None}
    ctx.tracker.log_metrics(ctx.run_id, stats, step=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "per_class.json"
        path.write_text(json.dumps(out["result"], indent=2))
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
