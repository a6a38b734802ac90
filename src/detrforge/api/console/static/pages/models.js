// Models: every registered model, its production and staging versions, its gate policy in
// words and the verdict of its latest promotion.

import { badge, el, empty, get, link, paths, replace, row, start, table } from "../console.js";
import { policyWords } from "../words.js";

async function latestPromotion(name) {
  const { items } = await get(`/models/${encodeURIComponent(name)}/promotions`);
  return items[0] || null;
}

async function render() {
  const { items, total } = await get("/models", { limit: 1000 });
  if (!items.length) {
    replace("models", empty("No models yet: create one with `detrforge models create NAME`."));
    return;
  }
  const latest = await Promise.all(items.map((m) => latestPromotion(m.name)));
  const rows = items.map((model, i) => {
    const promotion = latest[i];
    return row(
      link(paths.model(model.name), model.name),
      el("span", { class: "description" }, model.description || "—"),
      model.production_version ? `v${model.production_version}` : "—",
      model.staging_version ? `v${model.staging_version}` : "—",
      el("ul", { class: "policy compact" }, policyWords(model.policy).map((w) => el("li", {}, w))),
      promotion
        ? el(
            "span",
            {},
            link(paths.promotion(promotion.id), badge(promotion.state)),
            ` v${promotion.version} → ${promotion.to_stage}`,
            promotion.message ? el("div", { class: "detail" }, promotion.message) : null,
          )
        : "none yet",
    );
  });
  replace(
    "models",
    table(["Model", "Description", "Production", "Staging", "Gate policy", "Latest promotion"], rows, { id: "models-table" }),
    total > items.length ? el("p", { class: "muted" }, `Showing ${items.length} of ${total}.`) : null,
  );
}

start(render);
