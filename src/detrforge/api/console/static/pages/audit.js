// The audit log: filters (model, action, actor, time range), pages of 100, CSV export.

import { download, el, empty, fmtTime, get, link, paths, replace, row, start, table } from "../console.js";

const form = document.getElementById("filters");
const PAGE = 100;
let offset = 0;

function filters() {
  const data = new FormData(form);
  const text = (name) => String(data.get(name) || "").trim();
  const since = text("since");
  const until = text("until");
  return {
    model: text("model"),
    action: text("action"),
    actor: text("actor"),
    since: since ? `${since}T00:00:00Z` : "",
    until: until ? `${until}T23:59:59Z` : "",
  };
}

async function render() {
  const { items, total } = await get("/audit", { ...filters(), limit: PAGE, offset });
  replace(
    "audit",
    items.length
      ? table(
          ["When", "Actor", "Action", "Model", "Version", "Before", "After", "Reason", "Request"],
          items.map((e) =>
            row(
              fmtTime(e.at),
              e.actor,
              e.action,
              e.model_name ? link(paths.model(e.model_name), e.model_name) : "—",
              e.version ? `v${e.version}` : "—",
              e.before || "—",
              e.after || "—",
              el("span", { class: "reason" }, e.reason || ""),
              el("span", { class: "mono" }, e.request_id || ""),
            ),
          ),
          { id: "audit-table" },
        )
      : empty("No audit events match."),
  );
  const pager = [];
  if (offset > 0) pager.push(el("button", { type: "button", onclick: () => go(Math.max(0, offset - PAGE)) }, "← Previous page"));
  pager.push(el("span", {}, ` ${total ? offset + 1 : 0}–${offset + items.length} of ${total} `));
  if (offset + items.length < total) pager.push(el("button", { type: "button", onclick: () => go(offset + PAGE) }, "Next page →"));
  replace("pager", pager);
}

function go(to) {
  offset = to;
  render().catch(() => {});
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  go(0);
});
document.getElementById("csv").addEventListener("click", () => {
  download("/audit", { ...filters(), limit: 1000, offset, format: "csv" }, "audit.csv").catch(() => {});
});

start(render);
