"""The ``detrforge`` command line: serve the API, make and check datasets, drive fine-tunes."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from detrforge.cli_client import ApiClient
from detrforge.cli_client import absolute_uri as _absolute
from detrforge.cli_client import fail as _fail
from detrforge.platform.errors import DetrforgeError
from detrforge.platform.settings import Settings

__all__ = ["app"]

app = typer.Typer(
    help="detrforge: fine-tune, gate and ship RF-DETR detectors.", no_args_is_help=True
)
data_app = typer.Typer(help="Make and check COCO datasets.", no_args_is_help=True)
finetune_app = typer.Typer(
    help="Submit and follow fine-tune jobs (over the API).", no_args_is_help=True
)
keys_app = typer.Typer(help="API keys (direct database access, for admins on the server).")
cluster_app = typer.Typer(help="The embedded local Ray head.", no_args_is_help=True)
eval_app = typer.Typer(help="COCO evaluation.", no_args_is_help=True)
bench_app = typer.Typer(help="Latency benchmarks on hardware targets.", no_args_is_help=True)
targets_app = typer.Typer(help="Hardware targets (named benchmark profiles).", no_args_is_help=True)
bench_app.add_typer(targets_app, name="targets")
app.add_typer(data_app, name="data")
app.add_typer(finetune_app, name="finetune")
app.add_typer(keys_app, name="keys")
app.add_typer(cluster_app, name="cluster")
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED"}


# -- serve + cluster ---------------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8321).")] = None,
) -> None:
    """Run the control API in the foreground (and, without RAY_ADDRESS, a local Ray head).

    Ctrl-C or SIGTERM stops both. Exits non-zero if the head does not come up or dies.
    """
    from detrforge.api.server import run_server

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = Settings()
    if host:
        settings.host = host
    if port:
        settings.port = port
    try:
        code = run_server(settings, echo=lambda line: typer.echo(line, err=True))
    except DetrforgeError as exc:
        _fail(exc.message)
    raise typer.Exit(code)


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Readiness of the API and what it depends on (database, Ray, MLflow, artifacts)."""
    import httpx

    settings = Settings()
    url = f"{settings.resolved_api_url()}/ready"
    try:
        response = httpx.get(url, timeout=15)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        _fail(f"the API at {settings.resolved_api_url()} does not answer ({exc}); is serve up?")
    if as_json:
        typer.echo(json.dumps(body, indent=2))
    else:
        typer.echo(
            f"detrforge {body.get('version')} at {settings.resolved_api_url()}: "
            f"{body.get('status')}"
        )
        for name, part in (body.get("components") or {}).items():
            mark = "ok  " if part["ok"] else "DOWN"
            typer.echo(f"  {mark} {name:<10} {part['message']}")
    if response.status_code != 200:
        raise typer.Exit(1)


@app.command()
def stop(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it to exit.")] = 60.0,
) -> None:
    """Stop the `detrforge serve` running on DETRFORGE_HOME (and the Ray head it started)."""
    from detrforge.api.server import holder_pid

    settings = Settings()
    pid = holder_pid(settings.resolved_home())
    if pid is None:
        _fail(f"no `detrforge serve` is running on {settings.resolved_home()}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if holder_pid(settings.resolved_home()) is None:
            typer.echo(f"stopped detrforge serve (pid {pid}) and its Ray head")
            return
        time.sleep(0.5)
    _fail(f"detrforge serve (pid {pid}) did not exit within {timeout:.0f} s")


@cluster_app.command("down")
def cluster_down() -> None:
    """Stop a local Ray head left running by an earlier serve (serve stops its own head)."""
    import psutil

    from detrforge.api.server import head_pid_file
    from detrforge.platform.cluster import stop_process_tree

    pid_file = head_pid_file(Settings().resolved_home())
    if not pid_file.exists():
        _fail("no local Ray head recorded in DETRFORGE_HOME")
    pid = int(pid_file.read_text())
    try:
        is_head = "detrforge.platform.ray_head" in " ".join(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        is_head = False
    if not is_head:
        pid_file.unlink()
        _fail(f"the recorded Ray head (pid {pid}) is no longer running; nothing to stop")
    killed = stop_process_tree(pid)
    pid_file.unlink()
    suffix = f" ({len(killed)} process(es) needed SIGKILL)" if killed else ""
    typer.echo(f"stopped the local Ray head (pid {pid}) and every process it started{suffix}")


# -- keys ---------------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="viewer, operator, approver or admin")] = "viewer",
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
) -> None:
    """Create an API key and print it once."""
    from detrforge.platform.db import make_engine, make_session_factory, upgrade_database
    from detrforge.registry.entities import Role
    from detrforge.registry.keys import KeyStore

    try:
        role_value = Role(role)
    except ValueError:
        _fail(f"--role must be one of {[r.value for r in Role]}, got {role!r}", 2)
    settings = Settings()
    url = settings.resolved_database_url()
    upgrade_database(url)
    store = KeyStore(make_session_factory(make_engine(url)))
    key, secret = store.create(name=name or f"{role}-{int(time.time())}", role=role_value)
    typer.echo(f"id: {key.id}\nrole: {key.role.value}\nkey: {secret}\n(shown once; store it now)")


# -- data ---------------------------------------------------------------------------------------
@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write (must be empty or absent).")],
    seed: int = 0,
    classes: Annotated[int, typer.Option(help="Number of shape classes.")] = 1,
    train: Annotated[int, typer.Option(help="Training images.")] = 64,
    valid: Annotated[int, typer.Option(help="Validation images.")] = 16,
    test: Annotated[int, typer.Option(help="Test images.")] = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 128,
    max_objects: int = 3,
) -> None:
    """Write a deterministic synthetic COCO dataset (coloured shapes)."""
    from detrforge.platform.data import synth_dataset

    try:
        info = synth_dataset(
            out,
            seed=seed,
            num_classes=classes,
            train_images=train,
            valid_images=valid,
            test_images=test,
            image_size=size,
            max_objects=max_objects,
        )
    except DetrforgeError as exc:
        _fail(exc.message, 2)
    typer.echo(f"wrote {out}: {info.num_images} images, classes {list(info.class_names)}")
    typer.echo(f"fingerprint {info.fingerprint}")


