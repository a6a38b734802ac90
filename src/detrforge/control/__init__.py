"""The application layer between the API and the stores; takes typed values from the routes,
never a request body, and imports no web framework.

- ``jobs``: fine-tune, evaluation and benchmark jobs (submit, reconcile, cancel, logs).
- ``sweeps``: model size x resolution sweeps and their trials.
- ``versions``: registered models, gate policies, version registration, rollback.
- ``promotion``: the promotion state machine, start to commit, and its evidence protocol.
- ``evidence``: the evidence runner promotions use (evaluate/benchmark jobs, reuse).
- ``mirror``: the MLflow registry mirror of models, versions and stage aliases.
"""
