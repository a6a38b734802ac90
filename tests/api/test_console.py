"""The web console in a real browser: Playwright driving Debian's headless chromium against the
API served by a real uvicorn server on a loopback port.

The registry is seeded through the real stores and services and over REST as a user would: a
model with a gate policy, versions, promotions through the real state machine (v1 and v2 to
production, v3 refused by the AP gate), benchmark history, jobs and a sweep. No model is
trained: the promotions' evaluate and benchmark evidence comes from ``FiguresRunner``, which
records real job rows and real benchmark records with chosen figures (the machinery of
tests/control/test_promotion.py); the gates, their verdicts and sentences are the real ones.

The browser may reach the API's own origin only: every other request is aborted and recorded,
and each test asserts none was attempted. Screenshots of every page go to the test's tmp dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from detrforge.api.console import CONTENT_SECURITY_POLICY
from detrforge.api.deps import Services
from detrforge.api.main import build_services, create_app
from detrforge.control.promotion import EvidenceNeed, EvidenceResult, PromotionService
from detrforge.detector.data import DatasetInfo
from detrforge.detector.specs import parse_spec
from detrforge.detector.sweep_specs import SweepSpec
from detrforge.platform.tags import Tag
from detrforge.registry.benchmarks import BenchmarkStore
from detrforge.registry.entities import JobState, ModelVersion, Role
from detrforge.registry.gates import GatePolicy
from detrforge.registry.jobs import JobStore
from fixtures_cluster import free_port, make_settings, wait_until

MODEL = "shelf-detector"
PROBE = "markup-probe"
PROBE_DESCRIPTION = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'
TARGET = "cpu-local"
MLFLOW_UI = "http://mlflow.example:5000"
# What each version measures: AP on the pinned set, p95 on TARGET (v3 is the worse candidate).
AP = {1: 0.0008, 2: 0.2267, 3: 0.0010, 4: 0.2301}
P95 = {1: 371.6, 2: 265.9, 3: 172.4, 4: 250.2}
PINS = {
    "detrforge": "0.1.0",
    "rfdetr": "1.11.2",
    "torch": "2.14.1",
    "torchvision": "0.29.1",
    "onnxruntime": "1.32.0",
    "python": "3.11.7",
    "os": "Linux-6.1",
    "cpu_model": "AMD EPYC",
}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}

if not Path(CHROMIUM).exists():
    if os.environ.get("CI") == "true":
        pytest.fail(
            "CI=true but Debian's chromium is not installed (.ci/run installs it)", pytrace=False
        )
    pytest.skip(
        "Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True
    )

from playwright.sync_api import (  # noqa: E402 - only once chromium is known to be there
    Browser,
    BrowserContext,
    Page,
    Playwright,
    Request,
    Route,
    expect,
    sync_playwright,
)


# -- evidence with chosen figures, recorded as real jobs and benchmark records ---------------------
@dataclass
class FiguresRunner:
    """Answers a promotion's evidence needs with ``AP`` and ``P95``: each need becomes a job row
    (evaluate or benchmark) that succeeds when read, and each benchmark a history record.

    While ``release`` is clear, submitted evidence stays submitted (the promotion runs on)."""

    job_store: JobStore
    benchmarks: BenchmarkStore
    release: threading.Event = field(default_factory=threading.Event)

    def start(
        self,
        need: EvidenceNeed,
        version: ModelVersion,
        *,
        policy: GatePolicy,
        promotion_id: str,
        reference: EvidenceResult | None,
    ) -> EvidenceResult:
        spec = {
            "checkpoint": version.checkpoint_uri,
            "checkpoint_sha256": version.checkpoint_sha256,
            "model_name": version.model_name,
            "model_version": version.version,
            "target": need.target,
        }
        job = self.job_store.create(
            kind=need.kind,
            spec=spec,
            created_by=f"promotion {promotion_id}",
            dataset_fingerprint=None,
        )
        self.job_store.update(job.id, state=JobState.RUNNING, started_at=datetime.now(UTC))
        return EvidenceResult(need=need, version=version.version, state="submitted", job_id=job.id)

    def read(self, result: EvidenceResult, *, policy: GatePolicy) -> EvidenceResult:
        if not self.release.is_set():
            return result
        assert result.job_id is not None
        run_id = uuid.uuid4().hex
        job = self.job_store.get(result.job_id)
        if result.need.kind == "evaluate":
            figures = {"bbox/AP": AP[result.version]}
            done = replace(result, state="done", ap=AP[result.version], mlflow_run_id=run_id)
        else:
            record = self.benchmarks.add(
                _record(
                    job.id,
                    job.spec["checkpoint_sha256"],
                    P95[result.version],
                    version=result.version,
                    run_id=run_id,
                )
            )
            figures = {"latency_ms/p95": P95[result.version]}
            done = replace(
                result,
                state="done",
                p95_ms=P95[result.version],
                record_id=record.id,
                mlflow_run_id=run_id,
                node_id="node-1",
            )
        self.job_store.update(
            job.id,
            state=JobState.SUCCEEDED,
            metrics=figures,
            mlflow_run_id=run_id,
            finished_at=datetime.now(UTC),
        )
        return done


def _record(
    job_id: str,
    sha256: str,
    p95: float,
    *,
    version: int,
    run_id: str | None = None,
    at: datetime | None = None,
    pins: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "created_at": at,
        "model_name": MODEL,
        "model_version": version,
        "checkpoint_uri": f"file:///blobs/{sha256}",
        "checkpoint_sha256": sha256,
        "model_size": "nano",
        "target": TARGET,
        "target_resources": {"CPU": 1.0},
        "node_id": "node-1",
        "backend": "torch",
        "precision": "fp32",
        "resolution": 128,
        "batch_size": 1,
        "warmup": 5,
        "runs": 30,
        "threads": 1,
        "device": "cpu",
        "p50_ms": round(p95 * 0.8, 1),
        "p95_ms": p95,
        "p99_ms": round(p95 * 1.1, 1),
        "mean_ms": round(p95 * 0.85, 1),
        "std_ms": 5.0,
        "min_ms": round(p95 * 0.7, 1),
        "max_ms": round(p95 * 1.2, 1),
        "images_per_s": round(1000 / p95, 2),
        "environment": pins or PINS,
        "mlflow_run_id": run_id,
    }


# -- the server and its seeded state -------------------------------------------------------------
@dataclass
class Console:
    """The API at ``url`` (a real uvicorn server), its services, a key per role, the runner."""

    url: str
    services: Services
    keys: dict[Role, str]
    runner: FiguresRunner
    sweep_id: str
    running_job_id: str

    def call(self, method: str, path: str, role: Role, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.keys[role]}"}
        response = httpx.request(method, f"{self.url}/api/v1{path}", headers=headers, **kwargs)
        assert response.status_code < 300, response.text
        return response.json()

    def promote(self, version: int, to: str = "production") -> dict[str, Any]:
        body = {"to": to, "reason": f"v{version} to {to}"}
        started = self.call(
            "POST", f"/models/{MODEL}/versions/{version}/promotions", Role.approver, json=body
        )
        return dict(
            wait_until(
                lambda: self.call("GET", f"/promotions/{started['id']}", Role.viewer),
                until=lambda p: p["state"] in ("applied", "failed"),
                what=f"the promotion of v{version} to {to} to end",
                timeout_s=30,
                every_s=0.1,
            )
        )


def _serve(app: Any) -> tuple[str, uvicorn.Server, threading.Thread]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="uvicorn to start", timeout_s=30, every_s=0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def _register_versions(services: Services, folder: Path) -> None:
    """Four versions of MODEL, each a file with its own bytes and real sha256 (never loaded: the
    evidence is chosen, so no checkpoint needs to be a trained model)."""
    folder.mkdir(parents=True, exist_ok=True)
    for version in AP:
        path = folder / f"v{version}.pth"
        path.write_bytes(f"weights of version {version}".encode() * 256)
        services.versions.store.register_version(
            MODEL,
            checkpoint_uri=str(path),
            checkpoint_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            checkpoint_bytes=path.stat().st_size,
            model_size="nano",
            resolution=128,
            class_names=["square", "circle"],
            dataset_fingerprint="f" * 64,
            description=f"run {version} of the shelf fine-tune",
            actor="key:test-operator",
        )
    services.versions.mirror.sync(MODEL)


def _seed_history(services: Services) -> None:
    """Earlier benchmarks of v1 and v2 under torch 2.13.1, days before the promotions."""
    versions = {v.version: v for v in services.versions.store.list_versions(MODEL)}
    old_pins = {**PINS, "torch": "2.13.1"}
    now = datetime.now(UTC)
    for days, version, p95 in ((3, 1, 402.5), (2, 1, 388.0), (2, 2, 281.3)):
        job = services.jobs.job_store.create(
            kind="benchmark",
            spec={"target": TARGET, "model_name": MODEL, "model_version": version},
            created_by="key:test-operator",
            dataset_fingerprint=None,
        )
        services.jobs.job_store.update(job.id, state=JobState.SUCCEEDED, finished_at=now)
        services.benchmarks.add(
            _record(
                job.id,
                versions[version].checkpoint_sha256,
                p95,
                version=version,
                at=now - timedelta(days=days, hours=version),
                pins=old_pins,
            )
        )


def _seed_jobs(services: Services, dataset: str) -> tuple[str, str]:
    """A fine-tune running with progress, and a sweep with five measured trials in MLflow."""
    store = services.jobs.job_store
    finetune = store.create(
        kind="finetune",
        spec={"dataset": dataset, "model_size": "nano", "resolution": 128, "epochs": 10},
        created_by="key:test-operator",
        dataset_fingerprint="f" * 64,
    )
    store.update(
        finetune.id,
        state=JobState.RUNNING,
        started_at=datetime.now(UTC),
        progress={"epoch": 2, "step": 24, "total_steps": 80, "loss": 9.527, "eta_s": 125},
        metrics={"train/loss": 9.527, "bbox/AP": 0.1403},
    )
    spec = parse_spec(
        SweepSpec,
        {
            "dataset": dataset,
            "target": TARGET,
            "target_resources": {"CPU": 1},
            "latency_sla_ms": 200,
        },
    )
    sweep = store.create(
        kind="sweep",
        spec=spec.model_dump(mode="json"),
        created_by="key:test-operator",
        dataset_fingerprint="f" * 64,
    )
    store.update(sweep.id, state=JobState.RUNNING, started_at=datetime.now(UTC))
    tracker = services.jobs.tracker
    trials = [  # size, resolution, AP, p95
        ("nano", 128, 0.21, 120.0),
        ("nano", 160, 0.25, 180.0),
        ("small", 128, 0.23, 210.0),
        ("small", 160, 0.30, 290.0),
        ("nano", 192, 0.22, 240.0),
    ]
    for i, (size, resolution, ap, p95) in enumerate(trials):
        run = tracker.client.create_run(
            tracker.experiment_id(),
            tags={
                Tag.SWEEP_JOB_ID: sweep.id,
                Tag.TRIAL_ID: f"trial_{i:04d}",
                Tag.TRIAL_STATE: "TERMINATED",
                Tag.MODEL_SIZE: size,
                Tag.RESOLUTION: str(resolution),
                Tag.SEARCHED: json.dumps({"model_size": size, "resolution": resolution}),
                Tag.CHECKPOINT_SHA256: f"{i:064x}",
                Tag.CHECKPOINT_URI: f"file:///sweeps/{sweep.id}/trial_{i}.pth",
            },
        )
        metrics = {
            "bbox/AP": ap,
            "best/bbox/AP": ap,
            "latency_ms/p95": p95,
            "latency_ms/p50": p95 * 0.8,
        }
        for key, value in {**metrics, "epoch": 1}.items():
            tracker.client.log_metric(run.info.run_id, key, value)
    return finetune.id, sweep.id


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, synth_ds: DatasetInfo) -> Iterator[Console]:
    home = tmp_path_factory.mktemp("console")
    settings = make_settings(
        home / "home",
        database_url=f"sqlite:///{home / 'registry.db'}",
        ray_address=f"http://127.0.0.1:{free_port()}",
        artifact_root=None,
    ).model_copy(update={"mlflow_ui_url": MLFLOW_UI, "reconcile_interval_s": 0.5})
    services = build_services(settings)
    runner = FiguresRunner(job_store=services.jobs.job_store, benchmarks=services.benchmarks)
    runner.release.set()
    services.promotions = PromotionService(
        store=services.promotions.store, runner=runner, mirror=services.promotions.mirror
    )
    keys = {role: services.keys.create(name=f"test-{role.value}", role=role)[1] for role in Role}
    url, server, thread = _serve(create_app(settings, services=services))
    try:
        state = Console(url, services, keys, runner, sweep_id="", running_job_id="")
        state.call(
            "POST",
            "/hardware-targets",
            Role.approver,
            json={"name": TARGET, "resources": {"CPU": 1}},
        )
        state.call(
            "POST",
            "/models",
            Role.operator,
            json={"name": MODEL, "description": "Finds products on shelves."},
        )
        state.call(
            "POST", "/models", Role.operator, json={"name": PROBE, "description": PROBE_DESCRIPTION}
        )
        _register_versions(services, home / "checkpoints")
        policy = {
            "eval": {"dataset": str(synth_ds.root)},
            "max_ap_drop": 0.02,
            "targets": [{"target": TARGET, "max_p95_ratio": 1.5}],
            "reason": "the demo's policy",
        }
        state.call("PUT", f"/models/{MODEL}/policy", Role.approver, json=policy)
        _seed_history(services)
        assert state.promote(1)["state"] == "applied"
        assert state.promote(2)["state"] == "applied"
        refused = state.promote(3)
        assert refused["state"] == "failed" and refused["message"].startswith(
            "refused: max_ap_drop"
        )
        state.running_job_id, state.sweep_id = _seed_jobs(services, str(synth_ds.root))
        yield state
    finally:
        server.should_exit = True
        thread.join(timeout=15)


# -- the browser ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        yield _launch(playwright)


def _launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True)


@dataclass
class Tab:
    """A page in its own browser context that may reach ``origin`` only."""

    page: Page
    context: BrowserContext
    origin: str
    shots: Path
    blocked: list[str] = field(default_factory=list)
    requested: list[str] = field(default_factory=list)

    def open(self, path: str) -> Any:
        response = self.page.goto(f"{self.origin}{path}")
        assert response is not None and response.status == 200, path
        return response

    def sign_in(self, key: str) -> None:
        self.open("/")
        self.page.fill("#login-key", key)
        self.page.click("#login-form button[type=submit]")
        expect(self.page.locator("#who")).to_be_visible()

    def shot(self, name: str, *, phone: bool = False) -> Path:
        """A full-page screenshot at 1280x800 (or phone width), checking nothing overflows."""
        self.page.set_viewport_size(PHONE if phone else DESKTOP)
        overflow = self.page.evaluate(
            "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{name}: the page is {overflow} px wider than the screen"
        path = self.shots / f"{name}{'-phone' if phone else ''}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.page.set_viewport_size(DESKTOP)
        return path

    def assert_offline_clean(self, key: str) -> None:
        """Nothing but the API's own origin was asked for, and the key was in no URL."""
        assert self.blocked == [], f"requests outside {self.origin}: {self.blocked}"
        assert self.requested and all(key not in url for url in self.requested)


