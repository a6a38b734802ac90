"""The sweep's Ray Tune ``Tuner``: its search space, scheduler (ASHA or FIFO) and searcher."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detrforge.detector.sweep_specs import SweepSpec
from detrforge.jobs.driver import ray_storage_path

__all__ = ["build_scheduler", "build_tuner", "param_space"]


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
            storage_path=ray_storage_path(artifact_root),
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )
