"""Entrypoints that run on the Ray cluster as ``python -m detrforge.jobs.<job>``, and what they
share. Never imports fastapi, the registry, the control layer or the API.

- ``driver``: every job driver's MLflow run, failure record and exit code.
- ``finetune`` (Ray Train) with ``callbacks`` (the Lightning callback to Ray Train and MLflow).
- ``sweep`` (Ray Tune): ``tuner`` (search space, scheduler, searcher), ``sweep_trial`` (the
  trainable), ``sweep_callback`` (the driver's trial records and one benchmark per trial).
- ``evaluate`` (COCO AP of a checkpoint) and ``benchmark`` (latency on a hardware target).
"""