@pytest.fixture
def tab(browser: Browser, console: Console, tmp_path: Path) -> Iterator[Tab]:
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    tab = Tab(page=context.new_page(), context=context, origin=console.url, shots=shots)

    def only_own_origin(route: Route, request: Request) -> None:
        tab.requested.append(request.url)
        if request.url.startswith(f"{console.url}/"):
            route.continue_()
        else:
            tab.blocked.append(request.url)
            route.abort()

    context.route("**/*", only_own_origin)
    tab.page.on("pageerror", lambda error: tab.blocked.append(f"page error: {error}"))
    yield tab
    context.close()


def _gate_rows(page: Page) -> dict[str, list[str]]:
    rows = page.locator("#gates-table tbody tr")
    out = {}
    for i in range(rows.count()):
        cells = [c.strip() for c in rows.nth(i).locator("td").all_inner_texts()]
        out[cells[0] if cells[1] == "—" else f"{cells[0]} {cells[1]}"] = cells
    return out


# -- the tests -----------------------------------------------------------------------------------
def test_a_viewer_reads_models_and_a_refused_promotion_and_cannot_promote(
    console: Console, tab: Tab
) -> None:
    page = tab.page
    response = tab.open("/console/")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert page.locator("#login").is_visible() and not page.locator("#content").is_visible()
    tab.sign_in(console.keys[Role.viewer])
    expect(page.locator("#who-name")).to_have_text("test-viewer (viewer)")
    row = page.locator("#models-table tbody tr", has_text=MODEL)
    expect(row).to_contain_text("v2")  # production
    expect(row).to_contain_text("✗ FAILED")
    expect(row).to_contain_text("AP may drop at most 0.02")
    expect(row).to_contain_text(f"p95 on {TARGET} at most 1.5× production's")
    tab.shot("models")
    tab.shot("models", phone=True)

    row.get_by_role("link", name=MODEL).click()
    expect(page.locator("#versions-table tbody tr")).to_have_count(4)
    stages = page.locator("#versions-table tbody tr td:nth-child(2)").all_inner_texts()
    assert [s.split()[-1] for s in stages] == ["none", "none", "production", "archived"]
    timeline = page.locator("#timeline li").all_inner_texts()
    assert any("promotion.fail v3" in t and "production=v2 → production=v2" in t for t in timeline)
    assert any("promotion.apply v2" in t for t in timeline)
    assert page.locator("[data-action]").count() == 0  # no promote or rollback for a viewer
    tab.shot("model")
    tab.shot("model", phone=True)

    page.locator("#promotions-table tbody tr", has_text="FAILED").get_by_role("link").click()
    expect(page.locator("#promotion-state")).to_contain_text("✗ FAILED")
    gates = _gate_rows(page)
    assert set(gates) == {"integrity", "max_ap_drop", f"max_p95_ratio {TARGET}"}
    assert gates["integrity"][7] == "✓ PASS"
    ap_gate = gates["max_ap_drop"]
    assert ap_gate[2:8] == ["bbox/AP", "0.0010", "0.2267", "0.0200", "—", "✗ FAIL"]
    assert ap_gate[8] == (
        "AP 0.0010 is 0.2257 below production v2's 0.2267; the policy allows a drop of 0.0200 "
        "(exceeded by 0.2057)"
    )
    latency = gates[f"max_p95_ratio {TARGET}"]
    assert latency[3:8] == ["172.4 ms", "265.9 ms", "1.50×", "—", "✓ PASS"]
    assert "ratio 0.65, within 1.50" in latency[8]
    evidence = page.locator("#evidence-table tbody tr")
    expect(evidence).to_have_count(4)  # evaluate + benchmark of candidate v3 and baseline v2
    run_link = evidence.first.locator("a", has_text="MLflow")
    assert run_link.get_attribute("href").startswith(f"{MLFLOW_UI}/#/runs/")
    assert page.locator("[data-action]").count() == 0
    tab.shot("promotion")
    tab.shot("promotion", phone=True)

    # The buttons are absent, and a request forged in the page is refused by the server.
    status = page.evaluate(
        """() => window.detrforge.post(
            "/models/shelf-detector/versions/4/promotions", {to: "staging", reason: "forged"}
        ).then(() => 200, (error) => error.status)"""
    )
    assert status == 403
    expect(page.locator("#banner")).to_contain_text("403 PERMISSION_DENIED")
    expect(page.locator("#banner")).to_contain_text("needs the operator role")
    rollback = page.evaluate(
        """() => window.detrforge.post("/models/shelf-detector/rollback", {reason: "forged"})
            .then(() => 200, (error) => error.status)"""
    )
    assert rollback == 403
    assert console.call("GET", f"/models/{MODEL}", Role.viewer)["production_version"] == 2
    tab.assert_offline_clean(console.keys[Role.viewer])


