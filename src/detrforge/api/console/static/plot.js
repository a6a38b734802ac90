// Small SVG charts drawn with DOM calls (no library, no markup parsing): a time series with one
// line per series, and a scatter with a Pareto front and an SLA line. Every point is focusable
// and carries a <title>, so it reads without a mouse and without colour.

const SVG = "http://www.w3.org/2000/svg";
export const PALETTE = ["#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bf8700", "#0a7ea4", "#cf222e", "#57606a"];

const W = 720;
const H = 320;
const M = { top: 16, right: 20, bottom: 44, left: 64 };

export function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function niceStep(span, count) {
  const raw = span / Math.max(1, count);
  const power = 10 ** Math.floor(Math.log10(raw));
  const fraction = raw / power;
  return (fraction < 1.5 ? 1 : fraction < 3 ? 2 : fraction < 7 ? 5 : 10) * power;
}

function ticks(min, max, count) {
  const step = niceStep(max - min, count);
  const out = [];
  for (let value = Math.ceil(min / step) * step; value <= max + step * 1e-9; value += step) out.push(value);
  return out;
}

// Pads a [min, max] domain so single points and flat series still get a visible range.
function domain(values, { zero = false, pad = 0.08 } = {}) {
  let min = Math.min(...values);
  let max = Math.max(...values);
  if (zero) min = Math.min(0, min);
  if (min === max) {
    const delta = Math.abs(min) * 0.1 || 1;
    min -= delta;
    max += delta;
  }
  const span = max - min;
  return [zero && min >= 0 ? min : min - span * pad, max + span * pad];
}

function linear([d0, d1], [r0, r1]) {
  return (value) => r0 + ((value - d0) / (d1 - d0)) * (r1 - r0);
}

function frame(xDomain, yDomain, xTicks, yTicks, xFormat, yFormat, xLabel, yLabel) {
  const x = linear(xDomain, [M.left, W - M.right]);
  const y = linear(yDomain, [H - M.bottom, M.top]);
  const group = svg("g", { class: "axes" });
  for (const value of yTicks) {
    group.append(
      svg("line", { x1: M.left, x2: W - M.right, y1: y(value), y2: y(value), class: "grid" }),
      svg("text", { x: M.left - 6, y: y(value) + 4, "text-anchor": "end" }, yFormat(value)),
    );
  }
  for (const value of xTicks) {
    group.append(
      svg("line", { x1: x(value), x2: x(value), y1: H - M.bottom, y2: H - M.bottom + 4, class: "tick" }),
      svg("text", { x: x(value), y: H - M.bottom + 18, "text-anchor": "middle" }, xFormat(value)),
    );
  }
  group.append(
    svg("line", { x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom, class: "axis" }),
    svg("line", { x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom, class: "axis" }),
    svg("text", { x: (M.left + W - M.right) / 2, y: H - 6, "text-anchor": "middle", class: "label" }, xLabel),
    svg("text", { x: 14, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle", class: "label", transform: `rotate(-90 14 ${(M.top + H - M.bottom) / 2})` }, yLabel),
  );
  return { x, y, group };
}

function point(cx, cy, color, { marked, title, onselect, data }) {
  const shape = marked
    ? svg("rect", { x: cx - 6, y: cy - 6, width: 12, height: 12, transform: `rotate(45 ${cx} ${cy})`, fill: "#fff", stroke: color, "stroke-width": 3, class: "point marked" })
    : svg("circle", { cx, cy, r: 5, fill: color, class: "point" });
  shape.setAttribute("tabindex", "0");
  shape.setAttribute("role", "img");
  shape.setAttribute("aria-label", title);
  for (const [name, value] of Object.entries(data || {})) shape.setAttribute(`data-${name}`, String(value));
  shape.append(svg("title", {}, title));
  if (onselect) {
    for (const type of ["mouseenter", "focus", "click"]) shape.addEventListener(type, onselect);
    shape.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") onselect(event);
    });
  }
  return shape;
}

