"""``detrforge sweep ...``: submit, list, show, result, cancel (an HTTP client of the API)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from detrforge.cli.client import TERMINAL, ApiClient, apply_sets, follow
from detrforge.platform.settings import Settings

__all__ = ["install", "sweep_app"]

sweep_app = typer.Typer(
    help="Size x resolution sweeps (Ray Tune + ASHA) with an AP/latency Pareto front.",
    no_args_is_help=True,
)


def _client() -> ApiClient:
    return ApiClient(Settings())


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _print_trials(trials: list[dict[str, Any]]) -> None:
    typer.echo(
        f"  {'trial':<13} {'state':<14} {'size':<6} {'res':>4} {'ep':>3} {'AP':>7} {'p95 ms':>8}"
    )
    for t in trials:
        typer.echo(
            f"  {t['trial_id']:<13} {t['state']:<14} {t['model_size'] or '-':<6} "
            f"{t['resolution'] or 0:>4} {t['epochs']:>3} {_fmt(t['best_ap']):>7} "
            f"{_fmt(t['p95_ms'], '.1f'):>8}"
        )


def _line(sweep: dict[str, Any]) -> str:
    trials = sweep.get("trials", [])
    states: dict[str, int] = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    done = int((sweep.get("progress") or {}).get("step", 0))
    return f"{sweep['state']} | {len(trials)} trials ({counts or 'none yet'}) | {done} trial-epochs"


@sweep_app.command("submit")
def sweep_submit(
    spec_file: Annotated[Path | None, typer.Option(help="A JSON SweepSpec.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset folder or s3:// prefix.")] = None,
    target: Annotated[str | None, typer.Option(help="Hardware target for p95.")] = None,
    sizes: Annotated[str | None, typer.Option(help="Comma list, e.g. nano,small.")] = None,
    resolutions: Annotated[str | None, typer.Option(help="Comma list, e.g. 128,160.")] = None,
    sla_ms: Annotated[float | None, typer.Option(help="Latency SLA (p95, ms).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="field=value (JSON value), e.g. base={...}.")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow progress until the sweep ends.")] = False,
) -> None:
    """Submit a sweep."""
    spec: dict[str, Any] = json.loads(spec_file.read_text()) if spec_file else {}
    space = dict(spec.get("space", {}))
    if sizes:
        space["model_size"] = [s.strip() for s in sizes.split(",") if s.strip()]
    if resolutions:
        space["resolution"] = [int(r) for r in resolutions.split(",") if r.strip()]
    if space:
        spec["space"] = space
    for key, value in (("dataset", dataset), ("target", target), ("latency_sla_ms", sla_ms)):
        if value is not None:
            spec[key] = value
    apply_sets(spec, set_ or [])
    if "dataset" in spec and "://" not in str(spec["dataset"]):
        spec["dataset"] = str(Path(spec["dataset"]).expanduser().resolve())
    client = _client()
    job = client.call("POST", "/api/v1/sweeps", json=spec)
    typer.echo(f"submitted {job['id']}")
    if not wait:
        return
    sweep = follow(
        client,
        f"/api/v1/sweeps/{job['id']}",
        done=lambda sweep: sweep["state"] in TERMINAL,
        describe=_line,
    )
    _print_trials(sweep["trials"])
    if sweep["state"] != "SUCCEEDED":
        typer.echo(f"  error: {sweep.get('error')}")
        raise typer.Exit(1)
    _print_result(client.call("GET", f"/api/v1/sweeps/{job['id']}/result"))


@sweep_app.command("list")
def sweep_list(state: str | None = None, limit: int = 20, offset: int = 0) -> None:
    """List sweeps, newest first."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if state:
        params["state"] = state.upper()
    page = _client().call("GET", "/api/v1/sweeps", params=params)
    for job in page["items"]:
        typer.echo(f"{job['id']}  {job['state']:<10} {job['created_at'][:19]}")
    typer.echo(f"({len(page['items'])} of {page['total']})")


@sweep_app.command("show")
def sweep_show(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show a sweep and its trials (state, epochs, AP so far, measured p95)."""
    sweep = _client().call("GET", f"/api/v1/sweeps/{job_id}")
    if as_json:
        typer.echo(json.dumps(sweep, indent=2))
        return
    typer.echo(f"sweep {sweep['id']}: {_line(sweep)}")
    typer.echo(f"  mlflow run: {sweep.get('mlflow_run_id')}")
    if sweep.get("error"):
        typer.echo(f"  error: {sweep['error']}")
    _print_trials(sweep["trials"])


def _print_result(result: dict[str, Any]) -> None:
    def describe(p: dict[str, Any] | None) -> str:
        if p is None:
            return "none"
        return (
            f"{p['key']} {p['model_size']}@{p['resolution']} AP {p['ap']:.4f} "
            f"p95 {p['p95_ms']:.1f} ms"
        )

    typer.echo(f"Pareto front on {result['target']} (fastest first):")
    for point in result["front"]:
        typer.echo(f"  {describe(point)}")
    typer.echo(f"best by AP: {describe(result['best'])}")
    pick = result["pick"]
    typer.echo(f"pick (SLA {pick['sla_ms']} ms): {describe(pick['pick'])}  [{pick['reason']}]")
    typer.echo(
        f"{result['trial_epochs']} trial-epochs, {result['stopped_early']} stopped early, "
        f"{result['wall_s']} s"
    )


@sweep_app.command("result")
def sweep_result(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    plot: Annotated[Path | None, typer.Option(help="Also save the Pareto plot (PNG) here.")] = None,
) -> None:
    """The Pareto front, best trial by AP and the SLA pick of a finished sweep."""
    client = _client()
    result = client.call("GET", f"/api/v1/sweeps/{job_id}/result")
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        _print_result(result)
    if plot is not None:
        response = client.http.get(f"/api/v1/sweeps/{job_id}/pareto.png")
        response.raise_for_status()
        plot.write_bytes(response.content)
        typer.echo(f"plot: {plot}")


@sweep_app.command("cancel")
def sweep_cancel(job_id: str) -> None:
    """Stop a sweep and every trial."""
    job = _client().call("POST", f"/api/v1/sweeps/{job_id}/cancel")
    typer.echo(f"{job['id']}: {job['state']}")


def install(app: typer.Typer) -> None:
    """Add the ``sweep`` group to the main CLI."""
    app.add_typer(sweep_app, name="sweep")
