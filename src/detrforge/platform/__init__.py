"""Service plumbing shared by the API, the control layer and the jobs: settings, the database
engine, storage (``file://``, ``s3://``, content-addressed blobs), sources (where user paths may
point), checkpoints (safe, bounded loading), tracking (MLflow), MLflow tag names, input limits, the
launcher (Ray Jobs client) and the embedded Ray head (``cluster``, ``ray_head``). Knows nothing of
RF-DETR itself (that is ``detrforge.detector``)."""
