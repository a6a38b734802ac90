"""The fine-tune job: rfdetr's Lightning module under Ray Train's ``TorchTrainer`` with DDP.

Submitted by the launcher as ``python -m detrforge.jobs.finetune --job-id ID --spec JSON``. The
driver creates the job's MLflow run and a ``TorchTrainer``; every worker runs
``train_loop_per_worker``: rfdetr's own model, loss, matcher and augmentations, gloo on CPU and
NCCL on GPU. Rank 0 logs metrics to MLflow, checkpoints go to the artifact store through
``ray.train.report`` and a restarted worker group resumes from the latest one.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

from detrforge.detector.specs import FinetuneSpec
from detrforge.jobs.driver import JobContext, check_resources, ray_storage_path, run_driver
from detrforge.platform.tags import Tag
from detrforge.platform.tracking import Tracker

__all__ = ["build_trainer", "check_schedulable", "main", "train_loop_per_worker"]

CHECKPOINT_FILE = "checkpoint.ckpt"
BEST_MODEL_FILE = "checkpoint_best_total.pth"


def _local_path(uri: str, cache: Path) -> Path:
    from detrforge.platform.storage import fetch_local

    return fetch_local(uri, cache)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: rfdetr's Lightning pieces, fit, resume from Ray's checkpoint."""
    import ray.train
    import torch
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, prepare_trainer
    from rfdetr.training import build_trainer as build_pl_trainer

    from detrforge.detector.model import build_training_parts
    from detrforge.jobs.callbacks import DetrforgeCallback, drop_periodic_checkpoints
    from detrforge.platform.storage import open_store

    spec = FinetuneSpec.model_validate(config["spec"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(spec.threads_per_worker)

    workdir = Path(config["workdir"])
    cache = workdir / "cache"
    dataset_dir = _local_path(spec.dataset, cache)
    weights = _local_path(spec.pretrain_weights, cache) if spec.pretrain_weights else None
    # A stable per-rank folder: a restarted worker on the same node finds rfdetr's best-model file.
    output_dir = workdir / f"rank{rank}"
    output_dir.mkdir(parents=True, exist_ok=True)

    accelerator = "gpu" if spec.use_gpu else "cpu"
    parts = build_training_parts(
        spec,
        dataset_dir=dataset_dir,
        output_dir=output_dir,
        weights=weights,
        accelerator=accelerator,
    )
    tracker = (
        Tracker(config["tracking_uri"], artifact_root=config["artifact_root"])
        if rank == 0
        else None
    )
    checkpoint = ray.train.get_checkpoint()
    callback = DetrforgeCallback(
        resumed=checkpoint is not None,
        spec=spec,
        run_id=config["run_id"],
        tracker=tracker,
        world_size=context.get_world_size(),
        checkpoint_dir=workdir / "ray-checkpoints" / f"rank{rank}",
    )
    trainer = build_pl_trainer(
        parts.train_config,
        parts.detector.model_config,
        accelerator=accelerator,
        devices="auto",
        strategy=RayDDPStrategy(find_unused_parameters=True),  # type: ignore[no-untyped-call]
        plugins=[RayLightningEnvironment()],  # type: ignore[no-untyped-call]
        enable_model_summary=False,
    )
    drop_periodic_checkpoints(trainer)
    trainer.callbacks.append(callback)  # type: ignore[attr-defined]
    trainer = prepare_trainer(trainer)

    if checkpoint is None:
        trainer.fit(parts.module, datamodule=parts.datamodule)
    else:
        with checkpoint.as_directory() as ckpt_dir:
            trainer.fit(
                parts.module,
                datamodule=parts.datamodule,
                ckpt_path=str(Path(ckpt_dir, CHECKPOINT_FILE)),
            )

    if rank == 0 and tracker is not None:
        _publish_best_model(
            tracker,
            run_id=config["run_id"],
            job_id=config["job_id"],
            store=open_store(config["artifact_root"]),
            best=output_dir / BEST_MODEL_FILE,
            segmentation=spec.segmentation,
        )


def _publish_best_model(
    tracker: Tracker,
    *,
    run_id: str,
    job_id: str,
    store: Any,
    best: Path,
    segmentation: bool = False,
) -> None:
    """Upload the best-by-validation-AP weights with their sha256, and log them to the run."""
    if not best.exists():
        tracker.set_tags(run_id, {Tag.MODEL_MISSING: "no validation epoch produced a best model"})
        return
    stored = store.put_file(best, f"jobs/{job_id}/model/{BEST_MODEL_FILE}")
    tracker.log_artifact(run_id, best, "model")
    # rfdetr keeps the epoch with the best validation AP (live or EMA weights, as bbox/AP is);
    # a segmentation model's best epoch is the one with the best mask AP.
    metric = "segm/AP" if segmentation else "bbox/AP"
    history = tracker.history(run_id, metric)
    if history:
        best_epoch, best_ap = max(history, key=lambda point: point[1])
        figures = {f"best/{metric}": best_ap, "best/epoch": best_epoch}
        if segmentation:
            # The box AP of that same epoch: what the best-model file scores on boxes.
            boxes = dict(tracker.history(run_id, "bbox/AP"))
            if best_epoch in boxes:
                figures["best/bbox/AP"] = boxes[best_epoch]
        tracker.log_metrics(run_id, figures, step=0)
    tracker.set_tags(
        run_id,
        {
            Tag.MODEL_URI: stored.uri,
            Tag.MODEL_SHA256: stored.sha256,
            Tag.MODEL_SIZE_BYTES: str(stored.size),
        },
    )


def check_schedulable(spec: FinetuneSpec) -> None:
    """Fail fast when no node could ever host one worker (Ray would wait forever)."""
    wanted = dict(spec.resources_per_worker)
    if spec.use_gpu:
        wanted.setdefault("GPU", 1.0)
    check_resources(wanted, what="one training worker", field="resources_per_worker")


def build_trainer(
    spec: FinetuneSpec,
    *,
    job_id: str,
    run_id: str,
    tracking_uri: str,
    artifact_root: str,
    workdir: Path,
) -> Any:
    """The ``TorchTrainer`` for ``spec``: ``num_workers`` DDP workers, resumable checkpoints."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = dict(spec.resources_per_worker)
    if spec.use_gpu:
        resources.setdefault("GPU", 1.0)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "job_id": job_id,
            "run_id": run_id,
            "tracking_uri": tracking_uri,
            "artifact_root": artifact_root,
            "workdir": str(workdir),
        },
        torch_config=TorchConfig(backend="nccl" if spec.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=spec.num_workers, use_gpu=spec.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            # A unique name per job: reusing one would resume that old run.
            name=job_id,
            storage_path=ray_storage_path(artifact_root),
            failure_config=FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.num_checkpoints_to_keep),
        ),
    )


def _run(ctx: JobContext) -> dict[str, str]:
    """The driver's body: check placement, fit, clean the local scratch."""
    spec = FinetuneSpec.model_validate(ctx.spec)
    workdir = ctx.workdir
    started = time.monotonic()
    try:
        check_schedulable(spec)
        trainer = build_trainer(
            spec,
            job_id=ctx.job_id,
            run_id=ctx.run_id,
            tracking_uri=ctx.tracking_uri,
            artifact_root=ctx.artifact_root,
            workdir=workdir,
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
    finally:
        # Local scratch only; checkpoints and the model already live in the artifact store.
        shutil.rmtree(workdir, ignore_errors=True)
    return {Tag.WALL_S: f"{time.monotonic() - started:.1f}"}


def main(argv: list[str] | None = None) -> int:
    """Job driver entrypoint; exit code 0 on success, 1 on failure (reason in the MLflow run)."""
    return run_driver("finetune", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
