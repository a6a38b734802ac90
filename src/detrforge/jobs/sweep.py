"""The sweep job: Ray Tune over model size x resolution (+ lr ...), each trial measured on a target.

Submitted by the launcher as ``python -m detrforge.jobs.sweep --job-id ID --spec JSON``. The
driver owns the sweep's (parent) MLflow run and runs a ``Tuner`` (:mod:`~detrforge.jobs.tuner`)
whose trials are
:func:`~detrforge.jobs.sweep_trial.train_trial` (one in-process fit each, ``resources_per_trial``
each, at most ``max_concurrent_trials`` at once), scheduled by ASHA or FIFO on ``sweep/score``
(validation AP with a validation-loss tiebreak, see ``sweep_trial``).

When a trial ends (completed, or stopped early by ASHA) the driver's Tune callback
(:mod:`~detrforge.jobs.sweep_callback`) starts the benchmark job's own
Ray task (:func:`~detrforge.jobs.benchmark.submit_benchmark_task`) for the trial's best weights on
the sweep's hardware target and logs ``latency_ms/*`` and ``benchmark/record.json`` to the trial's
nested run as it arrives. At the end: the Pareto front of AP vs p95, the best trial by AP and the
SLA pick go to the parent run as ``sweep/result.json`` and ``sweep/pareto.png``.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from detrforge.detector.pareto import best_by_ap, pareto_front, sla_pick
from detrforge.detector.sweep_specs import SweepSpec
from detrforge.jobs.driver import JobContext, check_resources, run_driver
from detrforge.jobs.sweep_callback import SweepTrials, tune_callback
from detrforge.jobs.tuner import build_tuner
from detrforge.platform.tags import Tag

__all__ = ["main", "plot_front", "summarize"]

RESULT_FILE = "result.json"
PLOT_FILE = "pareto.png"


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
        base_size = trial["model_size"].removeprefix("seg-")  # seg-nano is drawn as nano
        ax.scatter(
            trial["p95_ms"],
            trial["best_ap"],
            color=colors.get(base_size, "gray"),
            marker="x" if trial["state"] == "STOPPED_EARLY" else "o",
            label=trial["model_size"],
        )
        ax.annotate(
            f"{base_size[0]}{trial['resolution']}",
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
    metric = result.get("metric", "bbox/AP")
    ax.set_ylabel("validation mask AP" if metric == "segm/AP" else "validation bbox AP")
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
        "metric": spec.metric,
        "objective": (
            f"sweep/score = round({spec.metric}, 4) + 1e-5 / (1 + val/loss); AP = best epoch"
        ),
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
    workdir = ctx.workdir
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
            callbacks=[tune_callback(trials)],
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
        metrics[f"best/{spec.metric}"] = result["best"]["ap"]
        metrics["best/latency_ms/p95"] = result["best"]["p95_ms"]
    tags = {Tag.WALL_S: str(result["wall_s"])}
    pick = result["pick"]["pick"]
    if pick is not None:
        metrics[f"pick/{spec.metric}"] = pick["ap"]
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


def main(argv: list[str] | None = None) -> int:
    """Job driver entrypoint; exit code 0 on success, 1 on failure (reason in the MLflow run)."""
    return run_driver("sweep", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
