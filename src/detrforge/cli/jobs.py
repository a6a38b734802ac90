"""``detrforge finetune|eval|bench ...``: submit and follow jobs over the API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from detrforge.cli.client import TERMINAL, ApiClient, apply_sets, follow
from detrforge.cli.client import absolute_uri as _absolute
from detrforge.cli.client import fail as _fail
from detrforge.platform.errors import DetrforgeError
from detrforge.platform.settings import Settings

__all__ = ["bench_app", "eval_app", "finetune_app"]

finetune_app = typer.Typer(
    help="Submit and follow fine-tune jobs (over the API).", no_args_is_help=True
)
eval_app = typer.Typer(help="COCO evaluation.", no_args_is_help=True)
bench_app = typer.Typer(help="Latency benchmarks on hardware targets.", no_args_is_help=True)
targets_app = typer.Typer(help="Hardware targets (named benchmark profiles).", no_args_is_help=True)
bench_app.add_typer(targets_app, name="targets")


@eval_app.command("detections")
def eval_detections(
    annotations: Annotated[Path, typer.Option(help="COCO ground truth JSON.")],
    detections: Annotated[Path, typer.Option(help="COCO results JSON (a list).")],
    backend: Annotated[str, typer.Option(help="pycocotools or faster.")] = "pycocotools",
    iou_type: Annotated[str, typer.Option(help="bbox (boxes) or segm (RLE masks).")] = "bbox",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """COCOeval stats of an external detections file, under detrforge's metric names."""
    from detrforge.detector.evaluation import evaluate_detections_files, format_stats_table

    try:
        result = evaluate_detections_files(
            annotations,
            detections,
            backend=backend,
            iou_type=iou_type,
        )
    except DetrforgeError as exc:
        _fail(f"{exc.field or 'input'}: {exc.message}", 2)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else format_stats_table(result))


def _progress_line(job: dict[str, Any]) -> str:
    p, m, spec = job.get("progress") or {}, job.get("metrics") or {}, job.get("spec") or {}
    parts = [job["state"]]
    if "epoch" in p:
        parts.append(f"epoch {int(p['epoch']) + 1}/{spec.get('epochs', '?')}")
    if "step" in p:
        parts.append(f"step {int(p['step'])}/{int(p.get('total_steps', 0))}")
    if "loss" in p:
        parts.append(f"loss {p['loss']:.3f}")
    if "bbox/AP" in m:
        parts.append(f"val AP {m['bbox/AP']:.4f}")
    if "segm/AP" in m:
        parts.append(f"mask AP {m['segm/AP']:.4f}")
    if p.get("eta_s") is not None and job["state"] == "RUNNING":
        parts.append(f"ETA {p['eta_s']:.0f}s")
    return " | ".join(parts)


def _print_job(job: dict[str, Any], *, err: bool = False) -> None:
    def echo(line: str) -> None:
        typer.echo(line, err=err)

    echo(f"job {job['id']}: {job['state']}")
    echo(f"  mlflow run:  {job.get('mlflow_run_id')}")
    echo(f"  checkpoint:  {job.get('checkpoint_uri')}")
    echo(f"  model:       {job.get('model_uri')}")
    echo(f"  sha256:      {job.get('model_sha256')}")
    spec = job.get("spec") or {}
    if spec.get("task"):
        echo(f"  task:        {spec['task']} ({spec.get('model_size')})")
    metrics = job.get("metrics") or {}
    best, last = metrics.get("best/bbox/AP"), metrics.get("bbox/AP")
    if best is not None:
        epoch = int(metrics.get("best/epoch", 0)) + 1
        echo(f"  val bbox/AP: {best:.4f} (the model's epoch {epoch}; last epoch {last:.4f})")
    else:
        echo(f"  val bbox/AP: {last if last is not None else 'n/a'}")
    best_mask, last_mask = metrics.get("best/segm/AP"), metrics.get("segm/AP")
    if best_mask is not None and last_mask is not None:
        epoch = int(metrics.get("best/epoch", 0)) + 1
        echo(
            f"  val segm/AP: {best_mask:.4f} (the model's epoch {epoch}; "
            f"last epoch {last_mask:.4f})"
        )
    if job.get("error"):
        echo(f"  error:       {job['error']}")


def wait_for_job(client: ApiClient, job_id: str) -> dict[str, Any]:
    """Follow a fine-tune job to its end, printing a progress line (stderr) on each change."""
    return follow(
        client,
        f"/api/v1/finetune-jobs/{job_id}",
        done=lambda job: job["state"] in TERMINAL,
        describe=_progress_line,
        err=True,
    )


