"""The web console's pages: server-rendered shells plus their scripts, from the installed package.

A page is a Jinja2 template (autoescaped) that holds no registry data and no key. Its script, an
ES module under ``static/``, reads the data from the REST API with the key the user pasted once:
the key lives in the tab's ``sessionStorage`` and travels as ``Authorization: Bearer <key>``,
exactly as the CLI sends it. So the console has the REST API's authorization and no other; and
since a custom header (no cookie) carries the key, another site cannot make the browser send an
authenticated request (CSRF-safe by construction). The key never goes into a URL or a log.

Every console response carries a Content-Security-Policy that admits scripts, styles, images
and connections from this origin only: no inline script, no third-party origin, no CDN.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from detrforge import __version__
from detrforge.platform.errors import NotFoundError

__all__ = ["CONSOLE_PATH", "CONTENT_SECURITY_POLICY", "PAGES", "Page", "install_console"]

CONSOLE_PATH = "/console"
STATIC_PATH = f"{CONSOLE_PATH}/static"

# 'self' only: the pages run no inline script or style and load nothing from another origin.
# data: images are the empty favicon; blob: is where CSV exports are downloaded from.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]

# What a page's path parameter may be (model names, job and promotion ids); anything else is a
# 404 before it reaches a template.
_RESOURCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True)
class Page:
    """One console page: its path under ``/console``, template, script and navigation entry."""

    path: str
    template: str
    title: str
    nav: str
    param: str | None = None

    @property
    def script(self) -> str:
        return self.template.removesuffix(".html")


PAGES: tuple[Page, ...] = (
    Page("/", "models.html", "Models", "models"),
    Page("/models/{name}", "model.html", "Model", "models", param="name"),
    Page("/promotions/{promotion_id}", "promotion.html", "Promotion", "models", "promotion_id"),
    Page("/benchmarks", "benchmarks.html", "Benchmark history", "benchmarks"),
    Page("/sweeps", "sweeps.html", "Sweeps", "sweeps"),
    Page("/sweeps/{job_id}", "sweep.html", "Sweep", "sweeps", param="job_id"),
    Page("/jobs", "jobs.html", "Jobs", "jobs"),
    Page("/jobs/{job_id}", "job.html", "Job", "jobs", param="job_id"),
    Page("/audit", "audit.html", "Audit log", "audit"),
)
_NAV = (
    ("models", "Models", f"{CONSOLE_PATH}/"),
    ("benchmarks", "Benchmarks", f"{CONSOLE_PATH}/benchmarks"),
    ("sweeps", "Sweeps", f"{CONSOLE_PATH}/sweeps"),
    ("jobs", "Jobs", f"{CONSOLE_PATH}/jobs"),
    ("audit", "Audit", f"{CONSOLE_PATH}/audit"),
)


def _package_dir(name: str) -> Path:
    return Path(str(files("detrforge.api.console") / name))


def _templates() -> Jinja2Templates:
    # Autoescaping on for every template: a path parameter is text, never markup.
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_package_dir("templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    return Jinja2Templates(env=environment)


class ConsoleHeaders:
    """Adds the Content-Security-Policy and its companions to every console response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != "/" and not path.startswith(CONSOLE_PATH):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _page_handler(
    page: Page, templates: Jinja2Templates, mlflow_ui_url: str | None
) -> Callable[[Request], Response]:
    def render(request: Request) -> Response:
        resource = request.path_params.get(page.param, "") if page.param else ""
        if page.param and not _RESOURCE_ID.fullmatch(resource):
            raise NotFoundError(f"no console page for {page.param} {resource[:64]!r}")
        context = {
            "page": page,
            "nav": _NAV,
            "resource": resource,
            "static": STATIC_PATH,
            "version": __version__,
            "mlflow_ui": mlflow_ui_url or "",
        }
        response = templates.TemplateResponse(request, page.template, context)
        response.headers["cache-control"] = "no-cache"
        return response

    render.__name__ = f"console_{page.script}"
    return render


def install_console(app: FastAPI, *, mlflow_ui_url: str | None) -> None:
    """Serve the console at ``/console/`` (``/`` redirects there) with its static assets.

    Pages are left out of the OpenAPI document: they are HTML shells, open like ``/docs``, and
    every figure on them comes from the authorized REST routes.
    """
    templates = _templates()
    router = APIRouter(prefix=CONSOLE_PATH, include_in_schema=False)
    for page in PAGES:
        router.add_api_route(
            page.path,
            _page_handler(page, templates, mlflow_ui_url),
            methods=["GET"],
            response_class=HTMLResponse,
        )

    @app.get("/", include_in_schema=False)
    def console_home() -> RedirectResponse:
        return RedirectResponse(f"{CONSOLE_PATH}/", status_code=307)

    app.include_router(router)
    app.mount(STATIC_PATH, StaticFiles(directory=_package_dir("static")), name="console-static")
    app.add_middleware(ConsoleHeaders)
