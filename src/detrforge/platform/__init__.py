"""Building blocks shared by the API and the jobs. Service plumbing: settings, db, storage
(``file://``, ``s3://``, content-addressed blobs), sources (where user paths may point), tracking
(MLflow), the launcher (Ray Jobs client) and the embedded Ray head (``cluster``, ``ray_head``).
Model domain: data, specs, checkpoints, the rfdetr adapter (``model``), inference, evaluation,
export, latency, pareto."""
