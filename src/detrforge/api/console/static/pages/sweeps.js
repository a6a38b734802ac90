// Sweeps: every sweep with its state, target and SLA.

import { badge, empty, fmtTime, get, link, paths, replace, row, start, table } from "../console.js";

async function render() {
  const { items } = await get("/sweeps", { limit: 200 });
  replace(
    "sweeps",
    items.length
      ? table(
          ["Sweep", "State", "Target", "Latency SLA", "Created by", "Created"],
          items.map((s) =>
            row(link(paths.sweep(s.id), s.id), badge(s.state), s.spec.target || "—", s.spec.latency_sla_ms ? `${s.spec.latency_sla_ms} ms` : "—", s.created_by, fmtTime(s.created_at)),
          ),
          { id: "sweeps-table" },
        )
      : empty("No sweeps yet: submit one with `detrforge sweep submit`."),
  );
}

start(render);
