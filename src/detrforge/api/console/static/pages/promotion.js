// A promotion: its state, live while it runs; each gate with its figures and the sentence that
// explains it; the evidence jobs and their MLflow runs.

import { promoteButton, rollbackButton } from "../actions.js";
import {
  badge, el, empty, every, fmtNumber, fmtTime, get, link, mlflowRun, paths, replace, resource, row, short, start, table,
} from "../console.js";
import { extraFigures, gateFigure, interval, outcome } from "../words.js";

const ACTIVE = new Set(["pending", "running"]);

function evidenceLinks(evidence) {
  const out = [];
  for (const role of ["candidate", "baseline"]) {
    const item = evidence && evidence[role];
    if (!item || typeof item !== "object") continue;
    const parts = [];
    if (item.job_id) parts.push(link(paths.job(item.job_id), item.job_id));
    if (item.mlflow_run_id) parts.push(mlflowRun(item.mlflow_run_id));
    if (item.reused) parts.push("(reused)");
    if (parts.length) out.push(el("div", {}, `${role}: `, parts.map((p, i) => [i ? " " : "", p])));
  }
  if (evidence && evidence.registered) out.push(el("div", {}, "registered sha256 ", short(evidence.registered)));
  return out.length ? out : "—";
}

function figures(gate) {
  const extra = extraFigures(gate);
  if (!extra.length) return null;
  return el(
    "dl",
    { class: "figures" },
    extra.map(([key, value]) => [el("dt", {}, key), el("dd", {}, typeof value === "object" ? JSON.stringify(value) : fmtNumber(value))]),
  );
}

function gateRows(gates) {
  return gates.map((g) => {
    const verdict = outcome(g);
    const tr = row(
      g.gate,
      g.target || "—",
      el("span", { class: "mono" }, g.metric),
      gateFigure(g, "candidate"),
      gateFigure(g, "baseline"),
      gateFigure(g, "threshold"),
      interval(g) || "—",
      badge(verdict),
      el("span", {}, el("span", { class: "detail" }, g.detail), figures(g)),
      el("span", {}, evidenceLinks(g.evidence)),
    );
    tr.className = `gate ${verdict}`;
    tr.dataset.gate = g.gate;
    return tr;
  });
}

function evidenceRows(items) {
  return items.map((e) =>
    row(
      e.role,
      e.kind,
      e.target || "—",
      `v${e.version}`,
      badge(e.state === "done" ? "succeeded" : e.state),
      e.kind === "evaluate" ? (e.ap !== undefined && e.ap !== null ? `AP ${fmtNumber(e.ap)}` : "—") : e.p95_ms ? `p95 ${Number(e.p95_ms).toFixed(1)} ms` : "—",
      e.job_id ? link(paths.job(e.job_id), e.job_id) : "—",
      mlflowRun(e.mlflow_run_id),
      // What was measured when it is not the checkpoint: the shipped variant's artifact.
      [e.reused ? "reused" : "", e.artifact ? `${e.artifact.variant} ${e.artifact.sha256.slice(0, 12)}` : ""]
        .filter(Boolean)
        .join("; "),
    ),
  );
}

let actionsShown = false;

async function render() {
  const p = await get(`/promotions/${encodeURIComponent(resource)}`);
  const model = document.getElementById("model-link");
  model.textContent = p.model_name;
  model.href = paths.model(p.model_name);
  replace(
    "summary",
    el(
      "dl",
      { class: "summary" },
      el("dt", {}, "State"), el("dd", { id: "promotion-state" }, badge(p.state), ACTIVE.has(p.state) ? " (updating live)" : ""),
      el("dt", {}, "Version"), el("dd", {}, link(paths.model(p.model_name), p.model_name), ` v${p.version}: ${p.from_stage} → ${p.to_stage}`),
      el("dt", {}, "Baseline"), el("dd", {}, p.baseline_version ? `production v${p.baseline_version}` : "none (no production version)"),
      el("dt", {}, "Requested by"), el("dd", {}, p.actor, " at ", fmtTime(p.created_at)),
      el("dt", {}, "Reason"), el("dd", { class: "reason" }, p.reason || "—"),
      el("dt", {}, "Finished"), el("dd", {}, fmtTime(p.finished_at)),
      el("dt", {}, "Outcome"), el("dd", { id: "promotion-message", class: "detail" }, p.message || (ACTIVE.has(p.state) ? "gathering evidence…" : "—")),
    ),
  );
  replace(
    "gates",
    p.gate_results.length
      ? table(["Gate", "Target", "Metric", "Candidate", "Baseline", "Threshold", "Interval", "Outcome", "Why", "Evidence"], gateRows(p.gate_results), { id: "gates-table" })
      : empty(ACTIVE.has(p.state) ? "The gates run once the evidence is in." : "No gate results."),
  );
  replace(
    "evidence",
    p.evidence.length
      ? table(["Role", "Kind", "Target", "Version", "State", "Figure", "Job", "MLflow run", ""], evidenceRows(p.evidence), { id: "evidence-table" })
      : empty("No evidence jobs (no gates needed any)."),
  );
  if (!actionsShown && !ACTIVE.has(p.state)) {
    actionsShown = true;
    replace("actions", p.state === "failed" ? promoteButton(p.model_name, p.version) : null, rollbackButton(p.model_name));
  }
  return ACTIVE.has(p.state);
}

start(async () => {
  if (await render()) every(1000, render);
});
