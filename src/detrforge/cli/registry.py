"""The registry commands of the CLI: ``models``, ``versions``, ``policy``, ``promote``,
``rollback`` and ``audit``. They talk to the control API like every other command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from detrforge.cli.client import ApiClient, follow
from detrforge.cli.client import absolute_uri as _absolute
from detrforge.cli.client import fail as _fail
from detrforge.platform.settings import Settings

__all__ = ["install"]

models_app = typer.Typer(help="Registered models.", no_args_is_help=True)
versions_app = typer.Typer(help="Model versions.", no_args_is_help=True)
policy_app = typer.Typer(help="Gate policies.", no_args_is_help=True)


def install(app: typer.Typer) -> None:
    """Add the registry commands to the top-level CLI."""
    app.add_typer(models_app, name="models")
    app.add_typer(versions_app, name="versions")
    app.add_typer(policy_app, name="policy")
    app.command("optimize")(optimize)
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("audit")(audit)


def _client() -> ApiClient:
    return ApiClient(Settings())


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


@models_app.command("create")
def models_create(name: str, description: str = "") -> None:
    """Create a registered model."""
    model = _client().call(
        "POST", "/api/v1/models", json={"name": name, "description": description}
    )
    typer.echo(f"created model {model['name']} ({model['id']})")


@models_app.command("list")
def models_list(limit: int = 100) -> None:
    """List registered models with their production and staging versions."""
    page = _client().call("GET", "/api/v1/models", params={"limit": limit})
    for m in page["items"]:
        typer.echo(
            f"{m['name']:<24} production v{m['production_version'] or '-'}  "
            f"staging v{m['staging_version'] or '-'}  {m['description']}"
        )
    typer.echo(f"({len(page['items'])} of {page['total']})")


@models_app.command("show")
def models_show(name: str) -> None:
    """Show a model, its policy and its versions."""
    client = _client()
    model = client.call("GET", f"/api/v1/models/{name}")
    typer.echo(
        f"model {model['name']}: production v{model['production_version'] or '-'}, "
        f"staging v{model['staging_version'] or '-'}"
    )
    typer.echo(f"  policy: {json.dumps(model['policy'] or {})}")
    for v in client.call("GET", f"/api/v1/models/{name}/versions")["items"]:
        typer.echo(_version_line(v))


def _version_line(v: dict[str, Any]) -> str:
    source = v["source_job_id"] or v["checkpoint_uri"]
    return (
        f"  v{v['version']:<3} {v['stage']:<10} {v['model_size']} {v['resolution']}px "
        f"sha {v['checkpoint_sha256'][:12]} from {source}"
    )


@versions_app.command("register")
def versions_register(
    model: str,
    job: Annotated[str | None, typer.Option(help="A SUCCEEDED fine-tune job id.")] = None,
    checkpoint: Annotated[
        str | None, typer.Option(help="A .pth path, file:// or s3:// URI.")
    ] = None,
    model_size: str = "nano",
    resolution: int | None = None,
    sha256: Annotated[str | None, typer.Option(help="Expected sha256 of the checkpoint.")] = None,
    description: str = "",
    sweep: Annotated[str | None, typer.Option(help="A sweep job id (with --trial).")] = None,
    trial: Annotated[str | None, typer.Option(help="A trial id of --sweep.")] = None,
) -> None:
    """Register a version from a fine-tune job, a sweep trial or a checkpoint (sha256 verified)."""
    if sum(map(bool, (job, checkpoint, sweep))) != 1 or bool(sweep) != bool(trial):
        _fail("give exactly one of --job, --checkpoint or --sweep with --trial", 2)
    if sweep:
        path = f"/api/v1/sweeps/{sweep}/trials/{trial}/register"
        v = _client().call("POST", path, json={"model": model, "description": description})
        typer.echo(f"registered {model} v{v['version']} from {sweep} trial {trial}")
        return
    body: dict[str, Any] = {"description": description}
    if job:
        body["job_id"] = job
    else:
        body.update(checkpoint=_absolute(str(checkpoint)), model_size=model_size)
        if resolution is not None:
            body["resolution"] = resolution
        if sha256:
            body["checkpoint_sha256"] = sha256
    v = _client().call("POST", f"/api/v1/models/{model}/versions", json=body)
    typer.echo(f"registered {model} v{v['version']} (sha256 {v['checkpoint_sha256']})")


@versions_app.command("list")
def versions_list(model: str, stage: str | None = None) -> None:
    """List a model's versions, newest first."""
    params = {"stage": stage} if stage else {}
    for v in _client().call("GET", f"/api/v1/models/{model}/versions", params=params)["items"]:
        typer.echo(_version_line(v))


