"""Sweep efficiency: the same search space with ASHA vs without a scheduler (the full grid).

Both sweeps run the real sweep job (``python -m detrforge.jobs.sweep``: Ray Tune, rfdetr
training, a latency measurement per trial) on one local Ray head started here, with the same
seed, dataset, space and trial resources. Printed: total trial-epochs, wall time, the best
configuration of each (by the sweep objective, AP then validation loss, and by AP alone) and
whether they match, and the compute ratio ASHA / grid in trial-epochs. Target: ASHA finds the
same best configuration with <= 40% of the grid's trial-epochs.

    .venv/bin/python bench/sweep_efficiency.py                 # sized for a 2-core CPU box
    .venv/bin/python bench/sweep_efficiency.py --max-epochs 9 --reduction-factor 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BASE_ENV = {"HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="nano,small")
    p.add_argument("--resolutions", default="128,160")
    p.add_argument("--lrs", default="2e-4,1e-3", help="learning rates in the grid")
    p.add_argument("--max-epochs", type=int, default=9)
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=float, default=3.0)
    p.add_argument("--train-images", type=int, default=8)
    p.add_argument("--valid-images", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=2, help="max concurrent trials")
    p.add_argument("--cpu-per-trial", type=float, default=0.5)
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray head")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--keep-tmp", action="store_true")
    p.add_argument(
        "--reuse-asha",
        type=Path,
        default=None,
        help="an earlier ASHA sweep/result.json of the same arguments: run only the grid",
    )
    return p.parse_args(argv)


def sweep_spec(args: argparse.Namespace, dataset: Path, scheduler: str) -> dict[str, Any]:
    return {
        "dataset": str(dataset),
        "space": {
            "model_size": args.sizes.split(","),
            "resolution": [int(r) for r in args.resolutions.split(",")],
            "lr": [float(x) for x in args.lrs.split(",")],
        },
        "base": {"num_queries": 50, "group_detr": 1, "batch_size": 4, "epochs": args.max_epochs},
        "scheduler": {
            "type": scheduler,
            "grace_period": args.grace_period,
            "reduction_factor": args.reduction_factor,
            "max_epochs": args.max_epochs,
        },
        "search": "grid",
        "target": "bench-cpu",
        "target_resources": {"CPU": 1},
        "bench_threads": 1,
        "bench_warmup": 1,
        "bench_runs": 5,
        "max_concurrent_trials": args.concurrency,
        "resources_per_trial": {"cpu": args.cpu_per_trial},
        "seed": args.seed,
    }


def run_sweep(spec: dict[str, Any], *, home: Path, head: Any, label: str) -> dict[str, Any]:
    from detrforge.platform.cluster import ray_client_env

    job_id = f"sw-{label}-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        **ray_client_env(),  # loopback only, as every process talking to the embedded head
        "RAY_ADDRESS": head.address,
        "DETRFORGE_HOME": str(home),
        "DETRFORGE_ARTIFACT_ROOT": (home / "artifacts").as_uri(),
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
    }
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"{label}.log"
    started = time.monotonic()
    with log.open("wb") as out:
        rc = subprocess.call(
            [
                sys.executable,
                "-m",
                "detrforge.jobs.sweep",
                "--job-id",
                job_id,
                "--spec",
                json.dumps(spec),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wall = time.monotonic() - started
    if rc != 0:
        raise SystemExit(f"{label} sweep failed (exit {rc}); see {log}")
    from detrforge.platform.tracking import Tracker

    tracker = Tracker(env["MLFLOW_TRACKING_URI"])
    run_id = tracker.find_job_run(job_id)
    assert run_id is not None
    with tempfile.TemporaryDirectory() as tmp:
        local = tracker.client.download_artifacts(run_id, "sweep/result.json", tmp)
        result: dict[str, Any] = json.loads(Path(local).read_text())
    result["driver_wall_s"] = wall
    return result


def config_of(result: dict[str, Any], trial_id: str | None) -> str:
    if trial_id is None:
        return "none"
    trial = next(t for t in result["trials"] if t["trial_id"] == trial_id)
    params = ", ".join(f"{k}={v}" for k, v in sorted(trial["params"].items()))
    return f"{{{params}}}"


def describe(label: str, result: dict[str, Any]) -> None:
    print(
        f"\n== {label}: {len(result['trials'])} trials, {result['trial_epochs']} trial-epochs, "
        f"{result['stopped_early']} stopped early, wall {result['driver_wall_s']:.0f} s"
    )
    print(
        f"   {'config':<48} {'state':<14} {'epochs':>6} {'best AP':>8} {'score':>10} {'p95 ms':>7}"
    )
    for t in sorted(result["trials"], key=lambda t: json.dumps(t["params"], sort_keys=True)):
        score = t["best_score"]
        print(
            f"   {config_of(result, t['trial_id']):<48} {t['state']:<14} {t['epochs']:>6} "
            f"{(t['best_ap'] or 0):>8.4f} {(score if score is not None else float('nan')):>10.6f} "
            f"{(t['p95_ms'] or float('nan')):>7.1f}"
        )
    best = result["best"]
    print(f"   best by objective (AP, then val loss): {config_of(result, result['best_by_score'])}")
    print(f"   best by AP: {config_of(result, best['key'] if best else None)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(BASE_ENV)
    os.environ.pop("RAY_ADDRESS", None)
    from detrforge.detector.synthetic import synth_dataset
    from detrforge.platform.cluster import LocalRayHead

    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"host: {os.cpu_count()} CPUs, load average at start {os.getloadavg()}")
    tmp = Path(tempfile.mkdtemp(prefix="dfsw-", dir="/tmp"))
    head = LocalRayHead(
        temp_dir=tmp / "ray",
        gcs_port=free_port(),
        dashboard_port=free_port(),
        num_cpus=args.num_cpus,
    )
    try:
        dataset = tmp / "ds"
        synth_dataset(
            dataset,
            seed=0,
            train_images=args.train_images,
            valid_images=args.valid_images,
            image_size=max(int(r) for r in args.resolutions.split(",")),
        )
        head.start()
        asha_spec = sweep_spec(args, dataset, "asha")
        print(f"space: {json.dumps(asha_spec['space'])}; base {json.dumps(asha_spec['base'])}")
        print(
            f"ASHA: grace {args.grace_period}, reduction factor {args.reduction_factor}, "
            f"max {args.max_epochs} epochs; {args.concurrency} concurrent trials x "
            f"{args.cpu_per_trial} CPU on a {args.num_cpus}-CPU head; seed {args.seed}",
            flush=True,
        )
        if args.reuse_asha is not None:
            asha = json.loads(args.reuse_asha.read_text())
            asha.setdefault("driver_wall_s", asha["wall_s"])
            print(f"ASHA result reused from {args.reuse_asha} (job {asha['job_id']})")
        else:
            asha = run_sweep(asha_spec, home=tmp / "home", head=head, label="asha")
        describe("ASHA", asha)
        grid = run_sweep(
            sweep_spec(args, dataset, "none"), home=tmp / "home", head=head, label="grid"
        )
        describe("grid (no scheduler)", grid)
    finally:
        head.stop()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    ratio = asha["trial_epochs"] / grid["trial_epochs"]
    same_obj = config_of(asha, asha["best_by_score"]) == config_of(grid, grid["best_by_score"])
    same_ap = config_of(asha, (asha["best"] or {}).get("key")) == config_of(
        grid, (grid["best"] or {}).get("key")
    )
    print("\n== summary")
    print(
        f"   trial-epochs: ASHA {asha['trial_epochs']} vs grid {grid['trial_epochs']}; "
        f"compute ratio {ratio:.2f} ({ratio:.0%} of the grid)"
    )
    print(
        f"   wall time: ASHA {asha['driver_wall_s']:.0f} s vs grid {grid['driver_wall_s']:.0f} s "
        f"(ratio {asha['driver_wall_s'] / grid['driver_wall_s']:.2f})"
    )
    print(
        f"   same best configuration by objective: {'yes' if same_obj else 'NO'}; "
        f"by AP alone: {'yes' if same_ap else 'NO'}"
    )
    met = same_obj and ratio <= 0.40
    print(
        f"   target (same best with <= 40% of the grid's trial-epochs): "
        f"{'met' if met else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