def test_an_operator_requests_a_staging_promotion_and_watches_it_finish(
    console: Console, tab: Tab
) -> None:
    page = tab.page
    tab.sign_in(console.keys[Role.operator])
    tab.open(f"/console/models/{MODEL}")
    assert page.locator("[data-action=rollback]").count() == 0  # rollback needs approver
    console.runner.release.clear()  # the evidence stays "submitted" until released
    try:
        page.locator("#versions-table tbody tr", has_text="v4").get_by_role("button").click()
        dialog = page.locator("dialog")
        assert dialog.locator("select[name=to] option").all_inner_texts() == ["staging"]
        dialog.locator("textarea[name=reason]").fill("candidate for the shelf pilot")
        dialog.get_by_role("button", name="Request promotion").click()
        page.wait_for_url(re.compile(r"/console/promotions/"))
        expect(page.locator("#promotion-state")).to_contain_text("⟳ RUNNING")
        expect(page.locator("#promotion-state")).to_contain_text("updating live")
        expect(page.locator("#evidence-table")).to_contain_text("submitted")
        tab.shot("promotion-running")
    finally:
        console.runner.release.set()
    # No reload: the page polls the promotion until it ends.
    expect(page.locator("#promotion-state")).to_contain_text("✓ APPLIED", timeout=20_000)
    gates = _gate_rows(page)
    assert {name: cells[7] for name, cells in gates.items()} == {
        "integrity": "✓ PASS",
        "max_ap_drop": "✓ PASS",
        f"max_p95_ratio {TARGET}": "✓ PASS",
    }
    assert "AP 0.2301 vs production v2 0.2267: change +0.0034" in gates["max_ap_drop"][8]
    expect(page.locator("#summary")).to_contain_text("candidate for the shelf pilot")
    tab.shot("promotion-applied")
    assert console.call("GET", f"/models/{MODEL}", Role.viewer)["staging_version"] == 4
    tab.assert_offline_clean(console.keys[Role.operator])


