"""The control API application: ``create_app(settings)``; ``detrforge serve`` runs it."""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from detrforge import __version__
from detrforge.api.console import install_console
from detrforge.api.deps import Services
from detrforge.api.docs import install_docs
from detrforge.api.errors import install_error_handlers
from detrforge.api.limits import install_request_limits
from detrforge.api.readiness import Readiness
from detrforge.api.routes import evaluations, finetune, health, jobs, keys
from detrforge.api.routes import models as model_routes
from detrforge.api.routes import sweeps as sweep_routes
from detrforge.api.routes import targets as target_routes
from detrforge.control.evidence import JobEvidenceRunner
from detrforge.control.jobs import JobService
from detrforge.control.leases import PromotionLeases, replica_id
from detrforge.control.mirror import MlflowMirror
from detrforge.control.promotion import PromotionService
from detrforge.control.sweeps import SweepService
from detrforge.control.variants import VariantService
from detrforge.control.versions import VersionService
from detrforge.platform.cluster import ray_client_env
from detrforge.platform.db import make_engine, make_session_factory, upgrade_database
from detrforge.platform.launcher import Launcher
from detrforge.platform.scratch import Housekeeping
from detrforge.platform.settings import Settings
from detrforge.platform.sources import SourcePolicy
from detrforge.platform.tracking import Tracker
from detrforge.registry.audit import AuditLog
from detrforge.registry.benchmarks import BenchmarkStore
from detrforge.registry.jobs import JobStore
from detrforge.registry.keys import KeyStore
from detrforge.registry.leases import LeaseStore
from detrforge.registry.models import ModelStore
from detrforge.registry.promotions import PromotionStore
from detrforge.registry.targets import TargetStore
from detrforge.registry.variants import VariantStore

__all__ = ["build_services", "create_app", "job_env"]

log = logging.getLogger(__name__)

# Standard variables of the ecosystem that jobs on the cluster need as the API sees them.
_FORWARDED_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
)


# Memory-monitor kills a job's own Ray task survives before the job fails (see job_env).
TASK_OOM_RETRIES = 3


def job_env(settings: Settings) -> dict[str, str]:
    """The environment of every job: resolved settings, so the cluster sees what the API sees.

    The API's home is a path of this machine: it goes to jobs only with a ``file://`` artifact
    root, which already means the API and every node share a filesystem.
    """
    artifact_root = settings.resolved_artifact_root()
    env = {
        "DETRFORGE_ARTIFACT_ROOT": artifact_root,
        "MLFLOW_TRACKING_URI": settings.resolved_tracking_uri(),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # A task Ray's memory monitor kills is retried without end by default: an evaluation
        # that cannot fit would hold its promotion "running" forever. After this many kills the
        # job fails with Ray's OutOfMemoryError, which names the node and its memory.
        "RAY_task_oom_retries": str(TASK_OOM_RETRIES),
    }
    if artifact_root.startswith("file:"):
        env["DETRFORGE_HOME"] = str(settings.resolved_home())
    if not settings.ray_address:
        env.update(ray_client_env())
    # Entry points may read the process environment (STYLE.md); library code does not.
    env.update({k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ})
    return env


