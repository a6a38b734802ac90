// The registry in words: a gate policy, a gate's outcome, a job's progress, as the pages say
// them.

import { el, fmtDuration, fmtNumber } from "./console.js";

export const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);

// One sentence per check of a gate policy ({} or null: no gates).
export function policyWords(policy) {
  if (!policy || Object.keys(policy).length === 0) {
    return ["No gates: promotions pass without checks (an approver sets a policy)."];
  }
  const out = [];
  const evalSet = policy.eval;
  const where = evalSet ? `on the ${evalSet.split || "valid"} split of ${evalSet.dataset}` : "";
  if (policy.ap_floor !== null && policy.ap_floor !== undefined) {
    out.push(`AP must be at least ${policy.ap_floor} ${where}.`);
  }
  if (policy.max_ap_drop !== null && policy.max_ap_drop !== undefined) {
    out.push(`AP may drop at most ${policy.max_ap_drop} below the production version's ${where}.`);
  }
  if (policy.mask_ap_floor !== null && policy.mask_ap_floor !== undefined) {
    out.push(`Mask AP (segmentation) must be at least ${policy.mask_ap_floor} ${where}.`);
  }
  if (policy.max_mask_ap_drop !== null && policy.max_mask_ap_drop !== undefined) {
    out.push(`Mask AP may drop at most ${policy.max_mask_ap_drop} below the production version's ${where}.`);
  }
  for (const gate of policy.targets || []) {
    if (gate.max_p95_ratio !== null && gate.max_p95_ratio !== undefined) {
      out.push(`p95 on ${gate.target} at most ${gate.max_p95_ratio}× production's.`);
    }
    if (gate.p95_sla_ms !== null && gate.p95_sla_ms !== undefined) {
      out.push(`p95 on ${gate.target} at most ${gate.p95_sla_ms} ms.`);
    }
  }
  if (evalSet && evalSet.fingerprint) out.push(`The eval set is pinned (fingerprint ${String(evalSet.fingerprint).slice(0, 12)}).`);
  return out.length ? out : ["No gate checks configured."];
}

// pass / fail / inconclusive: the gate's own word when it gives one, else from `passed`.
export function outcome(gate) {
  const given = gate.outcome || gate.verdict || (gate.evidence && gate.evidence.verdict);
  if (given) return String(given).toLowerCase();
  return gate.passed ? "pass" : "fail";
}

// A confidence interval in whatever shape a gate gives it: [lo, hi], {low, high}, {lo, hi}.
export function interval(gate) {
  const paired = gate.evidence && gate.evidence.paired;
  const value = gate.interval ?? gate.ci ?? (gate.evidence && gate.evidence.interval) ?? (paired && paired.ratio && paired.ratio.p95);
  if (value === null || value === undefined) return null;
  let lo;
  let hi;
  if (Array.isArray(value)) [lo, hi] = value;
  else if (typeof value === "object") {
    lo = value.low ?? value.lo ?? value.lower;
    hi = value.high ?? value.hi ?? value.upper;
  }
  if (typeof lo !== "number" || typeof hi !== "number") return String(JSON.stringify(value));
  const confidence = typeof value === "object" && !Array.isArray(value) ? value.level ?? value.confidence : null;
  const level = confidence ? ` (${Math.round(confidence * 100)}%)` : "";
  return `[${lo.toFixed(3)}, ${hi.toFixed(3)}]${level}`;
}

// Fields a gate result may carry beyond the core ones (both arms' percentiles, CV, node load):
// shown as they come, so new figures appear without a console change.
const CORE = new Set(["gate", "target", "metric", "candidate", "baseline", "threshold", "passed", "detail", "evidence", "outcome", "verdict", "interval", "ci"]);

export function extraFigures(gate) {
  const out = Object.entries(gate).filter(([name, value]) => !CORE.has(name) && value !== null && value !== undefined);
  return out.concat(pairedFigures(gate.evidence && gate.evidence.paired));
}

// A paired latency A/B (both arms timed in one process on the target): each arm's percentiles,
// the ratios with their intervals, the samples, the noise and the node's load while it measured.
function pairedFigures(paired) {
  if (!paired || !paired.arms) return [];
  const ms = (v) => (typeof v === "number" ? v.toFixed(1) : "—");
  const arm = (a) => `${ms(a.p50_ms)} / ${ms(a.p95_ms)} / ${ms(a.p99_ms)} ms, CV ${Math.round((a.cv || 0) * 100)}%`;
  const ratio = (r) => (r ? `${r.ratio.toFixed(2)} [${r.low.toFixed(2)}, ${r.high.toFixed(2)}]` : "—");
  const out = [
    ["candidate p50 / p95 / p99", arm(paired.arms.candidate)],
    ["baseline p50 / p95 / p99", arm(paired.arms.baseline)],
    ["p50 ratio", ratio(paired.ratio && paired.ratio.p50)],
    ["p95 ratio", ratio(paired.ratio && paired.ratio.p95)],
    ["samples per arm", `${paired.arms.candidate.n} in ${(paired.rounds || []).length} round(s), blocks of ${paired.block}`],
  ];
  const load = paired.node_load;
  if (load) {
    const others = (load.busiest_others || []).map((p) => `${p.name} ${p.cpu_s} s`).join(", ");
    out.push(["node load", `load average ${load.loadavg_1m_start} → ${load.loadavg_1m_end} on ${load.cpu_count} CPUs; others used ${Math.round((load.other_cpu_share || 0) * 100)}% of the CPU${others ? ` (${others})` : ""}`]);
  }
  return out;
}

// "epoch 3/10 · step 24/80 · loss 9.527 · ETA 2 min 5 s" with a progress bar.
export function progressCell(job) {
  const p = job.progress || {};
  if (p.step === undefined && p.epoch === undefined) return TERMINAL.has(job.state) ? "—" : "waiting for the first report";
  const parts = [];
  if (p.epoch !== undefined) parts.push(`epoch ${Math.round(p.epoch) + 1}${job.spec && job.spec.epochs ? `/${job.spec.epochs}` : ""}`);
  if (p.step !== undefined) parts.push(`step ${Math.round(p.step)}${p.total_steps ? `/${Math.round(p.total_steps)}` : ""}`);
  if (p.loss !== undefined) parts.push(`loss ${fmtNumber(p.loss, 3)}`);
  if (p.eta_s !== undefined && !TERMINAL.has(job.state)) parts.push(`ETA ${fmtDuration(p.eta_s)}`);
  const bar = p.total_steps ? el("progress", { max: Math.round(p.total_steps), value: Math.round(p.step || 0) }, `${Math.round(p.step || 0)}/${Math.round(p.total_steps)}`) : null;
  return el("span", { class: "progress" }, bar, " ", parts.join(" · "));
}

// A gate's candidate, baseline or threshold in the gate's own unit: AP to 4 places, latency in
// ms, a ratio limit as "1.50×".
export function gateFigure(gate, which) {
  const value = gate[which];
  if (value === null || value === undefined) return "—";
  if (which === "threshold" && String(gate.gate).includes("ratio")) return `${Number(value).toFixed(2)}×`;
  if (String(gate.metric).startsWith("latency_ms")) return `${Number(value).toFixed(1)} ms`;
  return fmtNumber(value);
}