@data_app.command("validate")
def data_validate(
    path: Path, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
) -> None:
    """Check a dataset in rfdetr's COCO layout; lists every problem with file and field."""
    from detrforge.platform.data import require_valid_dataset, validate_dataset

    problems = validate_dataset(path)
    if problems:
        if as_json:
            typer.echo(json.dumps({"valid": False, "problems": problems}, indent=2))
        else:
            for p in problems:
                typer.echo(f"{p['file']}: {p['field']}: {p['message']}")
            typer.secho(f"{len(problems)} problem(s)", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    info = require_valid_dataset(path)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "valid": True,
                    "fingerprint": info.fingerprint,
                    "classes": info.class_names,
                    "images": info.num_images,
                },
                indent=2,
            )
        )
    else:
        typer.echo(f"valid: {info.num_images} images, classes {list(info.class_names)}")
        typer.echo(f"fingerprint {info.fingerprint}")


# -- eval ---------------------------------------------------------------------------------------
@eval_app.command("detections")
def eval_detections(
    annotations: Annotated[Path, typer.Option(help="COCO ground truth JSON.")],
    detections: Annotated[Path, typer.Option(help="COCO results JSON (a list).")],
    backend: Annotated[str, typer.Option(help="pycocotools or faster.")] = "pycocotools",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """COCOeval bbox stats of an external detections file, under detrforge's metric names."""
    from detrforge.platform.evaluation import evaluate_detections_files, format_stats_table

    try:
        result = evaluate_detections_files(annotations, detections, backend=backend)
    except DetrforgeError as exc:
        _fail(f"{exc.field or 'input'}: {exc.message}", 2)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else format_stats_table(result))


# -- finetune (HTTP client) --------------------------------------------------------------------
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
    metrics = job.get("metrics") or {}
    best, last = metrics.get("best/bbox/AP"), metrics.get("bbox/AP")
    if best is not None:
        epoch = int(metrics.get("best/epoch", 0)) + 1
        echo(f"  val bbox/AP: {best:.4f} (the model's epoch {epoch}; last epoch {last:.4f})")
    else:
        echo(f"  val bbox/AP: {last if last is not None else 'n/a'}")
    if job.get("error"):
        echo(f"  error:       {job['error']}")


def wait_for_job(client: ApiClient, job_id: str, *, poll_s: float = 2.0) -> dict[str, Any]:
    """Poll the job, printing a progress line on change, until it ends."""
    last = ""
    while True:
        job = client.call("GET", f"/api/v1/finetune-jobs/{job_id}")
        line = _progress_line(job)
        if line != last:
            typer.echo(f"[{time.strftime('%H:%M:%S')}] {line}", err=True)
            last = line
        if job["state"] in TERMINAL:
            return dict(job)
        time.sleep(poll_s)


@finetune_app.command("submit")
def finetune_submit(
    dataset: Annotated[str | None, typer.Option(help="Dataset folder or s3:// prefix.")] = None,
    spec_file: Annotated[Path | None, typer.Option(help="A JSON FinetuneSpec.")] = None,
    model_size: Annotated[str | None, typer.Option(help="nano, small, medium, large")] = None,
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
    for item in set_ or []:
        field, _, raw = item.partition("=")
        try:
            spec[field] = json.loads(raw)
        except json.JSONDecodeError:
            spec[field] = raw
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
    while True:
        job = client.call("GET", path)
        if job["state"] in TERMINAL:
            return dict(job)
        time.sleep(2.0)


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
        typer.echo(
            f"{r['created_at'][:19]} {r['target']:<12} {r['backend']:<11} "
            f"{r['resolution']:>4}px p50 {r['p50_ms']:.1f} p95 {r['p95_ms']:.1f} ms "
            f"torch {r['environment'].get('torch')} sha {r['checkpoint_sha256'][:12]}"
        )


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


# The registry and sweep commands live in their own modules (they share cli_client with this one).
from detrforge import cli_registry  # noqa: E402

cli_registry.install(app)

# The sweep commands too (`detrforge sweep ...`).
from detrforge import cli_sweep  # noqa: E402

cli_sweep.install(app)

if __name__ == "__main__":
    app()