@versions_app.command("show")
def versions_show(model: str, version: int) -> None:
    """Show one version with its lineage."""
    _print_json(_client().call("GET", f"/api/v1/models/{model}/versions/{version}"))


@versions_app.command("alias")
def versions_alias(
    model: str,
    alias: Annotated[str, typer.Argument(help="production or staging")] = "production",
    target: Annotated[
        str | None, typer.Option(help="A target of the policy: what ships there.")
    ] = None,
) -> None:
    """The version an alias points at and the artifact to deploy (URI and sha256)."""
    params = {"target": target} if target else {}
    v = _client().call("GET", f"/api/v1/models/{model}/aliases/{alias}", params=params)
    what = f"variant {v['variant']} ({v['model_file']})" if v["variant"] else "checkpoint"
    typer.echo(f"{model}@{alias}: v{v['version']}{' on ' + target if target else ''}: {what}")
    typer.echo(f"  {v['artifact_uri']}")
    typer.echo(f"  sha256 {v['artifact_sha256']}")


def optimize(
    model: str,
    version: int,
    target: Annotated[str, typer.Option(help="The hardware target to build and time on.")],
    variant: Annotated[
        list[str] | None,
        typer.Option(help="A variant to build (repeat); default: every one for the target."),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="COCO set to score on; default: the pinned eval set.")
    ] = None,
    runs: Annotated[int, typer.Option(help="Timed runs per arm (variant and eager).")] = 50,
    calibration_images: Annotated[int, typer.Option(help="int8 calibration images.")] = 16,
    ap_tolerance: Annotated[float, typer.Option(help="AP a variant may lose.")] = 0.005,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow to the table.")] = True,
) -> None:
    """Build a version's inference variants on a target, time each against eager and score each:
    one table, the fastest variant within the AP tolerance marked."""
    client = _client()
    body: dict[str, Any] = {
        "target": target,
        "runs": runs,
        "calibration_images": calibration_images,
        "ap_tolerance": ap_tolerance,
    }
    if variant:
        body["variants"] = variant
    if dataset:
        body["dataset"] = _absolute(dataset)
    job = client.call("POST", f"/api/v1/models/{model}/versions/{version}/optimize", json=body)
    typer.echo(f"optimize job {job['id']}: {model} v{version} on {target} ({job['state']})")
    if not wait:
        return
    job = follow(
        client,
        f"/api/v1/jobs/{job['id']}",
        done=lambda j: j["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"),
        describe=lambda j: str(j["state"]),
        err=True,
    )
    if job["state"] != "SUCCEEDED":
        _fail(f"optimize job {job['id']} ended {job['state']}: {job.get('error')}", 1)
    variants = client.call("GET", f"/api/v1/models/{model}/versions/{version}/variants")
    rows = [v for v in variants["items"] if v["metrics"].get("job_id") == job["id"]]
    for line in variant_table(rows):
        typer.echo(line)


