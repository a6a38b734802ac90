"""The sweep driver's Tune callback: one record per trial, MLflow bookkeeping as trials report, and
one benchmark (the benchmark job's own Ray task) per finished trial on the sweep's target."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from detrforge.detector.pareto import Point
from detrforge.detector.specs import BenchmarkSpec
from detrforge.detector.sweep_specs import SweepSpec
from detrforge.jobs.driver import JobContext
from detrforge.platform.tags import Tag
from detrforge.platform.tracking import Tracker

__all__ = ["SweepTrials", "TrialRecord", "tune_callback"]


@dataclass
class TrialRecord:
    """What the driver knows about one trial (the ``trials`` entries of ``sweep/result.json``)."""

    trial_id: str
    params: dict[str, Any]
    model_size: str
    resolution: int
    max_epochs: int
    state: str = "PENDING"
    epochs: int = 0
    ap: float | None = None
    best_ap: float | None = None
    score: float | None = None
    best_score: float | None = None
    mlflow_run_id: str | None = None
    checkpoint_uri: str | None = None
    checkpoint_sha256: str | None = None
    checkpoint_epoch: int | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    benchmark_error: str | None = None
    error: str | None = None

    @property
    def stopped_early(self) -> bool:
        return self.state == "STOPPED_EARLY"

    def point(self) -> Point:
        return Point(
            key=self.trial_id,
            ap=self.best_ap if self.best_ap is not None else math.nan,
            p95_ms=self.p95_ms if self.p95_ms is not None else math.nan,
            model_size=self.model_size,
            resolution=self.resolution,
            extra={"params": self.params, "mlflow_run_id": self.mlflow_run_id},
        )


class SweepTrials:
    """The driver's Tune callback: trial states, MLflow bookkeeping, one benchmark per trial."""

    def __init__(
        self, *, spec: SweepSpec, ctx: JobContext, parent_run_id: str, planned_epochs: int
    ) -> None:
        self.spec = spec
        self.ctx = ctx
        self.tracker: Tracker = ctx.tracker
        self.parent_run_id = parent_run_id
        self.planned_epochs = planned_epochs
        self.trials: dict[str, TrialRecord] = {}
        self.pending: dict[Any, str] = {}  # benchmark ObjectRef -> trial id
        self.trial_epochs = 0

    # -- Tune events (called from the Tune loop in the driver) --------------------------------
    def record(self, trial: Any) -> TrialRecord:
        rec = self.trials.get(trial.trial_id)
        if rec is None:
            params = dict(trial.config.get("params", {}))
            trial_spec = self.spec.trial_spec(params)
            rec = TrialRecord(
                trial_id=trial.trial_id,
                params=params,
                model_size=trial_spec.model_size,
                resolution=trial_spec.res,
                max_epochs=min(trial_spec.epochs, self.spec.max_epochs),
            )
            self.trials[trial.trial_id] = rec
        return rec

    def on_start(self, trial: Any) -> None:
        self.record(trial).state = "RUNNING"

    def on_result(self, trial: Any, result: dict[str, Any]) -> None:
        rec = self.record(trial)
        rec.state = "RUNNING"
        rec.epochs = int(result.get("training_iteration", rec.epochs))
        rec.ap = _num(result.get(self.spec.metric))
        rec.best_ap = _num(result.get(f"best/{self.spec.metric}"))
        rec.score = _num(result.get("sweep/score"))
        if rec.score is not None and (rec.best_score is None or rec.score > rec.best_score):
            rec.best_score = rec.score
        rec.mlflow_run_id = result.get("mlflow_run_id") or rec.mlflow_run_id
        if result.get("checkpoint_uri"):
            rec.checkpoint_uri = str(result["checkpoint_uri"])
            rec.checkpoint_sha256 = str(result["checkpoint_sha256"])
            rec.checkpoint_epoch = int(result["checkpoint_epoch"])
        self.trial_epochs += 1
        epochs = [r.epochs for r in self.trials.values()]
        self.tracker.log_metrics(
            self.parent_run_id,
            {
                "progress/epoch": max(epochs),
                "progress/step": self.trial_epochs,
                "progress/total_steps": self.planned_epochs,
                "sweep/trial_epochs": self.trial_epochs,
            },
            step=self.trial_epochs,
        )

    def on_complete(self, trial: Any) -> None:
        rec = self.record(trial)
        rec.state = "COMPLETED" if rec.epochs >= rec.max_epochs else "STOPPED_EARLY"
        if rec.mlflow_run_id:
            self.tracker.set_tags(
                rec.mlflow_run_id,
                {Tag.TRIAL_STATE: rec.state, Tag.TRIAL_EPOCHS: str(rec.epochs)},
            )
            self.tracker.end_run(rec.mlflow_run_id, "FINISHED")
        self._start_benchmark(rec)

    def on_error(self, trial: Any) -> None:
        rec = self.record(trial)
        rec.state = "ERROR"
        rec.error = _trial_error(trial)
        if rec.mlflow_run_id:
            self.tracker.set_tags(
                rec.mlflow_run_id,
                {Tag.TRIAL_STATE: "ERROR", Tag.ERROR: rec.error[:5000]},
            )
            self.tracker.end_run(rec.mlflow_run_id, "FAILED")

    # -- benchmarks ------------------------------------------------------------------------
    def _start_benchmark(self, rec: TrialRecord) -> None:
        from detrforge.jobs.benchmark import submit_benchmark_task

        if not rec.checkpoint_uri:
            rec.benchmark_error = "the trial saved no weights (it ended before its first epoch)"
            return
        spec = BenchmarkSpec(
            checkpoint=rec.checkpoint_uri,
            checkpoint_sha256=rec.checkpoint_sha256,
            model_size=rec.model_size,  # type: ignore[arg-type]
            resolution=rec.resolution,
            target=self.spec.target,
            target_resources=self.spec.target_resources,
            backend=self.spec.backend,
            warmup=self.spec.bench_warmup,
            runs=self.spec.bench_runs,
            num_threads=self.spec.bench_threads,
            dataset=self.spec.dataset,
        )
        ref = submit_benchmark_task(spec, self.ctx.artifact_root, f"{self.ctx.job_id}")
        self.pending[ref] = rec.trial_id

    def collect(self, *, timeout_s: float | None) -> None:
        """Log every finished benchmark; ``timeout_s=None`` waits for all of them."""
        import ray

        from detrforge.jobs.benchmark import log_benchmark_result

        if not self.pending:
            return
        ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=timeout_s)
        for ref in ready:
            rec = self.trials[self.pending.pop(ref)]
            try:
                out = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - one failed measurement must not end the sweep
                rec.benchmark_error = f"{type(exc).__name__}: {exc}"[:2000]
                if rec.mlflow_run_id:
                    self.tracker.set_tags(
                        rec.mlflow_run_id, {Tag.BENCHMARK_ERROR: rec.benchmark_error}
                    )
                continue
            e2e = out["end_to_end"]
            rec.p50_ms, rec.p95_ms, rec.p99_ms = (float(e2e[k]) for k in ("p50", "p95", "p99"))
            if rec.mlflow_run_id:
                tags = log_benchmark_result(
                    self.tracker, rec.mlflow_run_id, out, target=self.spec.target
                )
                self.tracker.set_tags(rec.mlflow_run_id, tags)


def tune_callback(sweep: SweepTrials) -> Any:
    """A Tune ``Callback`` that forwards trial events to ``sweep``."""
    from ray.tune import Callback

    class _Callback(Callback):
        # Tune calls these with keyword arguments: the parameter names are Tune's.
        def on_trial_start(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            sweep.on_start(trial)

        def on_trial_result(
            self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
        ) -> None:
            sweep.on_result(trial, result)

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            sweep.on_complete(trial)

        def on_trial_error(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            sweep.on_error(trial)

        def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
            sweep.collect(timeout_s=0)

    return _Callback()


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _trial_error(trial: Any) -> str:
    """The end of the trial's error trace (Tune keeps it in the run's storage)."""
    try:
        error = trial.get_error()
    except Exception:  # noqa: BLE001 - a missing trace must not hide the failure itself
        error = None
    return str(error)[-4000:] if error is not None else "the trial failed"
