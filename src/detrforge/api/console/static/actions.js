// Promote and roll back: buttons shown only to keys whose role allows them, each opening a
// dialog with a reason and, where production changes, an explicit confirmation. The server
// checks the role again on every request; these only spare a user a refused click.

import { can, el, paths, post, showNotice } from "./console.js";

function dialog(title, fields, submitLabel, onSubmit) {
  const error = el("p", { class: "error", role: "alert", hidden: true });
  const form = el(
    "form",
    { method: "dialog", class: "dialog-form" },
    el("h2", {}, title),
    fields,
    error,
    el(
      "div",
      { class: "buttons" },
      el("button", { type: "button", class: "secondary", onclick: () => box.close() }, "Back"),
      el("button", { type: "submit" }, submitLabel),
    ),
  );
  const box = el("dialog", { class: "dialog" }, form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    try {
      await onSubmit(new FormData(form));
      box.close();
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
    }
  });
  box.addEventListener("close", () => box.remove());
  document.body.append(box);
  box.showModal();
  return box;
}

function reasonField() {
  return el(
    "label",
    { class: "block" },
    "Reason (recorded in the audit log)",
    el("textarea", { name: "reason", maxlength: 2000, rows: 3 }),
  );
}

function confirmField(text) {
  return el("label", { class: "confirm" }, el("input", { type: "checkbox", name: "confirm", required: true }), " ", text);
}

// The stages this key may request: staging needs operator, production approver.
export function allowedStages() {
  return ["staging", "production"].filter((stage) => can(stage === "production" ? "approver" : "operator"));
}

export function promoteButton(model, version) {
  const stages = allowedStages();
  if (!stages.length) return null;
  return el(
    "button",
    {
      type: "button",
      class: "small",
      "data-action": "promote",
      onclick: () => openPromote(model, version, stages),
    },
    `Promote v${version}…`,
  );
}

function openPromote(model, version, stages) {
  const select = el(
    "select",
    { name: "to" },
    stages.map((stage) => el("option", { value: stage }, stage)),
  );
  const confirm = confirmField(`I confirm v${version} of ${model} may replace what production serves, once its gates pass.`);
  const sync = () => {
    const production = select.value === "production";
    confirm.hidden = !production;
    confirm.querySelector("input").required = production;
  };
  select.addEventListener("change", sync);
  sync();
  dialog(
    `Promote ${model} v${version}`,
    [el("label", { class: "block" }, "To stage ", select), reasonField(), confirm],
    "Request promotion",
    async (data) => {
      const promotion = await post(
        `/models/${encodeURIComponent(model)}/versions/${version}/promotions`,
        { to: data.get("to"), reason: String(data.get("reason") || "") },
        { quiet: true },
      );
      window.location.assign(paths.promotion(promotion.id));
    },
  );
}

export function rollbackButton(model, onDone) {
  if (!can("approver")) return null;
  return el(
    "button",
    {
      type: "button",
      class: "danger",
      "data-action": "rollback",
      onclick: () =>
        dialog(
          `Roll back ${model}`,
          [
            el("p", {}, "Production returns to the previous production version, without gates."),
            reasonField(),
            confirmField(`I confirm: change what production serves for ${model} now.`),
          ],
          "Roll back",
          async (data) => {
            const version = await post(
              `/models/${encodeURIComponent(model)}/rollback`,
              { reason: String(data.get("reason") || "") },
              { quiet: true },
            );
            showNotice(`✓ ${model}: production is v${version.version} again.`);
            if (onDone) await onDone();
          },
        ),
    },
    "Roll back production…",
  );
}

// Cancel a running job (operator): Ray stops it; the state turns CANCELLED once Ray confirms.
export function cancelButton(job, onDone) {
  if (!can("operator") || job.state === "CANCELLING") return null;
  return el(
    "button",
    {
      type: "button",
      class: "danger",
      "data-action": "cancel",
      onclick: () =>
        dialog(
          `Cancel ${job.kind} job ${job.id}?`,
          [el("p", {}, "Ray stops the job and every worker it started; this cannot be undone.")],
          "Cancel the job",
          async () => {
            await post(`/jobs/${encodeURIComponent(job.id)}/cancel`, undefined, { quiet: true });
            showNotice(`■ Cancel requested for ${job.id}.`);
            if (onDone) await onDone();
          },
        ),
    },
    "Cancel job…",
  );
}
