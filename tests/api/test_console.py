"""The web console in a real browser: Playwright driving Debian's headless chromium against the
API served by a real uvicorn server on a loopback port, seeded as ``fixtures_console`` says.

The browser may reach the API's own origin only: every other request is aborted and recorded,
and each test asserts none was attempted (nor any page error), and that the key was in no URL.
Screenshots of every page, at 1280x800 and at phone width, go to the test's tmp dir.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Request,
    Route,
    expect,
    sync_playwright,
)

from detrforge.api.console import CONTENT_SECURITY_POLICY
from detrforge.registry.entities import Role
from fixtures_console import MLFLOW_UI, MODEL, PROBE, PROBE_DESCRIPTION, TARGET, Console

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
# Generous waits: in CI another worker trains models on the same two cores.
expect.set_options(timeout=15_000)

if not Path(CHROMIUM).exists():
    if os.environ.get("CI") == "true":
        pytest.fail(
            "CI=true but Debian's chromium is not installed (.ci/run installs it)", pytrace=False
        )
    pytest.skip(
        "Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True
    )


# -- the browser ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Debian's chromium: Playwright's own browser download is never used.
    with sync_playwright() as playwright:
        yield playwright.chromium.launch(executable_path=CHROMIUM, headless=True)


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
    context.set_default_timeout(30_000)
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
    # A paired run: the p95 ratio's interval (the fixture's figures, ratio x 1 -/+ 5%).
    assert latency[3:8] == ["172.4 ms", "265.9 ms", "1.50×", "[0.616, 0.681] (95%)", "✓ PASS"]
    assert "0.65 [0.62, 0.68] is within 1.50" in latency[8]
    evidence = page.locator("#evidence-table tbody tr")
    # the evaluations of candidate v3 and baseline v2, then one paired benchmark
    expect(evidence).to_have_count(3)
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


def test_a_gate_with_an_interval_and_an_inconclusive_verdict_reads_as_such(tab: Tab) -> None:
    # The paired latency gate (issue #12) adds an outcome, an interval and both arms' figures to
    # a gate result; the promotion page renders them when present, and nothing breaks without.
    tab.open("/console/")
    shown = tab.page.evaluate(
        """async () => {
            const words = await import("/console/static/words.js");
            const core = await import("/console/static/console.js");
            const gate = {
                gate: "max_p95_ratio", target: "cpu-local", metric: "latency_ms/p95",
                candidate: 290.1, baseline: 259.0, threshold: 1.2, passed: false,
                outcome: "inconclusive", interval: {low: 0.91, high: 1.41, level: 0.95},
                detail: "inconclusive: p95 ratio 1.12 [0.91, 1.41] straddles 1.20", cv: 0.18,
            };
            const plain = {gate: "ap_floor", metric: "bbox/AP", candidate: 0.3, passed: true};
            return {
                outcome: [words.outcome(gate), words.outcome(plain)],
                interval: [words.interval(gate), words.interval({interval: [0.9, 1.1]}),
                           words.interval(plain)],
                figures: [words.gateFigure(gate, "candidate"), words.gateFigure(gate, "threshold"),
                          words.gateFigure(plain, "candidate")],
                extra: words.extraFigures(gate).map(([name]) => name),
                badge: core.badge(words.outcome(gate)).textContent,
            };
        }"""
    )
    assert shown == {
        "outcome": ["inconclusive", "pass"],
        "interval": ["[0.910, 1.410] (95%)", "[0.900, 1.100]", None],
        "figures": ["290.1 ms", "1.20×", "0.3000"],
        "extra": ["cv"],
        "badge": "? INCONCLUSIVE",
    }


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
