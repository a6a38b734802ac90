"""The MLflow tags detrforge writes on runs, logged models and model versions: one name, one
place.

Jobs write them, the control API reads them back when it reconciles a job with its run, and the
MLflow mirror (``control.mirror``) writes ``VERSION``, ``CHECKPOINT_SHA256`` and
``REGISTERED_MODEL`` on what it logs and registers, and finds them again by those tags.
"""

from __future__ import annotations

__all__ = ["Tag"]


class Tag:
    """Tag keys (all under ``detrforge.``)."""

    BENCHMARK_ERROR = "detrforge.benchmark_error"
    CHECKPOINT = "detrforge.checkpoint"
    CHECKPOINT_EPOCH = "detrforge.checkpoint_epoch"
    CHECKPOINT_SHA256 = "detrforge.checkpoint_sha256"
    CHECKPOINT_URI = "detrforge.checkpoint_uri"
    DATASET_FINGERPRINT = "detrforge.dataset_fingerprint"
    ERROR = "detrforge.error"
    EVAL_FINGERPRINT = "detrforge.eval_fingerprint"
    EVAL_SPLIT = "detrforge.eval_split"
    JOB_ID = "detrforge.job_id"
    KIND = "detrforge.kind"
    MODEL_MISSING = "detrforge.model_missing"
    MODEL_SHA256 = "detrforge.model_sha256"
    MODEL_SIZE = "detrforge.model_size"
    MODEL_SIZE_BYTES = "detrforge.model_size_bytes"
    MODEL_URI = "detrforge.model_uri"
    NODE_ID = "detrforge.node_id"
    ONNX_SHA256 = "detrforge.onnx_sha256"
    ONNX_URI = "detrforge.onnx_uri"
    RAY_JOB_ID = "detrforge.ray_job_id"
    REGISTERED_MODEL = "detrforge.registered_model"
    RESOLUTION = "detrforge.resolution"
    SEARCHED = "detrforge.searched"
    SWEEP_BEST = "detrforge.sweep_best"
    SWEEP_JOB_ID = "detrforge.sweep_job_id"
    SWEEP_PICK = "detrforge.sweep_pick"
    TARGET = "detrforge.target"
    TRIAL_EPOCHS = "detrforge.trial_epochs"
    TRIAL_ID = "detrforge.trial_id"
    TRIAL_STATE = "detrforge.trial_state"
    VERSION = "detrforge.version"
    WALL_S = "detrforge.wall_s"

    # A benchmark run's environment: one tag per package or host fact, ``detrforge.env.<key>``.
    ENV_PREFIX = "detrforge.env."

    @staticmethod
    def env(key: str) -> str:
        """The tag of environment entry ``key`` (``torch`` -> ``detrforge.env.torch``)."""
        return f"{Tag.ENV_PREFIX}{key}"