def test_the_history_chart_plots_every_record_and_marks_a_pin_change(
    console: Console, tab: Tab
) -> None:
    page = tab.page
    tab.sign_in(console.keys[Role.viewer])
    tab.open("/console/benchmarks")
    records = console.call("GET", "/benchmark-records", Role.viewer, params={"limit": 1000})
    chart = page.locator(f".chart-block[data-target='{TARGET}'] svg.chart")
    expect(chart.locator(".point")).to_have_count(records["total"])
    series = page.locator(f".chart-block[data-target='{TARGET}'] ul.legend li")
    names = series.all_inner_texts()
    assert f"{MODEL} v1 · torch fp32 · 128 px" in [n.strip() for n in names]
    # v1 and v2 were measured under torch 2.13.1 days before the promotions measured them
    # under 2.14.1: the first new point of each series is marked.
    marked = chart.locator(".point.marked")
    expect(marked).to_have_count(2)
    marked.first.hover()
    panel = page.locator(".pins-panel")
    expect(panel).to_contain_text("pins changed: torch 2.13.1 → 2.14.1")
    expect(panel).to_contain_text("rfdetr")
    expect(panel).to_contain_text("1.11.2")
    tab.shot("benchmarks")
    tab.shot("benchmarks", phone=True)

    with page.expect_download() as caught:
        page.click("#csv")
    text = Path(caught.value.path()).read_text()
    lines = text.strip().splitlines()
    assert lines[0].startswith("id,job_id,created_at") and len(lines) == records["total"] + 1

    page.select_option("select[name=metric]", "p99_ms")
    page.fill("input[name=model_name]", "nobody")
    page.click("#filters button[type=submit]")
    expect(page.locator("#charts")).to_contain_text("No benchmark records match.")
    tab.assert_offline_clean(console.keys[Role.viewer])


