"""The Lightning callback that connects rfdetr's training loop to Ray Train and MLflow."""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from detrforge.detector.specs import FinetuneSpec
from detrforge.platform.tracking import Tracker

__all__ = ["DetrforgeCallback", "drop_periodic_checkpoints", "epoch_metrics"]

CHECKPOINT_FILE = "checkpoint.ckpt"
PROGRESS_EVERY_S = 5.0

# rfdetr's validation metric names -> ours (DESIGN.md). A segmentation model's validation logs
# its box AP under the plain names and its mask AP under ``segm_``.
_VAL_KEYS = {
    "mAP_50_95": "bbox/AP",
    "mAP_50": "bbox/AP50",
    "mAP_75": "bbox/AP75",
    "segm_mAP_50_95": "segm/AP",
    "segm_mAP_50": "segm/AP50",
}


def drop_periodic_checkpoints(trainer: pl.Trainer) -> None:
    """Remove rfdetr's per-epoch ``.ckpt`` writers: Ray Train owns resumable checkpoints here.

    rfdetr's ``BestModelCallback`` (the best-by-validation-AP ``.pth``) is kept.
    """
    from pytorch_lightning.callbacks import ModelCheckpoint
    from rfdetr.training.callbacks import BestModelCallback

    callbacks = trainer.callbacks  # type: ignore[attr-defined]
    callbacks[:] = [
        cb
        for cb in callbacks
        if not isinstance(cb, ModelCheckpoint) or isinstance(cb, BestModelCallback)
    ]


def epoch_metrics(callback_metrics: dict[str, Any], *, use_ema: bool) -> dict[str, float]:
    """Our metric names from Lightning's ``callback_metrics`` after a training epoch."""
    raw = {k: float(v) for k, v in callback_metrics.items()}
    out: dict[str, float] = {}
    if "train/loss" in raw:
        out["train/loss"] = raw["train/loss"]
    if "train/lr" in raw:
        out["lr"] = raw["train/lr"]
    for src, dst in _VAL_KEYS.items():
        # The best-model file is the better of the live and EMA weights; report the same.
        candidates = [raw[k] for k in (f"val/{src}", f"val/ema_{src}") if k in raw]
        if not use_ema:
            candidates = [raw[k] for k in (f"val/{src}",) if k in raw]
        if candidates:
            out[dst] = max(candidates)
    return out


class DetrforgeCallback(pl.Callback):
    """Reports metrics and checkpoints to Ray Train, logs to MLflow on rank 0, keeps RNG state."""

    def __init__(
        self,
        *,
        spec: FinetuneSpec,
        run_id: str,
        tracker: Tracker | None,
        world_size: int,
        checkpoint_dir: Path,
        resumed: bool = False,
    ) -> None:
        super().__init__()
        self.resumed = resumed
        self._attempt_logged = False
        self.spec = spec
        self.run_id = run_id
        self.tracker = tracker
        self.world_size = world_size
        self.checkpoint_dir = checkpoint_dir
        self._epoch_started = 0.0
        self._train_seconds = 0.0
        self._images = 0
        self._last_progress = 0.0
        self._run_started = 0.0
        self._steps_at_start = 0

    # -- progress ---------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_started = time.monotonic()
        self._steps_at_start = trainer.global_step
        self._attempt_logged = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.tracker is not None and not self._attempt_logged:
            # One point per worker-group start: [0] for a clean run, [0, k] after resuming at k.
            self.tracker.log_metrics(
                self.run_id,
                {
                    "attempt/start_epoch": trainer.current_epoch,
                    "attempt/resumed": float(self.resumed),
                },
                step=trainer.global_step,
            )
            self._attempt_logged = True
        self._epoch_started = time.monotonic()
        self._images = 0
        self._set_encoder_frozen(pl_module, trainer.current_epoch < self.spec.freeze_encoder_epochs)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._images += self.spec.batch_size * self.world_size
        self._train_seconds = time.monotonic() - self._epoch_started
        now = time.monotonic()
        steps_per_epoch = max(1, int(trainer.num_training_batches))
        total = steps_per_epoch * self.spec.epochs
        done = trainer.current_epoch * steps_per_epoch + batch_idx + 1
        # Throttled, except the run's last step: a finished job reports step == total_steps.
        throttled = now - self._last_progress < PROGRESS_EVERY_S and done < total
        if self.tracker is None or throttled:
            return
        self._last_progress = now
        rate = (done - self._steps_at_start * self.spec.grad_accum_steps) / max(
            1e-6, now - self._run_started
        )
        progress = {
            "progress/epoch": trainer.current_epoch,
            "progress/step": done,
            "progress/total_steps": total,
            "progress/eta_s": (total - done) / rate if rate > 0 else float("nan"),
        }
        loss = _loss_of(outputs)
        if loss is not None:
            progress["train/loss_step"] = loss
        self.tracker.log_metrics(self.run_id, progress, step=done)

    # -- epoch end: metrics, checkpoint, report ---------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import ray.train
        from ray.train import Checkpoint

        epoch = trainer.current_epoch
        metrics = epoch_metrics(trainer.callback_metrics, use_ema=self.spec.use_ema)
        if self._train_seconds > 0:
            metrics["throughput/img_s"] = self._images / self._train_seconds
        metrics["epoch"] = epoch
        if self.tracker is not None:
            self.tracker.log_metrics(self.run_id, metrics, step=epoch)

        last = epoch + 1 >= self.spec.epochs or trainer.should_stop
        if (epoch + 1) % self.spec.checkpoint_frequency and not last:
            ray.train.report(metrics)
            return
        ckpt_dir = self.checkpoint_dir / f"epoch{epoch}"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        # Collective under DDP: every rank calls it, only global rank 0 writes the file.
        trainer.save_checkpoint(ckpt_dir / CHECKPOINT_FILE, weights_only=False)
        checkpoint = Checkpoint.from_directory(str(ckpt_dir)) if trainer.is_global_zero else None
        ray.train.report(metrics, checkpoint=checkpoint)
        trainer.strategy.barrier()
        if self.tracker is not None:
            self.tracker.log_metrics(self.run_id, {"checkpoint/epoch": epoch}, step=epoch)
        shutil.rmtree(ckpt_dir, ignore_errors=True)

    # -- full resumability: RNG state rides along in the Lightning checkpoint -----------------
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Plain lists/tuples/tensors only: Lightning restores with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        checkpoint["detrforge_rng"] = {
            "python": random.getstate(),
            "numpy": (str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        state = checkpoint.get("detrforge_rng")
        if not state:
            return
        random.setstate(state["python"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    @staticmethod
    def _set_encoder_frozen(pl_module: pl.LightningModule, frozen: bool) -> None:
        backbone = getattr(getattr(pl_module, "model", None), "backbone", None)
        if backbone is None:
            return
        for param in backbone.parameters():
            param.requires_grad_(not frozen)


def _loss_of(outputs: Any) -> float | None:
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if isinstance(loss, torch.Tensor):
        return float(loss.detach())
    return None
