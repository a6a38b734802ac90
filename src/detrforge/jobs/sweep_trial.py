"""One sweep trial: a Ray Tune function trainable that fine-tunes one configuration in-process.

Each trial is one training process (one Ray actor holding ``resources_per_trial``), running
rfdetr's Lightning module like the fine-tune job but without DDP. Every epoch the
:class:`TrialCallback` logs to the trial's nested MLflow run, keeps the trial's best weights in
the artifact store (with sha256) and reports to Tune. ASHA stops a trial by ending its actor, so
everything a stopped trial leaves behind is written before each ``tune.report``.

The objective ASHA ranks (``sweep/score``) is validation AP rounded to 4 decimals, plus a
tiebreak below that precision from validation loss: ``round(AP, 4) + 1e-5 / (1 + val_loss)``.
AP is the sweep's ranking metric: box AP, or mask AP (``segm/AP``) for segmentation sizes.
Trained from scratch, AP is often exactly 0 for every trial after an epoch or two; ASHA never
stops a trial when all values tie, so the loss decides then, and it never overrides a real AP
difference (>= 1e-4).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from detrforge.detector.specs import FinetuneSpec
from detrforge.detector.sweep_specs import RANKING_METRICS, SweepSpec
from detrforge.platform.artifact_store import ArtifactStore
from detrforge.platform.tags import Tag
from detrforge.platform.tracking import Tracker

__all__ = [
    "SCORE",
    "TRIAL_CHECKPOINT",
    "TrialCallback",
    "find_trial_run",
    "objective",
    "train_trial",
]

SCORE = "sweep/score"
TRIAL_CHECKPOINT = "checkpoint_best.pth"
_AP_DECIMALS = 4
_TIEBREAK = 1e-5


def objective(ap: float | None, val_loss: float | None) -> float:
    """ASHA's score: AP to 4 decimals, ties broken by lower validation loss (module doc)."""
    base = round(ap, _AP_DECIMALS) if ap is not None and math.isfinite(ap) else 0.0
    if val_loss is None or not math.isfinite(val_loss) or val_loss < 0:
        return base
    return base + _TIEBREAK / (1.0 + val_loss)


