// A sweep: the AP / p95 scatter of its trials with the Pareto front and the SLA line; a trial
// opens its details and, for operators, a form to register it as a model version.

import {
  ApiError, badge, can, el, empty, every, fmtMs, fmtNumber, get, link, mlflowRun, paths, post, replace, resource, row, short, start, table,
} from "../console.js";
import { PALETTE, scatterChart } from "../plot.js";
import { TERMINAL } from "../words.js";

const base = `/sweeps/${encodeURIComponent(resource)}`;

const ap = (t) => t.best_ap ?? t.ap;
const measured = (t) => typeof ap(t) === "number" && typeof t.p95_ms === "number";

// The trials no other trial beats on both AP (higher) and p95 (lower), fastest first.
function front(trials) {
  const points = trials.filter(measured);
  return points
    .filter((p) => !points.some((q) => ap(q) >= ap(p) && q.p95_ms <= p.p95_ms && (ap(q) > ap(p) || q.p95_ms < p.p95_ms)))
    .sort((a, b) => a.p95_ms - b.p95_ms);
}

function registerForm(trial) {
  if (!can("operator")) return null;
  const result = el("p", { role: "status" });
  const form = el(
    "form",
    { class: "inline-form" },
    el("label", {}, "Register as a version of ", el("input", { name: "model", required: true, maxlength: 128, placeholder: "model name" })),
    el("label", {}, "Description ", el("input", { name: "description", maxlength: 4000 })),
    el("button", { type: "submit" }, "Register"),
    result,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    try {
      const version = await post(`${base}/trials/${encodeURIComponent(trial.trial_id)}/register`, {
        model: String(data.get("model")),
        description: String(data.get("description") || ""),
      });
      replace(result, "✓ registered as ", link(paths.model(version.model_name), `${version.model_name} v${version.version}`));
    } catch (error) {
      replace(result, "✗ ", error instanceof ApiError ? error.message : String(error));
    }
  });
  return form;
}

function showTrial(trial) {
  const panel = document.getElementById("trial");
  panel.hidden = false;
  replace(
    panel,
    el("h3", {}, `Trial ${trial.trial_id}`),
    el(
      "dl",
      { class: "summary" },
      el("dt", {}, "State"), el("dd", {}, badge(trial.state)),
      el("dt", {}, "Model"), el("dd", {}, `${trial.model_size} · ${trial.resolution} px`),
      el("dt", {}, "AP (best)"), el("dd", {}, fmtNumber(ap(trial))),
      el("dt", {}, "p95 / p50"), el("dd", {}, `${fmtMs(trial.p95_ms)} / ${fmtMs(trial.p50_ms)}`),
      el("dt", {}, "Epochs"), el("dd", {}, String(trial.epochs)),
      el("dt", {}, "Searched"), el("dd", { class: "mono" }, JSON.stringify(trial.params)),
      el("dt", {}, "Weights"), el("dd", {}, short(trial.checkpoint_sha256)),
      el("dt", {}, "MLflow"), el("dd", {}, mlflowRun(trial.mlflow_run_id)),
      trial.error ? [el("dt", {}, "Error"), el("dd", { class: "error" }, trial.error)] : null,
    ),
    TERMINAL.has(trial.state) || trial.state === "TERMINATED" ? registerForm(trial) : el("p", { class: "muted" }, "Register it once it has finished."),
  );
}

async function render() {
  const sweep = await get(base);
  const sla = sweep.spec.latency_sla_ms || null;
  replace(
    "summary",
    el(
      "dl",
      { class: "summary" },
      el("dt", {}, "State"), el("dd", {}, badge(sweep.state)),
      el("dt", {}, "Target"), el("dd", {}, sweep.spec.target || "—"),
      el("dt", {}, "Latency SLA"), el("dd", {}, sla ? `${sla} ms` : "none"),
      el("dt", {}, "Trials"), el("dd", {}, `${sweep.trials.length} (${sweep.trials.filter(measured).length} measured)`),
      el("dt", {}, "Job"), el("dd", {}, link(paths.job(sweep.id), sweep.id)),
    ),
  );
  const onFront = front(sweep.trials);
  const frontIds = new Set(onFront.map((t) => t.trial_id));
  const sizes = [...new Set(sweep.trials.map((t) => t.model_size))];
  const toPoint = (t) => ({
    x: t.p95_ms,
    y: ap(t),
    color: PALETTE[sizes.indexOf(t.model_size) % PALETTE.length],
    title: `trial ${t.trial_id}: ${t.model_size} ${t.resolution} px, AP ${fmtNumber(ap(t))}, p95 ${fmtMs(t.p95_ms)}${frontIds.has(t.trial_id) ? " (on the Pareto front)" : ""}`,
    data: { trial: t.trial_id },
    onselect: (event) => {
      if (event.type === "click" || event.type === "keydown") showTrial(t);
    },
  });
  const points = sweep.trials.filter(measured);
  replace(
    "scatter",
    points.length
      ? el("div", { class: "chart-wrap" }, scatterChart(points.map(toPoint), { front: onFront.map(toPoint), sla, xLabel: "p95 latency (ms)", yLabel: sweep.metric === "segm/AP" ? "validation mask AP" : "validation AP" }))
      : empty("No trial has both an AP and a measured p95 yet."),
  );
  replace(
    "trials",
    sweep.trials.length
      ? table(
          ["Trial", "State", "Size", "Resolution", "Epochs", "AP", "p95", "Pareto", ""],
          sweep.trials.map((t) =>
            row(t.trial_id, badge(t.state), t.model_size, `${t.resolution} px`, String(t.epochs), fmtNumber(ap(t)), fmtMs(t.p95_ms), frontIds.has(t.trial_id) ? "on the front" : "", el("button", { type: "button", class: "small", onclick: () => showTrial(t) }, "Details")),
          ),
          { id: "trials-table" },
        )
      : empty("No trials yet."),
  );
  return !TERMINAL.has(sweep.state);
}

start(async () => {
  if (await render()) every(5000, render);
});
