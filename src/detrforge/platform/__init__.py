"""Service plumbing shared by the API, the control layer and the jobs. Knows nothing of RF-DETR
itself (that is ``detrforge.detector``) and imports nothing above it.

- Configuration and errors: ``settings``, ``errors`` (the one error hierarchy), ``limits`` (input
  limits, the page size), ``tags`` (MLflow tag names).
- Persistence: ``db`` (the SQLAlchemy engine, sessions, migrations).
- Storage: ``artifact_store`` (the store interface), ``local_store`` (``file://``), ``s3_store``
  (``s3://``, and a node-local cache of it), ``storage`` (the store for a root, a local path for
  any URI), ``blobs`` (sha256 of a file, content-addressed blob keys), ``sources`` (where user
  paths may point), ``checkpoints`` (taking in a checkpoint to register: size-capped, read
  safely).
- Tracking and records: ``tracking`` (MLflow), ``environment`` (software and hardware pins),
  ``csv_cells`` (CSV cells safe from formula injection).
- Ray: ``launcher`` (Ray Jobs client), ``cluster`` and ``ray_head`` (the embedded Ray head).
"""