def build_services(settings: Settings) -> Services:
    """Migrate the database and wire the stores, launcher and tracker for ``settings``."""
    url = settings.resolved_database_url()
    upgrade_database(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    artifact_root = settings.resolved_artifact_root()
    launcher = Launcher(
        settings.resolved_ray_address(), env=job_env(settings), python=settings.job_python
    )
    targets = TargetStore(sessions)
    benchmarks = BenchmarkStore(sessions)
    tracker = Tracker(settings.resolved_tracking_uri(), artifact_root=artifact_root)
    sources = SourcePolicy.build(
        roots=settings.resolved_data_roots(),
        s3_buckets=settings.resolved_s3_buckets(),
        artifact_root=artifact_root,
    )
    jobs = JobService(
        job_store=JobStore(sessions),
        targets=targets,
        benchmarks=benchmarks,
        launcher=launcher,
        tracker=tracker,
        artifact_root=artifact_root,
        cache_dir=settings.resolved_home() / "cache",
        sources=sources,
        schedule_timeout_s=settings.schedule_timeout_s,
        max_annotation_bytes=settings.max_annotation_bytes,
        housekeeping=Housekeeping(
            cache_dir=settings.resolved_home() / "cache",
            cache_max_age_s=settings.cache_max_age_days * 86400,
            cache_max_bytes=settings.cache_max_bytes,
            interval_s=settings.housekeeping_interval_s,
        ),
    )
    model_store = ModelStore(sessions)
    mirror = MlflowMirror(
        store=model_store,
        tracker=tracker,
        artifact_root=artifact_root,
        scratch_dir=settings.resolved_home() / "cache" / "mirror",
        full_sync_interval_s=settings.mlflow_mirror_interval_s,
    )
    versions = VersionService(
        store=model_store,
        jobs=jobs,
        mirror=mirror,
        cache_dir=settings.resolved_home() / "cache",
        sources=sources,
        max_checkpoint_bytes=settings.max_checkpoint_bytes,
        checkpoint_load_timeout_s=settings.checkpoint_load_timeout_s,
    )
    leases = PromotionLeases(
        LeaseStore(sessions),
        ttl_s=settings.promotion_lease_ttl_s,
        renew_interval_s=settings.promotion_lease_renew_s,
        owner=replica_id(),
    )
    log.info("API replica %s (promotion leases of %g s)", leases.owner, leases.ttl_s)
    variant_store = VariantStore(sessions)
    promotions = PromotionService(
        store=PromotionStore(sessions),
        runner=JobEvidenceRunner(jobs=jobs, benchmarks=benchmarks, variants=variant_store),
        mirror=mirror,
        leases=leases,
        failpoints=frozenset(f for f in settings.failpoints.split(",") if f),
    )
    sweeps = SweepService(jobs)
    variants = VariantService(
        store=variant_store, artifact_root=artifact_root, models=model_store, jobs=jobs
    )
    # An optimize job's variants are recorded on the version once it succeeds.
    jobs.on_succeeded("optimize", variants.record_optimized)
    # A sweep's trials are benchmarked inside it; their records join the history when it ends.
    jobs.on_succeeded("sweep", sweeps.record_benchmarks)
    return Services(
        settings=settings,
        keys=KeyStore(sessions),
        jobs=jobs,
        targets=targets,
        benchmarks=benchmarks,
        versions=versions,
        promotions=promotions,
        mirror=mirror,
        audit=AuditLog(sessions),
        readiness=Readiness(
            engine=engine,
            launcher=launcher,
            tracker=tracker,
            artifact_root=artifact_root,
            mirror=mirror,
        ),
        sweeps=sweeps,
        variants=variants,
    )


def _reconcile_forever(services: Services, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            services.jobs.reconcile_all()
        except Exception:  # noqa: BLE001 - the loop must survive a flaky cluster or tracker
            log.exception("reconcile pass failed")
        stop.wait(services.settings.reconcile_interval_s)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class RequestIdMiddleware:
    """Give every request an id (the client's ``X-Request-ID`` when sane) and echo it back.

    Plain ASGI rather than ``@app.middleware``: Starlette's ``BaseHTTPMiddleware`` costs a task
    and a stream per request, measurable on the hot read path (``bench/registry_load.py``).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


def create_app(settings: Settings | None = None, *, services: Services | None = None) -> FastAPI:
    """The FastAPI app; reconciles every non-terminal job at start and then in the background."""
    settings = settings or Settings()
    services = services or build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        worker = threading.Thread(
            target=_reconcile_forever, args=(services, stop), name="reconciler", daemon=True
        )
        promoter = threading.Thread(
            target=services.promotions.run_forever,
            args=(stop,),
            kwargs={"interval_s": settings.reconcile_interval_s},
            name="promoter",
            daemon=True,
        )
        # Syncs every model to MLflow at start (repairing what a restart left behind), retries
        # failed mirrors, and re-syncs everything every DETRFORGE_MLFLOW_MIRROR_INTERVAL_S.
        mirror_thread = threading.Thread(
            target=services.mirror.run_forever,
            args=(stop,),
            kwargs={"interval_s": settings.reconcile_interval_s},
            name="mlflow-mirror",
            daemon=True,
        )
        worker.start()
        promoter.start()
        mirror_thread.start()
        try:
            yield
        finally:
            stop.set()
            services.promotions.wake.set()
            worker.join(timeout=10)
            promoter.join(timeout=10)
            mirror_thread.join(timeout=10)

    app = FastAPI(
        title="detrforge",
        version=__version__,
        description="Fine-tune, gate and ship RF-DETR detectors on Ray, tracked in MLflow.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.services = services
    install_error_handlers(app)
    install_request_limits(app, max_bytes=settings.max_request_bytes)
    install_docs(app)
    install_console(app, mlflow_ui_url=settings.resolved_mlflow_ui_url())
    app.add_middleware(RequestIdMiddleware)

    app.include_router(health.router)
    app.include_router(keys.router)
    app.include_router(finetune.router)
    app.include_router(jobs.router)
    app.include_router(evaluations.router)
    app.include_router(target_routes.router)
    app.include_router(sweep_routes.router)
    app.include_router(model_routes.router)
    return app