def variant_table(rows: list[dict[str, Any]]) -> list[str]:
    """The optimize table: one line per variant; ``*`` marks the fastest within tolerance."""
    if not rows:
        return ["no variant was built"]
    eager = rows[0]["metrics"]
    lines = [
        f"  {'variant':<15}{'e2e p50':>8}{'p95':>8}{'p99':>8}{'model p95':>10}"
        f"{'speedup p95: e2e, model [CI]':>31}{'AP':>8}{'dAP':>8}{'MiB':>7}{'build s':>8}",
        f"  {'eager':<15}{'':>8}{eager['eager_e2e_ms']['p95']:8.1f}{'':>8}{'':>10}{'1.00x':>31}"
        f"{eager['eager_ap']:8.4f}",
    ]
    for row in rows:
        m = row["metrics"]
        e2e, speed = m["e2e_ms"], m["speedup_model_p95"]
        speedup = (
            f"{m['speedup_e2e_p95']:.2f}x, "
            f"{speed['speedup']:.2f}x [{speed['low']:.2f}, {speed['high']:.2f}]"
        )
        mark = "*" if m.get("best") else " "
        lines.append(
            f"{mark} {row['name']:<15}{e2e['p50']:8.1f}{e2e['p95']:8.1f}{e2e['p99']:8.1f}"
            f"{m['model_ms']['p95']:10.1f}{speedup:>31}{m['ap']:8.4f}{m['ap_change']:+8.4f}"
            f"{row['size_bytes'] / 2**20:7.1f}{row['build_seconds']:8.1f}"
        )
    return lines


@policy_app.command("set")
def policy_set(
    model: str,
    file: Annotated[Path | None, typer.Option(help="A JSON policy file.")] = None,
    eval_dataset: Annotated[str | None, typer.Option(help="Pinned eval set (COCO).")] = None,
    eval_split: str = "valid",
    ap_floor: float | None = None,
    max_ap_drop: float | None = None,
    mask_ap_floor: Annotated[
        float | None, typer.Option(help="Segmentation models: the lowest mask AP.")
    ] = None,
    max_mask_ap_drop: Annotated[
        float | None, typer.Option(help="Segmentation models: the largest mask AP drop.")
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            help="TARGET[:ratio=R][:sla=MS][:ship=VARIANT] (ship: the variant that ships there, "
            "e.g. onnx-int8; the gates measure it)"
        ),
    ] = None,
    benchmark_runs: Annotated[
        int | None,
        typer.Option(help="Timed runs per arm and round (default: what p95 needs, 292)."),
    ] = None,
    latency_max_rounds: Annotated[
        int, typer.Option(help="Rounds a ratio gate may take while inconclusive.")
    ] = 3,
    reason: str = "",
) -> None:
    """Set a model's gate policy from a file or from options."""
    if file is not None:
        body = json.loads(file.read_text())
    else:
        body = {
            "ap_floor": ap_floor,
            "max_ap_drop": max_ap_drop,
            "mask_ap_floor": mask_ap_floor,
            "max_mask_ap_drop": max_mask_ap_drop,
            "benchmark_runs": benchmark_runs,
            "latency_max_rounds": latency_max_rounds,
        }
        if eval_dataset:
            body["eval"] = {"dataset": _absolute(eval_dataset), "split": eval_split}
        body["targets"] = [_target_gate(spec) for spec in target or []]
    body["reason"] = reason
    model_out = _client().call("PUT", f"/api/v1/models/{model}/policy", json=body)
    _print_json(model_out["policy"])


def _target_gate(spec: str) -> dict[str, Any]:
    name, *checks = spec.split(":")
    gate: dict[str, Any] = {"target": name}
    keys = {"ratio": "max_p95_ratio", "sla": "p95_sla_ms", "ship": "variant"}
    for check in checks:
        key, _, value = check.partition("=")
        if key not in keys or not value:
            _fail(f"--target {spec!r}: use TARGET:ratio=1.2:sla=50:ship=onnx-int8", 2)
        try:
            gate[keys[key]] = value if key == "ship" else float(value)
        except ValueError:
            _fail(f"--target {spec!r}: {key}={value!r} is not a number", 2)
    return gate


@policy_app.command("show")
def policy_show(model: str) -> None:
    """Show a model's gate policy."""
    _print_json(_client().call("GET", f"/api/v1/models/{model}/policy"))


