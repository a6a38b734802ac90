// The console's core: the signed-in key, the REST client, safe DOM building, formatting.
//
// Every string from the API reaches the page as a text node (el() never parses markup), so a
// name, description or reason is shown as typed. The key lives in this tab's sessionStorage and
// is sent only as the Authorization header, the way the CLI sends it; never in a URL.

const KEY_STORAGE = "detrforge.apiKey";
const ROLES = ["viewer", "operator", "approver", "admin"];

export const body = document.body;
export const resource = body.dataset.resource || "";
export const mlflowUi = body.dataset.mlflowUi || "";

let current = null; // {name, role} of the signed-in key

export class ApiError extends Error {
  constructor(status, payload) {
    const code = (payload && payload.code) || "HTTP_ERROR";
    const message = (payload && payload.message) || `HTTP ${status}`;
    super(`${status} ${code}: ${message}`);
    this.status = status;
    this.code = code;
    this.detail = message;
  }
}

// -- DOM -----------------------------------------------------------------------------------------
// el("a", {href, class: "x", onclick: fn}, "text", child, ...): attributes are set one by one,
// children that are strings or numbers become text nodes; null/undefined/false are skipped.
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

export function setAttrs(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
}

export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function replace(target, ...children) {
  const node = typeof target === "string" ? document.getElementById(target) : target;
  node.replaceChildren();
  return append(node, children);
}

// Each cell carries its column's name (data-label): at phone width rows become cards that show it.
export function table(headers, rows, attrs) {
  for (const tr of rows) {
    [...tr.children].forEach((td, i) => td.setAttribute("data-label", headers[i] || ""));
  }
  return el(
    "table",
    attrs,
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows),
  );
}

export function row(...cells) {
  return el("tr", {}, cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c))));
}

export function empty(text) {
  return el("p", { class: "muted" }, text);
}

// -- formatting ----------------------------------------------------------------------------------
export function fmtTime(value) {
  if (!value) return "—";
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  return d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

export function fmtNumber(value, digits = 4) {
  if (value === null || value === undefined) return "—";
  if (typeof value !== "number") return String(value);
  if (!Number.isFinite(value)) return String(value);
  return Number.isInteger(value) ? String(value) : value.toFixed(digits);
}

export function fmtMs(value) {
  return value === null || value === undefined ? "—" : `${Number(value).toFixed(1)} ms`;
}

export function fmtBytes(value) {
  if (value === null || value === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let size = Number(value);
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? size : size.toFixed(1)} ${units[unit]}`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds))) return "—";
  let s = Math.max(0, Math.round(Number(seconds)));
  const h = Math.floor(s / 3600);
  s -= h * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  return h ? `${h} h ${m} min` : m ? `${m} min ${s} s` : `${s} s`;
}

export function short(sha, n = 12) {
  return sha ? el("span", { class: "mono", title: sha }, String(sha).slice(0, n)) : "—";
}

// A verdict or state as a word with an icon: readable without colour.
const BADGES = {
  pass: ["✓", "PASS"],
  fail: ["✗", "FAIL"],
  inconclusive: ["?", "INCONCLUSIVE"],
  applied: ["✓", "APPLIED"],
  failed: ["✗", "FAILED"],
  running: ["⟳", "RUNNING"],
  pending: ["…", "PENDING"],
  succeeded: ["✓", "SUCCEEDED"],
  cancelled: ["■", "CANCELLED"],
  cancelling: ["■", "CANCELLING"],
  production: ["★", "production"],
  staging: ["◐", "staging"],
  archived: ["▫", "archived"],
  none: ["·", "none"],
};

export function badge(value) {
  const key = String(value || "").toLowerCase();
  const [icon, word] = BADGES[key] || ["•", String(value || "—")];
  return el("span", { class: `badge ${key}` }, el("span", { "aria-hidden": "true" }, icon), " ", word);
}

// -- links ---------------------------------------------------------------------------------------
export const paths = {
  model: (name) => `/console/models/${encodeURIComponent(name)}`,
  promotion: (id) => `/console/promotions/${encodeURIComponent(id)}`,
  job: (id) => `/console/jobs/${encodeURIComponent(id)}`,
  sweep: (id) => `/console/sweeps/${encodeURIComponent(id)}`,
};

export function link(href, ...children) {
  return el("a", { href }, ...children);
}

// An MLflow run: a link into the MLflow UI when the server names one, else its id as text.
export function mlflowRun(runId) {
  if (!runId) return "—";
  const label = el("span", { class: "mono" }, String(runId).slice(0, 12));
  if (!mlflowUi) return el("span", { title: runId }, label);
  return el(
    "a",
    { href: `${mlflowUi}/#/runs/${encodeURIComponent(runId)}`, rel: "noopener noreferrer", title: runId },
    "MLflow ",
    label,
  );
}

