"""The control API application: ``create_app(settings)``; ``detrforge serve`` runs it."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from detrforge import __version__
from detrforge.api.deps import Services
from detrforge.api.errors import install_error_handlers
from detrforge.api.job_service import JobService
from detrforge.api.routes import evaluations, finetune, health, keys
from detrforge.api.routes import targets as target_routes
from detrforge.platform.cluster import ray_client_env
from detrforge.platform.db import make_engine, make_session_factory, upgrade_database
from detrforge.platform.launcher import Launcher
from detrforge.platform.settings import Settings
from detrforge.platform.tracking import Tracker
from detrforge.registry.benchmarks import BenchmarkStore
from detrforge.registry.jobs import JobStore
from detrforge.registry.keys import KeyStore
from detrforge.registry.targets import TargetStore

__all__ = ["build_services", "create_app", "job_env"]

log = logging.getLogger(__name__)

# Standard variables of the ecosystem that jobs on the cluster need as the API sees them.
_FORWARDED_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "MLFLOW_TRACKING_TOKEN",
)


def job_env(settings: Settings) -> dict[str, str]:
    """The environment of every job: resolved settings, so the cluster sees what the API sees."""
    env = {
        "DETRFORGE_HOME": str(settings.resolved_home()),
        "DETRFORGE_ARTIFACT_ROOT": settings.resolved_artifact_root(),
        "MLFLOW_TRACKING_URI": settings.resolved_tracking_uri(),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if not settings.ray_address:
        env.update(ray_client_env())
    # Entry points may read the process environment (STYLE.md); library code does not.
    env.update({k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ})
    return env


def build_services(settings: Settings) -> Services:
    """Migrate the database and wire the stores, launcher and tracker for ``settings``."""
    url = settings.resolved_database_url()
    upgrade_database(url)
    sessions = make_session_factory(make_engine(url))
    artifact_root = settings.resolved_artifact_root()
    launcher = Launcher(settings.resolved_ray_address(), env=job_env(settings))
    targets = TargetStore(sessions)
    benchmarks = BenchmarkStore(sessions)
    jobs = JobService(
        jobs=JobStore(sessions),
        targets=targets,
        benchmarks=benchmarks,
        launcher=launcher,
        tracker=Tracker(settings.resolved_tracking_uri(), artifact_root=artifact_root),
        artifact_root=artifact_root,
        cache_dir=settings.resolved_home() / "cache",
        schedule_timeout_s=settings.schedule_timeout_s,
    )
    return Services(
        settings=settings,
        keys=KeyStore(sessions),
        jobs=jobs,
        targets=targets,
        benchmarks=benchmarks,
    )


def _reconcile_forever(services: Services, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            services.jobs.reconcile_all()
        except Exception:  # noqa: BLE001 - the loop must survive a flaky cluster or tracker
            log.exception("reconcile pass failed")
        stop.wait(services.settings.reconcile_interval_s)


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
        worker.start()
        try:
            yield
        finally:
            stop.set()
            worker.join(timeout=10)

    app = FastAPI(
        title="detrforge",
        version=__version__,
        description="Fine-tune, gate and ship RF-DETR detectors on Ray, tracked in MLflow.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(keys.router)
    app.include_router(finetune.router)
    app.include_router(evaluations.router)
    app.include_router(target_routes.router)
    return app