def promote(
    model: str,
    version: int,
    to: Annotated[str, typer.Option("--to", help="staging or production")] = "production",
    reason: str = "",
    wait: Annotated[bool, typer.Option("--wait", help="Follow the gates to the verdict.")] = False,
) -> None:
    """Request a gated promotion (answered at once; --wait follows it)."""
    client = _client()
    promotion = client.call(
        "POST",
        f"/api/v1/models/{model}/versions/{version}/promotions",
        json={"to": to, "reason": reason},
    )
    typer.echo(f"promotion {promotion['id']}: {model} v{version} -> {to} ({promotion['state']})")
    if not wait:
        return
    promotion = follow(
        client,
        f"/api/v1/promotions/{promotion['id']}",
        done=lambda p: p["state"] not in ("pending", "running"),
        describe=_evidence_line,
    )
    for gate in promotion["gate_results"]:
        verdict = gate.get("evidence", {}).get("verdict")
        mark = str(verdict).upper() if verdict else ("PASS" if gate["passed"] else "FAIL")
        typer.echo(f"  [{mark}] {gate['gate']}: {gate['detail']}")
        for line in _paired_lines(gate.get("evidence", {}).get("paired")):
            typer.echo(f"      {line}")
    typer.echo(f"{promotion['state'].upper()}: {promotion['message']}")
    if promotion["state"] != "applied":
        raise typer.Exit(1)


def _paired_lines(paired: dict[str, Any] | None) -> list[str]:
    """A paired latency A/B's figures: each arm, the ratios with intervals, the node's load."""
    if not paired:
        return []
    lines = []
    for role, arm in paired["arms"].items():
        lines.append(
            f"{role:<9} p50 {arm['p50_ms']:.1f}  p95 {arm['p95_ms']:.1f}  p99 {arm['p99_ms']:.1f} "
            f"ms  CV {arm['cv']:.0%}  n={arm['n']}"
        )
    for name, r in paired["ratio"].items():
        lines.append(
            f"{name} ratio {r['ratio']:.2f} [{r['low']:.2f}, {r['high']:.2f}] "
            f"({r['confidence']:.0%} interval)"
        )
    load = paired.get("node_load")
    if load:
        others = ", ".join(f"{p['name']} {p['cpu_s']} s" for p in load["busiest_others"])
        lines.append(
            f"node load {load['loadavg_1m_start']} -> {load['loadavg_1m_end']} on "
            f"{load['cpu_count']} CPUs; others used {load['other_cpu_share']:.0%} of the CPU"
            + (f" ({others})" if others else "")
        )
    return lines


def _evidence_line(promotion: dict[str, Any]) -> str:
    jobs = ", ".join(
        f"{e['role']} {e['kind']}{' ' + e['target'] if e.get('target') else ''}: {e.get('state')}"
        for e in promotion["evidence"]
    )
    return f"{promotion['state']}: {jobs}"


def rollback(model: str, reason: str = "") -> None:
    """Re-point production to the previous production version (no gates)."""
    v = _client().call("POST", f"/api/v1/models/{model}/rollback", json={"reason": reason})
    typer.echo(f"{model}: production is v{v['version']} again")


def audit(
    model: Annotated[str | None, typer.Argument()] = None,
    action: str | None = None,
    limit: int = 1000,
    csv: Annotated[bool, typer.Option("--csv", help="CSV export.")] = False,
) -> None:
    """The audit log (of one model, or all), oldest first."""
    params: dict[str, Any] = {"limit": limit, "format": "csv" if csv else "json"}
    if model:
        params["model"] = model
    if action:
        params["action"] = action
    out = _client().call("GET", "/api/v1/audit", params=params)
    if csv:
        typer.echo(out, nl=False)
        return
    for e in out["items"]:
        version = f"v{e['version']}" if e["version"] is not None else ""
        change = f"{e['before'] or ''} -> {e['after'] or ''}" if e["before"] or e["after"] else ""
        typer.echo(
            f"{e['at'][:19]} {e['actor']:<22} {e['action']:<18} {e['model_name'] or ''} "
            f"{version:<4} {change[:60]} {e['reason'] or ''}"
        )
