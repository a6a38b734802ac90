"""The scheduler a sweep builds, driven by scripted trials: exactly which trial ASHA stops, when.

No Ray cluster: ``build_scheduler`` returns the very ``ASHAScheduler`` the Tuner gets, and
:func:`run` plays Tune's part in a fixed order (every trial added up front, at most
``max_concurrent_trials`` running, round-robin one epoch each, a freed slot refilled at the next
round, ``on_trial_complete`` after a STOP). Each trial's per-epoch score is fixed, so unlike the
real sweep (where which trial reports first depends on timing) the decisions are certain.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from detrforge.detector.sweep_specs import SweepSpec
from detrforge.jobs.sweep_trial import SCORE, objective
from detrforge.jobs.tuner import build_scheduler


def _spec(scheduler: dict[str, Any]) -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "dataset": "/data/ds",
            "space": {"model_size": ["nano", "small"], "resolution": [128, 160]},
            "scheduler": scheduler,
            "target": "cpu",
            "max_concurrent_trials": 2,
        }
    )


ASHA = {"type": "asha", "grace_period": 1, "reduction_factor": 2, "max_epochs": 3}


def run(spec: SweepSpec, scripts: dict[str, list[float]]) -> dict[str, int]:
    """Epochs each scripted trial ran under ``build_scheduler(spec)``; trials start in key order."""
    from ray.tune.schedulers import TrialScheduler

    scheduler = build_scheduler(spec)
    # What Tune does with TuneConfig(metric=SCORE, mode="max") (see build_tuner).
    assert scheduler.set_search_properties(SCORE, "max")
    trials = {key: SimpleNamespace(trial_id=key) for key in scripts}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    pending, running = list(scripts), []
    epochs = dict.fromkeys(scripts, 0)
    while pending or running:
        while pending and len(running) < spec.max_concurrent_trials:
            running.append(pending.pop(0))
        for key in list(running):
            epochs[key] += 1
            result = {"training_iteration": epochs[key], SCORE: scripts[key][epochs[key] - 1]}
            decision = scheduler.on_trial_result(None, trials[key], result)
            if decision == TrialScheduler.STOP or epochs[key] == len(scripts[key]):
                scheduler.on_trial_complete(None, trials[key], result)
                running.remove(key)
    return epochs


def test_the_sweep_builds_asha_on_epochs() -> None:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    asha = build_scheduler(_spec(ASHA))
    assert isinstance(asha, ASHAScheduler)
    assert asha._time_attr == "training_iteration" and asha._max_t == 3
    assert isinstance(build_scheduler(_spec({"type": "none", "max_epochs": 3})), FIFOScheduler)


def test_asha_stops_exactly_the_trials_below_the_rung_median() -> None:
    # Rungs at epochs 1 and 2 (grace 1, reduction 2, max 3); a trial reporting below the median
    # of what that rung has recorded so far is stopped.
    epochs = run(
        _spec(ASHA),
        {
            "a": [0.30, 0.40, 0.50],  # first at each rung: nothing to compare with
            "b": [0.10, 0.90, 0.90],  # epoch 1: 0.10 < median{a .30} -> stopped after 1
            "c": [0.25, 0.35, 0.90],  # epoch 1: .25 >= median{.30,.10}; epoch 2: .35 < {a .40}
            "d": [0.60, 0.70, 0.80],  # above every cutoff: runs to the end
        },
    )
    assert epochs == {"a": 3, "b": 1, "c": 2, "d": 3}


def test_asha_would_not_stop_the_same_trial_with_a_better_score() -> None:
    # The control for the test above: only b's first score changes, and b is no longer stopped.
    epochs = run(
        _spec(ASHA),
        {
            "a": [0.30, 0.40, 0.50],
            "b": [0.31, 0.90, 0.90],
            "c": [0.25, 0.35, 0.90],
            "d": [0.60, 0.70, 0.80],
        },
    )
    assert epochs["b"] == 3
    assert epochs["c"] == 1  # now below the rung-1 median of {.30, .31}


def test_when_every_ap_ties_the_validation_loss_decides() -> None:
    # Trained from scratch, AP is often 0 for every trial: the objective's loss tiebreak still
    # ranks them (sweep_trial's module doc), so the trial with the higher loss is stopped.
    scores = {
        "a": [objective(0.0, 2.0)] * 3,
        "b": [objective(0.0, 3.0)] * 3,  # higher loss than a at epoch 1 -> stopped
        "c": [objective(0.0, 1.0)] * 3,
        "d": [objective(0.0, 1.2)] * 3,
    }
    assert run(_spec(ASHA), scores) == {"a": 3, "b": 1, "c": 3, "d": 3}
    # Without the tiebreak every score is 0.0, equal to each cutoff, and nothing stops.
    flat = {key: [0.0, 0.0, 0.0] for key in scores}
    assert run(_spec(ASHA), flat) == dict.fromkeys(scores, 3)


def test_fifo_never_stops_a_trial() -> None:
    scores = {"a": [0.9, 0.9, 0.9], "b": [0.0, 0.0, 0.0], "c": [0.5, 0.1, 0.0]}
    assert run(_spec({"type": "none", "max_epochs": 3}), scores) == {"a": 3, "b": 3, "c": 3}