def test_a_description_with_markup_is_shown_as_text(console: Console, tab: Tab) -> None:
    page = tab.page
    tab.sign_in(console.keys[Role.viewer])
    row = page.locator("#models-table tbody tr", has_text=PROBE)
    expect(row.locator(".description")).to_have_text(PROBE_DESCRIPTION)
    tab.open(f"/console/models/{PROBE}")
    expect(page.locator("#model-description")).to_have_text(PROBE_DESCRIPTION)
    assert page.evaluate("() => window.__pwned") is None
    assert page.locator("#content script, #content img").count() == 0
    tab.assert_offline_clean(console.keys[Role.viewer])


def test_jobs_sweeps_and_audit_pages(console: Console, tab: Tab) -> None:
    page = tab.page
    tab.sign_in(console.keys[Role.operator])
    tab.open("/console/jobs")
    running = page.locator("#jobs-table tbody tr", has_text=console.running_job_id)
    expect(running).to_contain_text("⟳ RUNNING")
    expect(running).to_contain_text("epoch 3/10 · step 24/80 · loss 9.527 · ETA 2 min 5 s")
    expect(page.locator("#jobs-table tbody tr", has_text="evaluate").first).to_contain_text(
        "SUCCEEDED"
    )
    tab.shot("jobs")
    tab.shot("jobs", phone=True)

    running.get_by_role("link").click()
    expect(page.locator("#job-progress progress")).to_have_attribute("value", "24")
    expect(page.locator("#metrics-table")).to_contain_text("bbox/AP")
    expect(page.locator("#log")).to_have_text("(no log lines yet)")
    tab.shot("job")
    page.click("[data-action=cancel]")
    page.locator("dialog").get_by_role("button", name="Cancel the job").click()
    expect(page.locator("#job-state")).to_contain_text("CANCELLING")
    events = console.call("GET", f"/jobs/{console.running_job_id}", Role.viewer)
    assert events["state"] == "CANCELLING"

    tab.open(f"/console/sweeps/{console.sweep_id}")
    scatter = page.locator("#scatter svg.chart")
    expect(scatter.locator(".point")).to_have_count(5)
    expect(scatter.locator(".sla-label")).to_have_text("SLA 200 ms")
    front = page.locator("#trials-table tbody tr", has_text="on the front").all_inner_texts()
    assert [r.split()[0] for r in front] == ["trial_0000", "trial_0001", "trial_0003"]
    scatter.locator(".point[data-trial='trial_0001']").click()
    expect(page.locator("#trial")).to_contain_text("Trial trial_0001")
    expect(page.locator("#trial form")).to_contain_text("Register as a version of")
    tab.shot("sweep")
    tab.shot("sweep", phone=True)

    tab.open("/console/audit")
    expect(page.locator("#audit-table tbody tr").first).to_contain_text("model.create")
    page.fill("input[name=action]", "promotion.fail")
    page.click("#filters button[type=submit]")
    expect(page.locator("#audit-table tbody tr")).to_have_count(1)
    expect(page.locator("#audit-table tbody tr")).to_contain_text("production=v2")
    with page.expect_download() as caught:
        page.click("#csv")
    rows = Path(caught.value.path()).read_text().strip().splitlines()
    assert len(rows) == 2 and "promotion.fail" in rows[1]
    tab.shot("audit")
    tab.shot("audit", phone=True)
    tab.assert_offline_clean(console.keys[Role.operator])