@finetune_app.command("submit")
def finetune_submit(
    dataset: Annotated[str | None, typer.Option(help="Dataset folder or s3:// prefix.")] = None,
    spec_file: Annotated[Path | None, typer.Option(help="A JSON FinetuneSpec.")] = None,
    model_size: Annotated[
        str | None,
        typer.Option(help="nano, small, medium, large; seg-nano ... seg-2xlarge segment (masks)"),
    ] = None,
    resolution: int | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    num_workers: int | None = None,
    num_queries: int | None = None,
    group_detr: int | None = None,
    max_failures: int | None = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="field=value (JSON value).")
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Follow progress; exit non-zero unless the job SUCCEEDED.")
    ] = False,
) -> None:
    """Submit a fine-tune job; prints its id on stdout (everything else goes to stderr)."""
    spec: dict[str, Any] = json.loads(spec_file.read_text()) if spec_file else {}
    options = {
        "dataset": dataset,
        "model_size": model_size,
        "resolution": resolution,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "num_workers": num_workers,
        "num_queries": num_queries,
        "group_detr": group_detr,
        "max_failures": max_failures,
    }
    spec.update({k: v for k, v in options.items() if v is not None})
    apply_sets(spec, set_ or [])
    if "dataset" in spec:
        spec["dataset"] = _absolute(str(spec["dataset"]))
    if spec.get("pretrain_weights"):
        spec["pretrain_weights"] = _absolute(str(spec["pretrain_weights"]))
    client = ApiClient(Settings())
    job = client.call("POST", "/api/v1/finetune-jobs", json=spec)
    typer.echo(
        f"submitted {job['id']} (dataset fingerprint {job['dataset_fingerprint'][:12]}...)",
        err=True,
    )
    typer.echo(job["id"])
    if wait:
        _wait_and_report(client, job["id"])