def find_trial_run(tracker: Tracker, job_id: str, trial_id: str) -> str | None:
    """The nested MLflow run of one trial of sweep ``job_id``, if it exists."""
    runs = tracker.client.search_runs(
        [tracker.experiment_id()],
        filter_string=(
            f"tags.`{Tag.SWEEP_JOB_ID}` = '{job_id}' and tags.`{Tag.TRIAL_ID}` = '{trial_id}'"
        ),
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def _start_trial_run(
    tracker: Tracker,
    *,
    job_id: str,
    parent_run_id: str,
    trial_id: str,
    spec: FinetuneSpec,
    params: dict[str, Any],
) -> str:
    existing = find_trial_run(tracker, job_id, trial_id)
    if existing is not None:
        return existing
    # No detrforge.job_id tag: that tag names the sweep's own (parent) run.
    run = tracker.client.create_run(
        tracker.experiment_id(),
        run_name=f"trial-{trial_id}",
        tags={
            "mlflow.parentRunId": parent_run_id,
            Tag.SWEEP_JOB_ID: job_id,
            Tag.TRIAL_ID: trial_id,
            Tag.KIND: "sweep-trial",
            Tag.TRIAL_STATE: "RUNNING",
            Tag.MODEL_SIZE: spec.model_size,
            Tag.RESOLUTION: str(spec.res),
            Tag.SEARCHED: json.dumps(params, sort_keys=True),
        },
    )
    run_id = str(run.info.run_id)
    tracker.log_params(run_id, spec.model_dump(mode="json"))
    return run_id


class TrialCallback(pl.Callback):
    """Per epoch: metrics to MLflow, the best weights to the store, the score to Tune."""

    def __init__(
        self,
        *,
        spec: FinetuneSpec,
        tracker: Tracker,
        run_id: str,
        store: ArtifactStore,
        store_key: str,
        workdir: Path,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.tracker = tracker
        self.run_id = run_id
        self.store = store
        self.store_key = store_key
        self.workdir = workdir
        self.best_score = -math.inf
        self.best_ap: float | None = None
        self.checkpoint: dict[str, Any] = {}
        self.metric = RANKING_METRICS[spec.task or "detection"]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import torch

        torch.set_num_threads(self.spec.threads_per_worker)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from ray import tune

        from detrforge.jobs.callbacks import epoch_metrics

        epoch = trainer.current_epoch
        raw = {k: float(v) for k, v in trainer.callback_metrics.items()}
        metrics = epoch_metrics(trainer.callback_metrics, use_ema=self.spec.use_ema)
        ap = metrics.get(self.metric)
        val_loss = raw.get("val/loss")
        score = objective(ap, val_loss)
        if score > self.best_score:
            self.best_score = score
            self.best_ap = ap
            self._keep_weights(trainer, pl_module, raw, epoch)
        logged = {**metrics, SCORE: score, "epoch": epoch}
        if val_loss is not None:
            logged["val/loss"] = val_loss
        if self.best_ap is not None:
            logged[f"best/{self.metric}"] = self.best_ap
        self.tracker.log_metrics(self.run_id, logged, step=epoch)

        report: dict[str, Any] = {
            self.metric: ap if ap is not None else math.nan,
            f"best/{self.metric}": self.best_ap if self.best_ap is not None else math.nan,
            "val/loss": val_loss if val_loss is not None else math.nan,
            SCORE: score,
            "epoch": epoch + 1,
            "mlflow_run_id": self.run_id,
            **{f"checkpoint_{k}": v for k, v in self.checkpoint.items()},
        }
        # A small pointer checkpoint: Tune keeps it with the trial; the weights live in the store.
        pointer = self.workdir / f"pointer-{epoch}"
        pointer.mkdir(parents=True, exist_ok=True)
        (pointer / "checkpoint.json").write_text(json.dumps(self.checkpoint))
        tune.report(report, checkpoint=tune.Checkpoint.from_directory(str(pointer)))

    def _keep_weights(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, raw: dict[str, float], epoch: int
    ) -> None:
        """Save this epoch's better weights (live or EMA, as AP says) and upload them."""
        from rfdetr.training.callbacks.best_model import BestModelCallback
        from rfdetr.utilities.state_dict import strip_checkpoint

        writer = next(
            (cb for cb in trainer.callbacks if isinstance(cb, BestModelCallback)),  # type: ignore[attr-defined]
            None,
        )
        if writer is None:
            raise RuntimeError("rfdetr's BestModelCallback is missing; cannot save trial weights")
        # Live or EMA weights: whichever scores better on the ranking metric.
        key = "segm_mAP_50_95" if self.metric == "segm/AP" else "mAP_50_95"
        ema_ap = raw.get(f"val/ema_{key}", -1.0)
        use_ema = self.spec.use_ema and ema_ap >= raw.get(f"val/{key}", -1.0)
        state = (
            writer._get_ema_model_state_dict(trainer, pl_module)
            if use_ema
            else writer._get_live_model_state_dict(pl_module)
        )
        local = self.workdir / TRIAL_CHECKPOINT
        writer._write_ema_checkpoint(trainer, pl_module, state, local)
        strip_checkpoint(local, extra_metadata={"best_total_source": "ema" if use_ema else "live"})
        stored = self.store.put_file(local, self.store_key)
        self.checkpoint = {
            "uri": stored.uri,
            "sha256": stored.sha256,
            "epoch": epoch,
            "source": "ema" if use_ema else "live",
        }
        self.tracker.set_tags(
            self.run_id,
            {
                Tag.CHECKPOINT_URI: stored.uri,
                Tag.CHECKPOINT_SHA256: stored.sha256,
                Tag.CHECKPOINT_EPOCH: str(epoch),
            },
        )


def train_trial(config: dict[str, Any]) -> None:
    """Tune's function trainable: fine-tune ``config["params"]`` on top of the sweep's base."""
    import torch
    from ray import tune
    from rfdetr.training import build_trainer as build_pl_trainer

    from detrforge.detector.model import build_training_parts
    from detrforge.jobs.callbacks import drop_periodic_checkpoints
    from detrforge.platform.storage import fetch_local, open_store

    ctx = config["ctx"]
    params = dict(config["params"])
    sweep = SweepSpec.model_validate(ctx["sweep"])
    spec = sweep.trial_spec(params)
    trial_id = tune.get_context().get_trial_id()
    torch.set_num_threads(spec.threads_per_worker)

    tracker = Tracker(ctx["tracking_uri"], artifact_root=ctx["artifact_root"])
    run_id = _start_trial_run(
        tracker,
        job_id=ctx["job_id"],
        parent_run_id=ctx["parent_run_id"],
        trial_id=trial_id,
        spec=spec,
        params=params,
    )
    root = Path(ctx.get("workdir") or tempfile.gettempdir())
    workdir = root / trial_id
    workdir.mkdir(parents=True, exist_ok=True)
    cache = root / "cache"
    dataset_dir = Path(fetch_local(spec.dataset, cache))
    weights = Path(fetch_local(spec.pretrain_weights, cache)) if spec.pretrain_weights else None
    accelerator = "gpu" if spec.use_gpu else "cpu"
    parts = build_training_parts(
        spec,
        dataset_dir=dataset_dir,
        output_dir=workdir / "rfdetr",
        weights=weights,
        accelerator=accelerator,
    )
    # Validation loss is the objective's tiebreak; rfdetr skips it unless asked.
    parts.train_config.compute_val_loss = True
    trainer = build_pl_trainer(
        parts.train_config,
        parts.detector.model_config,
        accelerator=accelerator,
        devices=1,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    drop_periodic_checkpoints(trainer)
    trainer.callbacks.append(  # type: ignore[attr-defined]
        TrialCallback(
            spec=spec,
            tracker=tracker,
            run_id=run_id,
            store=open_store(ctx["artifact_root"]),
            store_key=f"sweeps/{ctx['job_id']}/trials/{trial_id}/{TRIAL_CHECKPOINT}",
            workdir=workdir,
        )
    )
    trainer.fit(parts.module, datamodule=parts.datamodule)
