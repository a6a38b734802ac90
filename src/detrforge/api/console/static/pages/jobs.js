// Jobs: fine-tune, evaluate, benchmark and sweep jobs with live progress, refreshed while any
// of them runs.

import { badge, el, empty, every, fmtTime, get, link, paths, replace, row, start, table } from "../console.js";
import { TERMINAL, progressCell } from "../words.js";

const form = document.getElementById("filters");

async function render() {
  const data = new FormData(form);
  const { items, total } = await get("/jobs", { kind: data.get("kind"), state: data.get("state"), limit: 200 });
  replace(
    "jobs",
    items.length
      ? table(
          ["Job", "Kind", "State", "Progress", "Created by", "Created", "Finished"],
          items.map((j) => row(link(paths.job(j.id), j.id), j.kind, badge(j.state), progressCell(j), j.created_by, fmtTime(j.created_at), fmtTime(j.finished_at))),
          { id: "jobs-table" },
        )
      : empty("No jobs match."),
    total > items.length ? el("p", { class: "muted" }, `Showing the newest ${items.length} of ${total}.`) : null,
  );
  return items.some((j) => !TERMINAL.has(j.state));
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  render().catch(() => {});
});

start(async () => {
  if (await render()) every(3000, render);
});