def _wait_and_report(client: ApiClient, job_id: str) -> None:
    job = wait_for_job(client, job_id)
    _print_job(job, err=True)
    if job["state"] != "SUCCEEDED":
        typer.secho(f"job {job_id} ended {job['state']}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@finetune_app.command("wait")
def finetune_wait(job_id: str) -> None:
    """Follow a job until it ends; exit non-zero unless it SUCCEEDED."""
    _wait_and_report(ApiClient(Settings()), job_id)


@finetune_app.command("list")
def finetune_list(state: str | None = None, limit: int = 20, offset: int = 0) -> None:
    """List fine-tune jobs, newest first."""
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if state:
        params["state"] = state.upper()
    page = ApiClient(Settings()).call("GET", "/api/v1/finetune-jobs", params=params)
    for job in page["items"]:
        typer.echo(
            f"{job['id']}  {job['state']:<10} {job['created_at'][:19]}  {_progress_line(job)}"
        )
    typer.echo(f"({len(page['items'])} of {page['total']})")


@finetune_app.command("show")
def finetune_show(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show one job."""
    job = ApiClient(Settings()).call("GET", f"/api/v1/finetune-jobs/{job_id}")
    if as_json:
        typer.echo(json.dumps(job, indent=2))
    else:
        _print_job(job)
        typer.echo(f"  progress:    {_progress_line(job)}")


@finetune_app.command("logs")
def finetune_logs(
    job_id: str,
    tail: int | None = None,
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
) -> None:
    """Print (or follow) a job's logs."""
    client = ApiClient(Settings())
    if not follow:
        params = {"tail": tail} if tail else {}
        typer.echo(client.call("GET", f"/api/v1/finetune-jobs/{job_id}/logs", params=params))
        return
    with client.http.stream(
        "GET", f"/api/v1/finetune-jobs/{job_id}/logs", params={"follow": "true"}, timeout=None
    ) as response:
        for chunk in response.iter_text():
            sys.stdout.write(chunk)
            sys.stdout.flush()


@finetune_app.command("cancel")
def finetune_cancel(job_id: str) -> None:
    """Cancel a job (Ray stops it; CANCELLED within seconds)."""
    job = ApiClient(Settings()).call("POST", f"/api/v1/finetune-jobs/{job_id}/cancel")
    typer.echo(f"{job['id']}: {job['state']}")


def _wait_generic(client: ApiClient, path: str) -> dict[str, Any]:
    return follow(client, path, done=lambda job: job["state"] in TERMINAL)


def _checkpoint_body(job: str | None, checkpoint: str | None) -> dict[str, Any]:
    if bool(job) == bool(checkpoint):
        _fail("give exactly one of --job (a finished fine-tune) or --checkpoint (a URI)", 2)
    return {"job_id": job} if job else {"checkpoint": _absolute(str(checkpoint))}


@eval_app.command("run")
def eval_run(
    dataset: Annotated[str, typer.Option(help="Dataset folder or s3:// prefix.")],
    job: Annotated[str | None, typer.Option(help="A SUCCEEDED fine-tune job id.")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="A .pth path or URI.")] = None,
    split: str = "valid",
    backend: Annotated[str, typer.Option(help="torch or onnxruntime")] = "torch",
    model_size: str | None = None,
    resolution: int | None = None,
    wait: bool = True,
) -> None:
    """Evaluate a checkpoint on a COCO split (pycocotools), per class too."""
    body = _checkpoint_body(job, checkpoint)
    body.update({"dataset": _absolute(dataset), "split": split, "backend": backend})
    body.update(
        {k: v for k, v in {"model_size": model_size, "resolution": resolution}.items() if v}
    )
    client = ApiClient(Settings())
    created = client.call("POST", "/api/v1/evaluations", json=body)
    typer.echo(f"submitted evaluation {created['id']}")
    if not wait:
        return
    done = _wait_generic(client, f"/api/v1/evaluations/{created['id']}")
    if done["state"] != "SUCCEEDED":
        _fail(f"evaluation {done['state']}: {done.get('error')}")
    result = client.call("GET", f"/api/v1/evaluations/{created['id']}/result")
    for name, value in result["stats"].items():
        typer.echo(f"{name:<12} {value if value is None else f'{value:.4f}'}")
    for row in result["per_class"]:
        typer.echo(f"  class {row['category_id']:>3} {row['name']:<16} AP {row['ap']}")
    for name, value in (result.get("segm") or {}).get("stats", {}).items():
        typer.echo(f"{name:<12} {value if value is None else f'{value:.4f}'}")


@bench_app.command("run")
def bench_run(
    target: Annotated[str, typer.Option(help="A hardware target name.")],
    job: Annotated[str | None, typer.Option(help="A SUCCEEDED fine-tune job id.")] = None,
    checkpoint: Annotated[str | None, typer.Option(help="A .pth path or URI.")] = None,
    backend: str | None = None,
    runs: int = 50,
    warmup: int = 5,
    model_size: str | None = None,
    resolution: int | None = None,
    wait: bool = True,
) -> None:
    """Benchmark a checkpoint's latency on a hardware target (p50/p95/p99, environment)."""
    body = _checkpoint_body(job, checkpoint)
    body.update({"target": target, "runs": runs, "warmup": warmup})
    extra = {"backend": backend, "model_size": model_size, "resolution": resolution}
    body.update({k: v for k, v in extra.items() if v})
    client = ApiClient(Settings())
    created = client.call("POST", "/api/v1/benchmarks", json=body)
    typer.echo(f"submitted benchmark {created['id']}")
    if wait:
        done = _wait_generic(client, f"/api/v1/benchmarks/{created['id']}")
        typer.echo(
            json.dumps(
                {"state": done["state"], "error": done.get("error"), **done.get("metrics", {})},
                indent=2,
            )
        )


@bench_app.command("history")
def bench_history(
    target: str | None = None,
    checkpoint_sha256: str | None = None,
    limit: int = 50,
    csv: Annotated[bool, typer.Option("--csv", help="CSV export.")] = False,
) -> None:
    """The append-only benchmark history, newest first."""
    params: dict[str, Any] = {"limit": limit, "format": "csv" if csv else "json"}
    if target:
        params["target"] = target
    if checkpoint_sha256:
        params["checkpoint_sha256"] = checkpoint_sha256
    out = ApiClient(Settings()).call("GET", "/api/v1/benchmark-records", params=params)
    if csv:
        typer.echo(out, nl=False)
        return
    for r in out["items"]:
        line = (
            f"{r['created_at'][:19]} {r['target']:<12} {r['backend']:<11} "
            f"{r['resolution']:>4}px p50 {r['p50_ms']:.1f} p95 {r['p95_ms']:.1f} ms "
            f"torch {r['environment'].get('torch')} sha {r['checkpoint_sha256'][:12]}"
        )
        if r.get("mask_p95_ms") is not None:
            # A segmentation model: its mask decoding, timed apart from the model above.
            line += f" | masks p50 {r['mask_p50_ms']:.1f} p95 {r['mask_p95_ms']:.1f} ms"
        if paired := r.get("paired"):
            # Figures of one paired run compare with each other, not with other rows' figures.
            base, p95 = paired["arms"]["baseline"], paired["ratio"]["p95"]
            line += (
                f" | paired with {base['p95_ms']:.1f} ms: p95 ratio {p95['ratio']:.2f} "
                f"[{p95['low']:.2f}, {p95['high']:.2f}]"
            )
        typer.echo(line)


@targets_app.command("create")
def targets_create(
    name: str,
    resources: Annotated[str, typer.Option(help='JSON, e.g. {"hw_cpu_x86": 1}')],
    backend: str = "torch",
    precision: str = "fp32",
    batch_size: int = 1,
    num_threads: int | None = None,
    description: str = "",
) -> None:
    """Create a hardware target."""
    body = {
        "name": name,
        "resources": json.loads(resources),
        "backend": backend,
        "precision": precision,
        "batch_size": batch_size,
        "num_threads": num_threads,
        "description": description,
    }
    out = ApiClient(Settings()).call("POST", "/api/v1/hardware-targets", json=body)
    typer.echo(json.dumps(out, indent=2))


@targets_app.command("list")
def targets_list() -> None:
    """List hardware targets."""
    for t in ApiClient(Settings()).call("GET", "/api/v1/hardware-targets")["items"]:
        typer.echo(f"{t['name']:<16} {t['backend']:<11} {t['precision']} {t['resources']}")
