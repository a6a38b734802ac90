"""The sweep job: Ray Tune over model size x resolution (+ lr ...), each trial measured on a target.

Submitted by the launcher as ``python -m detrforge.jobs.sweep --job-id ID --spec JSON``. The
driver owns the sweep's (parent) MLflow run and runs a ``Tuner`` whose trials are
:func:`~detrforge.jobs.sweep_trial.train_trial` (one in-process fit each, ``resources_per_trial``
each, at most ``max_concurrent_trials`` at once), scheduled by ASHA or FIFO on ``sweep/score``
(validation AP with a validation-loss tiebreak, see ``sweep_trial``).

When a trial ends (completed, or stopped early by ASHA) the driver starts the benchmark job's own
Ray task (:func:`~detrforge.jobs.benchmark.submit_benchmark_task`) for the trial's best weights on
the sweep's hardware target and logs ``latency_ms/*`` and ``benchmark/record.json`` to the trial's
nested run as it arrives. At the end: the Pareto front of AP vs p95, the best trial by AP and the
SLA pick go to the parent run as ``sweep/result.json`` and ``sweep/pareto.png``.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from detrforge.detector.pareto import Point, best_by_ap, pareto_front, sla_pick
from detrforge.detector.specs import BenchmarkSpec, SweepSpec
from detrforge.jobs.driver import JobContext, check_resources, run_driver
from detrforge.platform.scratch import job_scratch_dir
from detrforge.platform.tags import Tag
from detrforge.platform.tracking import Tracker

__all__ = [
    "SweepTrials",
    "TrialRecord",
    "build_scheduler",
    "build_tuner",
    "main",
    "param_space",
    "plot_front",
]

RESULT_FILE = "result.json"
PLOT_FILE = "pareto.png"


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


def param_space(spec: SweepSpec) -> dict[str, Any]:
    """The Tune search space of ``spec.space``: grid -> ``grid_search``, else choice / ranges."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, value in spec.space.items():
        if isinstance(value, list):
            space[key] = tune.grid_search(value) if spec.search == "grid" else tune.choice(value)
            continue
        low, high = float(value["low"]), float(value["high"])
        if value.get("integer"):
            space[key] = (
                tune.lograndint(int(low), int(high) + 1)
                if value.get("log")
                else tune.randint(int(low), int(high) + 1)
            )
        else:
            space[key] = tune.loguniform(low, high) if value.get("log") else tune.uniform(low, high)
    return space


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
        rec.ap = _num(result.get("bbox/AP"))
        rec.best_ap = _num(result.get("best/bbox/AP"))
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


def _tune_callback(sweep: SweepTrials) -> Any:
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


def _ray_storage_path(artifact_root: str) -> str:
    if artifact_root.startswith("file://"):
        return str(Path(artifact_root.removeprefix("file://")) / "ray")
    return f"{artifact_root}/ray"