def test_an_approver_must_confirm_what_changes_production(console: Console, tab: Tab) -> None:
    page = tab.page
    tab.sign_in(console.keys[Role.approver])
    tab.open(f"/console/models/{MODEL}")
    page.locator("#versions-table tbody tr", has_text="v3").get_by_role("button").click()
    dialog = page.locator("dialog")
    assert dialog.locator("select[name=to] option").all_inner_texts() == ["staging", "production"]
    confirm = dialog.locator("input[name=confirm]")
    expect(confirm).to_be_hidden()
    dialog.locator("select[name=to]").select_option("production")
    expect(confirm).to_be_visible()
    assert confirm.evaluate("(box) => box.required") is True
    dialog.get_by_role("button", name="Back").click()
    expect(dialog).to_have_count(0)

    # Rolling back always changes production: unconfirmed, the form does not submit; confirmed,
    # the server's answer (no earlier production version of this model) shows in the dialog.
    tab.open(f"/console/models/{PROBE}")
    page.click("[data-action=rollback]")
    dialog.locator("textarea[name=reason]").fill("p95 spike")
    dialog.get_by_role("button", name="Roll back").click()
    assert dialog.locator("input[name=confirm]").evaluate("(box) => box.validity.valueMissing")
    dialog.locator("input[name=confirm]").check()
    dialog.get_by_role("button", name="Roll back").click()
    expect(dialog.locator(".error")).to_contain_text("409 CONFLICT")
    expect(dialog.locator(".error")).to_contain_text("no production version")
    tab.shot("rollback-refused")
    tab.assert_offline_clean(console.keys[Role.approver])
