// A model: versions with lineage, its promotions, and its stage timeline from the audit log.

import { promoteButton, rollbackButton } from "../actions.js";
import {
  badge, el, empty, fmtBytes, fmtTime, get, link, mlflowRun, paths, replace, resource, row, short, start, table,
} from "../console.js";
import { policyWords } from "../words.js";

const name = resource;
const base = `/models/${encodeURIComponent(name)}`;
const STAGE_ACTIONS = ["version.register", "promotion.request", "promotion.apply", "promotion.fail", "promotion.reject", "rollback", "policy.set"];

function source(version) {
  if (version.source_trial_id && version.source_job_id) {
    return el("span", {}, link(paths.sweep(version.source_job_id), version.source_job_id), ` trial ${version.source_trial_id}`);
  }
  if (version.source_job_id) return link(paths.job(version.source_job_id), version.source_job_id);
  return "checkpoint";
}

async function render() {
  const [model, versions, promotions, audit] = await Promise.all([
    get(base),
    get(`${base}/versions`),
    get(`${base}/promotions`),
    get("/audit", { model: name, limit: 1000 }),
  ]);
  document.getElementById("model-description").textContent = model.description || "";
  replace("policy", policyWords(model.policy).map((w) => el("li", {}, w)));
  replace("actions", rollbackButton(name, render));

  const rows = versions.items.map((v) =>
    row(
      `v${v.version}`,
      badge(v.stage),
      short(v.checkpoint_sha256),
      fmtBytes(v.checkpoint_bytes),
      `${v.model_size} · ${v.resolution} px`,
      el("span", { class: "classes" }, (v.class_names || []).join(", ") || "—"),
      source(v),
      mlflowRun(v.mlflow_run_id),
      short(v.dataset_fingerprint),
      el("span", {}, v.created_by, el("br"), fmtTime(v.created_at)),
      el("span", { class: "description" }, v.description || ""),
      ["none", "archived", "staging"].includes(v.stage) ? promoteButton(name, v.version) : null,
    ),
  );
  replace(
    "versions",
    rows.length
      ? table(["Version", "Stage", "sha256", "Size", "Size · resolution", "Classes", "Source", "MLflow", "Dataset", "Created", "Description", ""], rows, { id: "versions-table" })
      : empty("No versions yet: register one with `detrforge versions register`."),
  );

  replace(
    "promotions",
    promotions.items.length
      ? table(
          ["Promotion", "Version", "To", "State", "Actor", "Reason", "Requested", "Outcome"],
          promotions.items.map((p) =>
            row(link(paths.promotion(p.id), p.id), `v${p.version}`, p.to_stage, badge(p.state), p.actor, p.reason || "—", fmtTime(p.created_at), el("span", { class: "detail" }, p.message || "")),
          ),
          { id: "promotions-table" },
        )
      : empty("No promotions yet."),
  );

  const events = audit.items.filter((e) => STAGE_ACTIONS.includes(e.action));
  replace(
    "timeline",
    events.length
      ? events.map((e) =>
          el(
            "li",
            { class: `event ${e.action.replace(/\W/g, "-")}` },
            el("time", { datetime: e.at }, fmtTime(e.at)),
            " ",
            el("strong", {}, e.action),
            e.version ? ` v${e.version}` : "",
            e.before || e.after ? ` ${e.before || "—"} → ${e.after || "—"}` : "",
            ` by ${e.actor}`,
            e.reason ? el("div", { class: "reason" }, `“${e.reason}”`) : null,
          ),
        )
      : el("li", { class: "muted" }, "No stage changes yet."),
  );
}

start(render);
