// A job: state, live progress (epoch, step, loss, ETA), metrics, its MLflow run, the log tail,
// and Cancel for operators while it runs.

import { cancelButton } from "../actions.js";
import {
  badge, el, empty, every, fmtNumber, fmtTime, get, link, mlflowRun, paths, replace, request, resource, row, short, start, table,
} from "../console.js";
import { TERMINAL, progressCell } from "../words.js";

const base = `/jobs/${encodeURIComponent(resource)}`;
const LOG_LINES = 200;

async function render() {
  const job = await get(base);
  replace(
    "summary",
    el(
      "dl",
      { class: "summary" },
      el("dt", {}, "Kind"), el("dd", {}, job.kind),
      el("dt", {}, "State"), el("dd", { id: "job-state" }, badge(job.state)),
      el("dt", {}, "Progress"), el("dd", { id: "job-progress" }, progressCell(job)),
      el("dt", {}, "Created"), el("dd", {}, job.created_by, " at ", fmtTime(job.created_at)),
      el("dt", {}, "Started / finished"), el("dd", {}, `${fmtTime(job.started_at)} / ${fmtTime(job.finished_at)}`),
      el("dt", {}, "MLflow"), el("dd", {}, mlflowRun(job.mlflow_run_id)),
      job.model_uri ? [el("dt", {}, "Model"), el("dd", {}, short(job.model_sha256), " ", el("span", { class: "mono" }, job.model_uri))] : null,
      job.kind === "sweep" ? [el("dt", {}, "Sweep"), el("dd", {}, link(paths.sweep(job.id), "accuracy / latency scatter"))] : null,
      job.error ? [el("dt", {}, "Error"), el("dd", { class: "error" }, job.error)] : null,
    ),
  );
  replace("actions", TERMINAL.has(job.state) ? null : cancelButton(job, render));
  const metrics = Object.entries(job.metrics || {}).sort(([a], [b]) => a.localeCompare(b));
  replace(
    "metrics",
    metrics.length
      ? table(["Metric", "Value"], metrics.map(([k, v]) => row(el("span", { class: "mono" }, k), fmtNumber(v))), { id: "metrics-table" })
      : empty("No metrics yet."),
  );
  const log = await request("GET", `${base}/logs`, { query: { tail: LOG_LINES }, as: "text", quiet: true }).catch(
    (error) => `(no log: ${error.message})`,
  );
  document.getElementById("log").textContent = log || "(no log lines yet)";
  return !TERMINAL.has(job.state);
}

start(async () => {
  if (await render()) every(2000, render);
});