def build_scheduler(spec: SweepSpec) -> Any:
    """The trial scheduler: ASHA over epochs (``training_iteration``) on the score, or FIFO."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if spec.scheduler.type == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            max_t=spec.max_epochs,
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    return FIFOScheduler()  # type: ignore[no-untyped-call]


def build_tuner(
    spec: SweepSpec,
    *,
    job_id: str,
    parent_run_id: str,
    tracking_uri: str,
    artifact_root: str,
    workdir: Path,
    callbacks: list[Any],
) -> Any:
    """The ``Tuner``: function trainable with fractional resources, ASHA or FIFO, grid/random."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from detrforge.jobs.sweep_trial import SCORE, train_trial

    resources: dict[str, float] = {"cpu": spec.resources_per_trial.cpu}
    if spec.resources_per_trial.gpu:
        resources["gpu"] = spec.resources_per_trial.gpu
    scheduler = build_scheduler(spec)
    search_alg: Any
    if spec.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=spec.seed)
    else:
        # Given as an instance (for the seed), it must carry the concurrency limit itself.
        search_alg = BasicVariantGenerator(
            random_state=spec.seed, max_concurrent=spec.max_concurrent_trials
        )
    return tune.Tuner(
        tune.with_resources(train_trial, resources),
        param_space={
            "params": param_space(spec),
            "ctx": {
                "sweep": spec.model_dump(mode="json"),
                "job_id": job_id,
                "parent_run_id": parent_run_id,
                "tracking_uri": tracking_uri,
                "artifact_root": artifact_root,
                "workdir": str(workdir),
            },
        },
        tune_config=tune.TuneConfig(
            metric=SCORE,
            mode="max",
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=spec.num_samples,
            # BasicVariantGenerator carries the limit itself; Tune wraps other searchers.
            max_concurrent_trials=spec.max_concurrent_trials if spec.search == "optuna" else None,
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            # A unique name per sweep: reusing one would resume that old run.
            name=job_id,
            storage_path=_ray_storage_path(artifact_root),
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )


def plot_front(result: dict[str, Any], path: Path) -> None:
    """Every measured trial as AP vs p95, the front as a step line, the pick and the SLA marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    colors = {"nano": "tab:blue", "small": "tab:orange", "medium": "tab:green", "large": "tab:red"}
    for trial in result["trials"]:
        if trial["p95_ms"] is None or trial["best_ap"] is None:
            continue
        ax.scatter(
            trial["p95_ms"],
            trial["best_ap"],
            color=colors.get(trial["model_size"], "gray"),
            marker="x" if trial["state"] == "STOPPED_EARLY" else "o",
            label=trial["model_size"],
        )
        ax.annotate(
            f"{trial['model_size'][0]}{trial['resolution']}",
            (trial["p95_ms"], trial["best_ap"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    front = result["front"]
    if front:
        ax.step(
            [p["p95_ms"] for p in front],
            [p["ap"] for p in front],
            where="post",
            color="black",
            linewidth=1,
            label="Pareto front",
        )
    pick = result["pick"]["pick"]
    if pick is not None:
        ax.scatter(
            pick["p95_ms"], pick["ap"], s=160, facecolors="none", edgecolors="red", label="pick"
        )
    if result["pick"]["sla_ms"] is not None:
        ax.axvline(result["pick"]["sla_ms"], color="red", linestyle="--", linewidth=1, label="SLA")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.set_xlabel(f"p95 latency on {result['target']} (ms, end to end)")
    ax.set_ylabel("validation bbox AP")
    ax.set_title(f"sweep {result['job_id']}: AP vs p95 (x = stopped early by ASHA)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def summarize(
    spec: SweepSpec, trials: SweepTrials, *, job_id: str, wall_s: float
) -> dict[str, Any]:
    """The sweep's result: every trial, the front, the best by AP and the SLA pick."""
    records = sorted(trials.trials.values(), key=lambda r: r.trial_id)
    points = [r.point() for r in records if r.state in ("COMPLETED", "STOPPED_EARLY")]
    best = best_by_ap(points)
    scored = [r for r in records if r.best_score is not None]
    top = max(scored, key=lambda r: r.best_score or 0.0) if scored else None
    return {
        "job_id": job_id,
        "target": spec.target,
        "objective": "sweep/score = round(bbox/AP, 4) + 1e-5 / (1 + val/loss); AP = best epoch",
        "scheduler": spec.scheduler.model_dump(mode="json"),
        "max_epochs": spec.max_epochs,
        "search": spec.search,
        "trials": [
            {**asdict(r), "stopped_early": r.stopped_early, "point": r.point().valid}
            for r in records
        ],
        "trial_epochs": sum(r.epochs for r in records),
        "stopped_early": sum(r.stopped_early for r in records),
        "front": [p.to_dict() for p in pareto_front(points)],
        "best": best.to_dict() if best is not None else None,
        # The objective's own winner (AP, then validation loss), which ASHA optimizes.
        "best_by_score": top.trial_id if top is not None else None,
        "pick": sla_pick(points, spec.latency_sla_ms).to_dict(),
        "wall_s": round(wall_s, 1),
    }


def _run(ctx: JobContext) -> dict[str, str]:
    import shutil

    spec = SweepSpec.model_validate(ctx.spec)
    check_resources(
        {"CPU": spec.resources_per_trial.cpu, "GPU": spec.resources_per_trial.gpu}
        if spec.resources_per_trial.gpu
        else {"CPU": spec.resources_per_trial.cpu},
        what="one sweep trial",
        field="resources_per_trial",
    )
    bench_wanted = {"CPU": float(spec.bench_threads or 1), **spec.target_resources}
    check_resources(bench_wanted, what=f"hardware target {spec.target!r}", field="target")
    workdir = job_scratch_dir(ctx.job_id)
    started = time.monotonic()
    n_trials = _count_trials(spec)
    trials = SweepTrials(
        spec=spec,
        ctx=ctx,
        parent_run_id=ctx.run_id,
        planned_epochs=n_trials * spec.max_epochs,
    )
    try:
        tuner = build_tuner(
            spec,
            job_id=ctx.job_id,
            parent_run_id=ctx.run_id,
            tracking_uri=ctx.tracking_uri,
            artifact_root=ctx.artifact_root,
            workdir=workdir,
            callbacks=[_tune_callback(trials)],
        )
        grid = tuner.fit()
        trials.collect(timeout_s=None)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = summarize(spec, trials, job_id=ctx.job_id, wall_s=time.monotonic() - started)
    result["tune_errors"] = len(grid.errors)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / RESULT_FILE).write_text(json.dumps(result, indent=2, default=str))
        plot_front(result, Path(tmp) / PLOT_FILE)
        ctx.tracker.log_artifact(ctx.run_id, Path(tmp) / RESULT_FILE, "sweep")
        ctx.tracker.log_artifact(ctx.run_id, Path(tmp) / PLOT_FILE, "sweep")
    metrics = {
        "sweep/trials": len(result["trials"]),
        "sweep/trial_epochs": result["trial_epochs"],
        "sweep/stopped_early": result["stopped_early"],
        "sweep/front_size": len(result["front"]),
        "sweep/wall_s": result["wall_s"],
    }
    if result["best"] is not None:
        metrics["best/bbox/AP"] = result["best"]["ap"]
        metrics["best/latency_ms/p95"] = result["best"]["p95_ms"]
    tags = {Tag.WALL_S: str(result["wall_s"])}
    pick = result["pick"]["pick"]
    if pick is not None:
        metrics["pick/bbox/AP"] = pick["ap"]
        metrics["pick/latency_ms/p95"] = pick["p95_ms"]
        tags[Tag.SWEEP_PICK] = pick["key"]
    if result["best"] is not None:
        tags[Tag.SWEEP_BEST] = result["best"]["key"]
    ctx.tracker.log_metrics(ctx.run_id, metrics, step=0)
    if not any(t["point"] for t in result["trials"]):
        raise RuntimeError(
            "no trial finished with a validation AP and a measured p95; see the trials' errors "
            f"({result['tune_errors']} trial error(s))"
        )
    return tags


def _count_trials(spec: SweepSpec) -> int:
    if spec.search != "grid":
        return spec.num_samples
    total = spec.num_samples
    for value in spec.space.values():
        total *= len(value)
    return total


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


def main(argv: list[str] | None = None) -> int:
    """Job driver entrypoint; exit code 0 on success, 1 on failure (reason in the MLflow run)."""
    return run_driver("sweep", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