// -- the signed-in key ---------------------------------------------------------------------------
export function can(role) {
  return current !== null && ROLES.indexOf(current.role) >= ROLES.indexOf(role);
}

export function who() {
  return current;
}

function storedKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

// -- the REST client -----------------------------------------------------------------------------
function url(path, query) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") params.set(name, String(value));
  }
  const search = params.toString();
  return `/api/v1${path}${search ? `?${search}` : ""}`;
}

async function send(method, path, { query, body: payload, as = "json", key } = {}) {
  const headers = { Authorization: `Bearer ${key || storedKey() || ""}` };
  if (payload !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url(path, query), {
    method,
    headers,
    body: payload === undefined ? undefined : JSON.stringify(payload),
    credentials: "omit",
    cache: "no-store",
  });
  if (!response.ok) {
    let parsed = null;
    try {
      parsed = await response.json();
    } catch {
      parsed = null;
    }
    throw new ApiError(response.status, parsed);
  }
  if (as === "text") return response.text();
  if (as === "blob") return response.blob();
  return response.status === 204 ? null : response.json();
}

// request() shows any failure in the banner (a 401 signs out) and rethrows it.
export async function request(method, path, options = {}) {
  try {
    return await send(method, path, options);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      signOut("The key was refused (invalid or revoked); sign in again.");
    } else if (!options.quiet) {
      showError(error);
    }
    throw error;
  }
}

export const get = (path, query, options = {}) => request("GET", path, { ...options, query });
export const post = (path, payload, options = {}) => request("POST", path, { ...options, body: payload });

// Download a CSV export through the authorized client (a plain link could not send the key).
export async function download(path, query, filename) {
  const blob = await request("GET", path, { query, as: "blob" });
  const href = URL.createObjectURL(blob);
  const anchor = el("a", { href, download: filename, hidden: true });
  body.append(anchor);
  anchor.click();
  anchor.remove();
  setTimeout(() => URL.revokeObjectURL(href), 10000);
}

// -- banner --------------------------------------------------------------------------------------
export function showError(error) {
  const banner = document.getElementById("banner");
  const text = error instanceof ApiError ? error.message : `Error: ${error && error.message ? error.message : error}`;
  replace(banner, el("strong", {}, "✗ "), text);
  banner.className = "banner error";
  banner.hidden = false;
}

export function showNotice(text) {
  const banner = document.getElementById("banner");
  replace(banner, text);
  banner.className = "banner notice";
  banner.hidden = false;
}

export function clearBanner() {
  document.getElementById("banner").hidden = true;
}

// -- polling -------------------------------------------------------------------------------------
// Call fn every `ms` until it returns false; stops on a failed request.
export function every(ms, fn) {
  const tick = async () => {
    let again = false;
    try {
      again = await fn();
    } catch {
      again = false;
    }
    if (again) setTimeout(tick, ms);
  };
  setTimeout(tick, ms);
}

// -- start-up ------------------------------------------------------------------------------------
function signOut(message) {
  sessionStorage.removeItem(KEY_STORAGE);
  current = null;
  document.getElementById("content").hidden = true;
  document.getElementById("who").hidden = true;
  const error = document.getElementById("login-error");
  error.hidden = !message;
  error.textContent = message || "";
  document.getElementById("login").hidden = false;
  document.getElementById("login-key").focus();
}

async function enter(render) {
  current = await send("GET", "/whoami");
  document.getElementById("who-name").textContent = `${current.name} (${current.role})`;
  document.getElementById("who").hidden = false;
  document.getElementById("login").hidden = true;
  document.getElementById("content").hidden = false;
  await render();
}

// start(render): sign in if needed, then render the page.
export function start(render) {
  window.detrforge = { get, post, request, who };
  document.getElementById("sign-out").addEventListener("click", () => signOut(""));
  document.getElementById("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("login-key");
    const key = input.value.trim();
    try {
      await send("GET", "/whoami", { key });
    } catch (error) {
      const text = error instanceof ApiError && error.status === 401 ? "That key was refused." : String(error.message);
      signOut(text);
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    input.value = "";
    await enter(render).catch(showError);
  });
  if (!storedKey()) {
    signOut("");
    return;
  }
  enter(render).catch((error) => {
    if (error instanceof ApiError && error.status === 401) signOut("The stored key was refused; sign in again.");
    else showError(error);
  });
}
