"""Typed settings, read only at entry points (``api.main``, ``cli``, job entrypoints).

Every embedded default lives under ``DETRFORGE_HOME`` and swaps for a production part by
configuration alone: ``DETRFORGE_DATABASE_URL`` (PostgreSQL), ``MLFLOW_TRACKING_URI`` (an MLflow
server), ``DETRFORGE_ARTIFACT_ROOT`` (``s3://bucket/prefix`` with ``AWS_ENDPOINT_URL``) and
``RAY_ADDRESS`` (a multi-node cluster).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from detrforge.platform.launcher import DEFAULT_JOB_PYTHON
from detrforge.platform.limits import DEFAULT_MAX_ANNOTATION_BYTES, DEFAULT_MAX_REQUEST_BYTES

__all__ = ["Settings"]


class Settings(BaseSettings):
    """detrforge configuration; every field reads ``DETRFORGE_<NAME>`` unless noted."""

    model_config = SettingsConfigDict(env_prefix="DETRFORGE_", extra="ignore")

    home: Path = Field(default=Path(".detrforge"))
    database_url: str | None = None
    artifact_root: str | None = None
    mlflow_tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "DETRFORGE_MLFLOW_TRACKING_URI"),
    )
    ray_address: str | None = Field(
        default=None, validation_alias=AliasChoices("RAY_ADDRESS", "DETRFORGE_RAY_ADDRESS")
    )
    # The interpreter jobs start with on the cluster's nodes (``<job_python> -m detrforge.jobs.X``):
    # a command resolved on the node's PATH, or a path on the node (e.g. /opt/venv/bin/python).
    job_python: str = Field(default=DEFAULT_JOB_PYTHON, min_length=1)
    # Ports of the embedded Ray head; never 6379, which Redis often holds.
    ray_gcs_port: int = 6390
    ray_dashboard_port: int = 8275
    ray_num_cpus: int | None = None
    # Where the embedded head keeps every file of its own (sessions, sockets, logs). Default:
    # ``detrforge-ray-<gcs port>`` under Ray's ``RAY_TMPDIR``, else the system temp dir
    # (``TMPDIR``). Kept short: Ray's unix socket paths live under it.
    ray_temp_dir: Path | None = None
    ray_tmpdir: Path | None = Field(default=None, validation_alias=AliasChoices("RAY_TMPDIR"))
    # After the head serve owns dies, /ready answers 503 this long before serve exits, so load
    # balancers see "not ready" rather than a refused connection.
    head_exit_grace_s: float = 5.0
    host: str = "127.0.0.1"
    port: int = 8321
    api_url: str | None = None
    # Where the web console links MLflow runs: an MLflow UI (e.g. ``mlflow server`` or ``mlflow
    # ui``). Default: MLFLOW_TRACKING_URI when it is http(s); otherwise runs show as ids only.
    mlflow_ui_url: str | None = None
    api_key: str | None = None
    reconcile_interval_s: float = 2.0
    # How often every registered model is re-synced to MLflow's registry (also at start);
    # a model whose mirror failed is retried sooner, with backoff (``control.mirror``).
    mlflow_mirror_interval_s: float = Field(default=300.0, gt=0)
    # A job whose workers cannot be placed within this time is failed, not left pending forever.
    schedule_timeout_s: float = 600.0
    # Every API replica advances only the promotions whose lease it holds (``control.leases``):
    # a lease lasts this long unless renewed, and is renewed this often. A replica that dies
    # leaves its promotions to another once its leases expire.
    promotion_lease_ttl_s: float = Field(default=30.0, gt=0)
    promotion_lease_renew_s: float = Field(default=10.0, gt=0)
    # Comma-separated failpoints for crash tests, e.g. "promotion.before_commit": the process
    # exits at that point. Never set in production.
    failpoints: str = ""
    # Where user-given local paths (datasets, checkpoints, weights) may point: os.pathsep- or
    # comma-separated. Empty: DETRFORGE_HOME and the folder the server was started from.
    data_roots: Annotated[tuple[Path, ...], NoDecode] = ()
    # Buckets user-given s3:// URIs may name. Empty: the artifact root's bucket, if it is s3://.
    s3_buckets: Annotated[tuple[str, ...], NoDecode] = ()
    # A registered checkpoint larger than this is refused before it is read.
    max_checkpoint_bytes: int = Field(default=2 * 1024**3, gt=0)
    # Reading (torch.load) a checkpoint at registration must finish within this time.
    checkpoint_load_timeout_s: float = Field(default=120.0, gt=0)
    # The download cache under DETRFORGE_HOME/cache: entries unused this long are removed, then
    # the least recently used until it fits the cap (``platform.scratch.prune_cache``).
    cache_max_age_days: float = Field(default=7.0, gt=0)
    cache_max_bytes: int = Field(default=20 * 1024**3, gt=0)
    # How often the reconciler cleans that cache and the scratch folders of finished jobs
    # (``platform.scratch.Housekeeping``); also once at serve start.
    housekeeping_interval_s: float = Field(default=300.0, gt=0)

    @field_validator("data_roots", "s3_buckets", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = value.replace(os.pathsep, ",").split(",")
            return tuple(part.strip() for part in parts if part.strip())
        return value

    # The largest request body the API reads; datasets and checkpoints go by path or URI.
    max_request_bytes: int = Field(default=DEFAULT_MAX_REQUEST_BYTES, ge=1)
    # The largest _annotations.coco.json a dataset may hold (it is read into memory to validate).
    max_annotation_bytes: int = Field(default=DEFAULT_MAX_ANNOTATION_BYTES, ge=1)

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> Settings:
        if self.promotion_lease_renew_s >= self.promotion_lease_ttl_s:
            raise ValueError(
                f"promotion_lease_renew_s ({self.promotion_lease_renew_s:g}) must be shorter "
                f"than promotion_lease_ttl_s ({self.promotion_lease_ttl_s:g}), or leases expire "
                "while their replica still works; e.g. renew every third of the TTL"
            )
        return self

    def resolved_home(self) -> Path:
        """``home`` as an absolute path, created if missing (0700: it holds the admin key and the
        registry database)."""
        home = self.home.expanduser().resolve()
        if not home.exists():
            home.mkdir(parents=True, mode=0o700, exist_ok=True)
            home.chmod(0o700)  # mkdir's mode is filtered by the umask
        return home

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_home() / 'registry.db'}"

    def resolved_artifact_root(self) -> str:
        if self.artifact_root:
            return self.artifact_root.rstrip("/")
        root = self.resolved_home() / "artifacts"
        root.mkdir(parents=True, exist_ok=True)
        return root.as_uri()

    def resolved_data_roots(self) -> tuple[Path, ...]:
        """``data_roots`` as absolute paths; by default the home and the current folder."""
        roots = self.data_roots or (self.resolved_home(), Path.cwd())
        return tuple(Path(root).expanduser().resolve() for root in roots)

    def resolved_s3_buckets(self) -> frozenset[str]:
        """``s3_buckets``; by default the artifact root's bucket when it is on S3."""
        if self.s3_buckets:
            return frozenset(self.s3_buckets)
        root = self.resolved_artifact_root()
        return frozenset({urlsplit(root).netloc}) if root.startswith("s3://") else frozenset()

    def resolved_tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.resolved_home() / 'mlflow.db'}"

    def resolved_mlflow_ui_url(self) -> str | None:
        """The MLflow UI to link runs to: ``mlflow_ui_url``, else an http(s) tracking URI; never
        with credentials (the console shows it to every viewer)."""
        url = self.mlflow_ui_url or self.mlflow_tracking_uri or ""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = f"{host}:{parts.port}" if parts.port else host
        return f"{parts.scheme}://{netloc}{parts.path}".rstrip("/")

    def resolved_ray_address(self) -> str:
        """The Ray Jobs API (dashboard) URL: ``RAY_ADDRESS`` or the embedded head's."""
        if self.ray_address:
            address = self.ray_address
            return address if "://" in address else f"http://{address}"
        return f"http://127.0.0.1:{self.ray_dashboard_port}"

    def resolved_ray_temp_dir(self) -> Path:
        """The embedded head's own temp dir (see ``ray_temp_dir``)."""
        if self.ray_temp_dir:
            return self.ray_temp_dir.expanduser().absolute()
        base = self.ray_tmpdir or Path(tempfile.gettempdir())
        return base.expanduser().absolute() / f"detrforge-ray-{self.ray_gcs_port}"

    def resolved_api_url(self) -> str:
        return (self.api_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def admin_key_path(self) -> Path:
        return self.resolved_home() / "admin.key"
