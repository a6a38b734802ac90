// Benchmark history: latency over time per target, one series per version (or checkpoint) and
// backend, pins on hover, a diamond where a point's pins differ from the point before it.

import { download, el, empty, fmtMs, fmtTime, get, link, paths, replace, row, short, start, table } from "../console.js";
import { PALETTE, legend, timeChart } from "../plot.js";

const form = document.getElementById("filters");
const LABELS = { p50_ms: "p50 latency (ms)", p95_ms: "p95 latency (ms)", p99_ms: "p99 latency (ms)" };

function filters() {
  const data = new FormData(form);
  const since = data.get("since");
  const until = data.get("until");
  return {
    target: data.get("target"),
    model_name: String(data.get("model_name") || "").trim(),
    backend: String(data.get("backend") || "").trim(),
    since: since ? `${since}T00:00:00Z` : "",
    until: until ? `${until}T23:59:59Z` : "",
  };
}

function seriesName(r) {
  const who = r.model_name && r.model_version ? `${r.model_name} v${r.model_version}` : `sha ${r.checkpoint_sha256.slice(0, 12)}`;
  return `${who} · ${r.backend} ${r.precision} · ${r.resolution} px`;
}

// What changed in the pins since the previous point of the series ("torch 2.13.1 → 2.14.1").
function pinChanges(previous, r) {
  if (!previous) return [];
  const keys = new Set([...Object.keys(previous.environment || {}), ...Object.keys(r.environment || {})]);
  const changes = [];
  for (const key of [...keys].sort()) {
    const a = (previous.environment || {})[key];
    const b = (r.environment || {})[key];
    if (String(a) !== String(b)) changes.push(`${key} ${a ?? "—"} → ${b ?? "—"}`);
  }
  return changes;
}

function pinsPanel(panel, r, changes, metric) {
  replace(
    panel,
    el("h3", {}, seriesName(r)),
    el("p", {}, `${fmtTime(r.created_at)} · p50 ${fmtMs(r.p50_ms)} · p95 ${fmtMs(r.p95_ms)} · p99 ${fmtMs(r.p99_ms)} (${metric.replace("_ms", "")} plotted)`),
    // A segmentation model's mask decoding, timed apart from the model.
    r.mask_p95_ms !== null && r.mask_p95_ms !== undefined ? el("p", {}, `mask decoding: p50 ${fmtMs(r.mask_p50_ms)} · p95 ${fmtMs(r.mask_p95_ms)} · p99 ${fmtMs(r.mask_p99_ms)}`) : null,
    changes.length ? el("p", { class: "changed" }, "◆ pins changed: ", changes.join("; ")) : null,
    el("p", {}, "job ", link(paths.job(r.job_id), r.job_id), r.node_id ? ` · node ${r.node_id}` : "", ` · sha256 `, short(r.checkpoint_sha256)),
    el(
      "dl",
      { class: "pins" },
      Object.entries(r.environment || {}).map(([key, value]) => [el("dt", {}, key), el("dd", {}, String(value))]),
    ),
  );
}

function chartFor(target, records, metric) {
  const bySeries = new Map();
  for (const r of [...records].sort((a, b) => a.created_at.localeCompare(b.created_at))) {
    const name = seriesName(r);
    if (!bySeries.has(name)) bySeries.set(name, []);
    bySeries.get(name).push(r);
  }
  const panel = el("div", { class: "panel pins-panel", "aria-live": "polite" }, el("p", { class: "muted" }, "Hover or focus a point to see its pins."));
  let marked = 0;
  const series = [...bySeries.entries()].map(([name, rs], i) => {
    const color = PALETTE[i % PALETTE.length];
    const points = rs.map((r, j) => {
      const changes = pinChanges(rs[j - 1], r);
      if (changes.length) marked += 1;
      return {
        t: Date.parse(r.created_at),
        y: r[metric],
        marked: changes.length > 0,
        title: `${name}: ${metric.replace("_ms", "")} ${Number(r[metric]).toFixed(1)} ms at ${fmtTime(r.created_at)}${changes.length ? `; pins changed: ${changes.join("; ")}` : ""}`,
        data: { record: r.id, marked: changes.length > 0 },
        onselect: () => pinsPanel(panel, r, changes, metric),
      };
    });
    return { name, color, points };
  });
  return el(
    "section",
    { class: "chart-block", "data-target": target },
    el("h2", {}, `Target ${target}`),
    el("div", { class: "chart-wrap" }, timeChart(series, { yLabel: LABELS[metric] })),
    legend(series, marked ? [`◆ ${marked} point(s) whose pins differ from the previous point of their series`] : []),
    panel,
  );
}

async function render() {
  const metric = new FormData(form).get("metric") || "p95_ms";
  const query = { ...filters(), limit: 1000 };
  const { items, total } = await get("/benchmark-records", query);
  if (!items.length) {
    replace("charts", empty("No benchmark records match."));
    replace("records");
    return;
  }
  const byTarget = new Map();
  for (const r of items) {
    if (!byTarget.has(r.target)) byTarget.set(r.target, []);
    byTarget.get(r.target).push(r);
  }
  replace(
    "charts",
    [...byTarget.entries()].map(([target, rs]) => chartFor(target, rs, metric)),
    total > items.length ? el("p", { class: "muted" }, `Showing the newest ${items.length} of ${total} records; narrow the filters.`) : null,
  );
  replace(
    "records",
    table(
      ["Time", "Target", "Series", "p50", "p95", "p99", "masks p95", "torch", "rfdetr", "Job"],
      items.map((r) =>
        row(fmtTime(r.created_at), r.target, seriesName(r), fmtMs(r.p50_ms), fmtMs(r.p95_ms), fmtMs(r.p99_ms), r.mask_p95_ms === null || r.mask_p95_ms === undefined ? "—" : fmtMs(r.mask_p95_ms), String((r.environment || {}).torch ?? "—"), String((r.environment || {}).rfdetr ?? "—"), link(paths.job(r.job_id), r.job_id)),
      ),
      { id: "records-table" },
    ),
  );
}

async function fillTargets() {
  const { items } = await get("/hardware-targets");
  const select = form.elements.namedItem("target");
  for (const t of items) select.append(el("option", { value: t.name }, t.name));
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  render().catch(() => {});
});
document.getElementById("csv").addEventListener("click", () => {
  download("/benchmark-records", { ...filters(), limit: 1000, format: "csv" }, "benchmark-records.csv").catch(() => {});
});

start(async () => {
  await fillTargets();
  await render();
});