// Time ticks on whole seconds, minutes, hours or days, about `count` of them.
const TIME_STEPS = [1, 5, 15, 30, 60, 300, 900, 1800, 3600, 10800, 21600, 43200, 86400, 172800, 604800, 2592000].map((s) => s * 1000);

function timeTicks(t0, t1, count) {
  const step = TIME_STEPS.find((s) => (t1 - t0) / s <= count) || TIME_STEPS[TIME_STEPS.length - 1];
  const out = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
  return { out, step };
}

function dateFormat(step) {
  if (step >= 86400000) return (ms) => new Date(ms).toISOString().slice(5, 10);
  if (step >= 60000) return (ms) => new Date(ms).toISOString().slice(5, 16).replace("T", " ");
  return (ms) => new Date(ms).toISOString().slice(11, 19);
}

// series: [{name, color, points: [{t (ms), y, marked, title, onselect, data}]}]
export function timeChart(series, { yLabel }) {
  const all = series.flatMap((s) => s.points);
  const [t0, t1] = domain(all.map((p) => p.t), { pad: 0.04 });
  const yDomain = domain(all.map((p) => p.y), { zero: true });
  const { out: xTicks, step } = timeTicks(t0, t1, 6);
  const { x, y, group } = frame([t0, t1], yDomain, xTicks, ticks(...yDomain, 5), dateFormat(step), (v) => `${+v.toFixed(1)}`, "time (UTC)", yLabel);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "group" }, group);
  for (const s of series) {
    const sorted = [...s.points].sort((a, b) => a.t - b.t);
    if (sorted.length > 1) {
      root.append(svg("polyline", { points: sorted.map((p) => `${x(p.t)},${y(p.y)}`).join(" "), fill: "none", stroke: s.color, "stroke-width": 2, class: "series" }));
    }
    for (const p of sorted) root.append(point(x(p.t), y(p.y), s.color, p));
  }
  // Marked points last, so a point measured at the same moment never hides one.
  for (const marked of [...root.querySelectorAll(".point.marked")]) root.append(marked);
  return root;
}

// points: [{x: p95, y: AP, color, title, onselect, data}]; front: the same points, in order;
// sla: the latency SLA in ms or null.
export function scatterChart(points, { front = [], sla = null, xLabel, yLabel }) {
  const xs = points.map((p) => p.x).concat(sla ? [sla] : []);
  const xDomain = domain(xs, { zero: true });
  const yDomain = domain(points.map((p) => p.y), { zero: true });
  const { x, y, group } = frame(xDomain, yDomain, ticks(...xDomain, 6), ticks(...yDomain, 5), (v) => `${+v.toFixed(1)}`, (v) => `${+v.toFixed(3)}`, xLabel, yLabel);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "group" }, group);
  if (sla) {
    root.append(
      svg("line", { x1: x(sla), x2: x(sla), y1: M.top, y2: H - M.bottom, class: "sla" }),
      svg("text", { x: x(sla) + 4, y: M.top + 12, class: "sla-label" }, `SLA ${sla} ms`),
    );
  }
  if (front.length > 1) {
    root.append(svg("polyline", { points: front.map((p) => `${x(p.x)},${y(p.y)}`).join(" "), fill: "none", class: "front" }));
  }
  for (const p of points) root.append(point(x(p.x), y(p.y), p.color, p));
  return root;
}

// A legend as HTML: each series' colour swatch next to its name (the name carries the meaning).
export function legend(series, extra) {
  const list = document.createElement("ul");
  list.className = "legend";
  for (const s of series) {
    const item = document.createElement("li");
    const swatch = svg("svg", { width: 14, height: 14, "aria-hidden": "true" }, svg("circle", { cx: 7, cy: 7, r: 6, fill: s.color }));
    item.append(swatch, document.createTextNode(` ${s.name}`));
    list.append(item);
  }
  for (const text of extra || []) {
    const item = document.createElement("li");
    item.textContent = text;
    list.append(item);
  }
  return list;
}
