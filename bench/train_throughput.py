"""Training throughput: a detrforge fine-tune job vs rfdetr's own ``model.train()``, alternating.

Both sides train the same RF-DETR size on the same synthetic dataset with the same resolution,
batch size, queries, groups, learning rate, seed and thread count, on this machine, in one
invocation: detrforge, rfdetr, detrforge, rfdetr ... for ``--repeats`` rounds. Prints per-round
tables and a summary (images/s, the detrforge/rfdetr ratio, peak RSS per training process).

One definition of images/s on both sides, the one ``DetrforgeCallback`` logs as
``throughput/img_s``: per epoch, images of the training batches divided by the time from
``on_train_epoch_start`` to the last ``on_train_batch_end`` (validation, checkpointing, model
build and process/cluster startup excluded). The figure compared is the mean over the epochs
after the first (all epochs when there is one). rfdetr gets a callback with exactly that logic,
appended to the Trainer its ``train()`` builds; detrforge's figure is read back from MLflow.

    .venv/bin/python bench/train_throughput.py            # defaults sized for a 2-core CPU box
    .venv/bin/python bench/train_throughput.py --repeats 3 --resolution 256 --extra-workers 0
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

# Offline, no telemetry, the embedded head's loopback/auth settings (see platform/cluster.py).
BASE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}
RESERVED_PORTS = {6379, 6390, 8265, 8275}  # Redis, the defaults of ours and of Ray's
SAMPLE_EVERY_S = 0.5


# -- shared measurement rule ---------------------------------------------------------------------


def steady(values: list[float]) -> float:
    """Mean over the epochs after the first; all epochs when there is only one."""
    if not values:
        return float("nan")
    return statistics.fmean(values[1:] if len(values) > 1 else values)


# -- rfdetr side (runs in a fresh child process) -------------------------------------------------


def rfdetr_child(params: dict[str, Any]) -> int:
    """Train with rfdetr's own ``train()``; write per-epoch images/s as JSON to ``params['out']``."""
    import pytorch_lightning as pl
    import torch

    torch.set_num_threads(params["threads"])
    import rfdetr.training
    from rfdetr import RFDETRNano

    class EpochThroughput(pl.Callback):
        """The timing logic of ``detrforge.jobs.callbacks.DetrforgeCallback``, nothing else."""

        def __init__(self, batch_size: int) -> None:
            self.batch_size = batch_size
            self.epoch_started = 0.0
            self.train_seconds = 0.0
            self.images = 0
            self.actual_images = 0
            self.img_s: list[float] = []
            self.actual_img_s: list[float] = []
            self.steps: list[int] = []
            self._steps = 0

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.epoch_started = time.monotonic()
            self.images = self.actual_images = self._steps = 0

        def on_train_batch_end(
            self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            self.images += self.batch_size * trainer.world_size
            self.actual_images += len(batch[1]) * trainer.world_size
            self._steps += 1
            self.train_seconds = time.monotonic() - self.epoch_started

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if self.train_seconds > 0:
                self.img_s.append(self.images / self.train_seconds)
                self.actual_img_s.append(self.actual_images / self.train_seconds)
                self.steps.append(self._steps)

    timing = EpochThroughput(params["batch_size"])
    original = rfdetr.training.build_trainer

    def build_trainer_with_timing(*args: Any, **kwargs: Any) -> Any:
        trainer = original(*args, **kwargs)
        trainer.callbacks.append(timing)
        return trainer

    # rfdetr.detr.RFDETR.train imports build_trainer from rfdetr.training at call time.
    rfdetr.training.build_trainer = build_trainer_with_timing
    started = time.monotonic()
    model = RFDETRNano(
        pretrain_weights=None, num_queries=params["num_queries"], group_detr=params["group_detr"]
    )
    model.train(
        dataset_dir=params["dataset"],
        epochs=params["epochs"],
        batch_size=params["batch_size"],
        resolution=params["resolution"],
        device="cpu",
        output_dir=params["output_dir"],
        num_workers=0,
        progress_bar=None,
        lr=params["lr"],
        seed=params["seed"],
    )
    result = {
        "img_s": timing.img_s,
        "actual_img_s": timing.actual_img_s,
        "steps": timing.steps,
        "wall_s": time.monotonic() - started,
        "torch_threads": torch.get_num_threads(),
    }
    Path(params["out"]).write_text(json.dumps(result))
    return 0


# -- process sampling ----------------------------------------------------------------------------


class RssSampler:
    """Every 0.5 s: peak RSS of each process ``match(proc)`` accepts, until ``stop()``."""

    def __init__(self, match: Any) -> None:
        self.match = match
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            for proc in psutil.process_iter(["pid", "cmdline"]):
                try:
                    if self.match(proc):
                        rss = proc.memory_info().rss
                        self.peak[proc.pid] = max(self.peak.get(proc.pid, 0), rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            self._stop.wait(SAMPLE_EVERY_S)

    def peaks_mb(self) -> list[float]:
        return sorted((v / 2**20 for v in self.peak.values()), reverse=True)


def head_tree_cpu_s(head_pid: int, exclude: set[int]) -> dict[int, float]:
    """CPU seconds so far of every process under the Ray head, minus ``exclude``."""
    import psutil

    out: dict[int, float] = {}
    try:
        procs = [psutil.Process(head_pid), *psutil.Process(head_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for proc in procs:
        if proc.pid in exclude:
            continue
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


# -- one run of each side ------------------------------------------------------------------------


@dataclass
class RunResult:
    side: str
    workers: int
    img_s: list[float]
    wall_s: float
    rss_mb: list[float]
    ray_bg_cpu_s: float
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def steady(self) -> float:
        return steady(self.img_s)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_rfdetr(args: argparse.Namespace, tmp: Path, dataset: Path, head: Any, tag: str) -> RunResult:
    out = tmp / f"rfdetr-{tag}.json"
    output_dir = tmp / f"rfdetr-out-{tag}"
    log = tmp / f"rfdetr-{tag}.log"
    params = {
        "dataset": str(dataset),
        "output_dir": str(output_dir),
        "out": str(out),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "resolution": args.resolution,
        "num_queries": args.num_queries,
        "group_detr": args.group_detr,
        "threads": args.threads,
        "lr": args.lr,
        "seed": args.seed,
    }
    # Ray gives its workers OMP_NUM_THREADS = their CPUs; the same here.
    env = {**os.environ, **BASE_ENV, "OMP_NUM_THREADS": str(args.threads)}
    started = time.monotonic()
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--rfdetr-child", json.dumps(params)],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
        bg_before = head_tree_cpu_s(head.process.pid, set())
        with RssSampler(lambda p: p.pid == proc.pid) as sampler:
            rc = proc.wait()
        bg_after = head_tree_cpu_s(head.process.pid, set())
    wall = time.monotonic() - started
    shutil.rmtree(output_dir, ignore_errors=True)
    if rc != 0 or not out.exists():
        raise RuntimeError(f"rfdetr child failed (rc={rc}); log tail:\n{_tail(log)}")
    data = json.loads(out.read_text())
    note = ""
    if data["actual_img_s"] != data["img_s"]:
        note = f"actual-batch img/s {steady(data['actual_img_s']):.2f}"
    return RunResult(
        "rfdetr", 1, data["img_s"], wall, sampler.peaks_mb(), cpu_delta(bg_before, bg_after),
        note, {"steps": data["steps"], "torch_threads": data["torch_threads"]},
    )


def run_detrforge(
    args: argparse.Namespace, tmp: Path, dataset: Path, head: Any, workers: int, tag: str
) -> RunResult:
    from detrforge.platform.cluster import ray_client_env
    from detrforge.platform.tracking import Tracker

    job_id = f"bench-{uuid.uuid4().hex[:12]}"
    spec = {
        "dataset": str(dataset),
        "model_size": "nano",
        "resolution": args.resolution,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "num_queries": args.num_queries,
        "group_detr": args.group_detr,
        "num_workers": workers,
        "threads_per_worker": args.threads,
        "resources_per_worker": {"CPU": float(args.threads)},
        "lr": args.lr,
        "use_ema": True,  # rfdetr's TrainConfig default
        "seed": args.seed,
    }
    tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {
        **os.environ,
        **BASE_ENV,
        **ray_client_env(),
        "RAY_ADDRESS": head.address,
        "DETRFORGE_HOME": str(tmp / "home"),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "DETRFORGE_ARTIFACT_ROOT": (tmp / "artifacts").as_uri(),
        "TMPDIR": str(tmp / "driver-tmp"),  # the job's scratch workdir lands in our tmp
    }
    (tmp / "driver-tmp").mkdir(exist_ok=True)
    log = tmp / f"detrforge-{tag}.log"
    head_pid = head.process.pid

    def is_our_worker(p: Any) -> bool:
        cmd = " ".join(p.info["cmdline"] or [])
        if "RayTrainWorker" not in cmd:
            return False
        # Only workers of our own head: other Ray clusters may be training on this host.
        return any(parent.pid == head_pid for parent in p.parents())

    started = time.monotonic()
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "detrforge.jobs.finetune", "--job-id", job_id,
             "--spec", json.dumps(spec)],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
        with RssSampler(is_our_worker) as sampler:
            bg_before = head_tree_cpu_s(head_pid, set())
            rc = proc.wait()
            bg_after = head_tree_cpu_s(head_pid, set(sampler.peak))
    wall = time.monotonic() - started
    # The job's checkpoints (Ray storage) and published model are ~120 MB each: drop them now.
    shutil.rmtree(tmp / "artifacts" / "ray" / job_id, ignore_errors=True)
    shutil.rmtree(tmp / "artifacts" / "jobs" / job_id, ignore_errors=True)
    tracker = Tracker(tracking_uri)
    run_id = tracker.find_job_run(job_id)
    if rc != 0 or run_id is None:
        raise RuntimeError(f"detrforge job {job_id} failed (rc={rc}); log tail:\n{_tail(log)}")
    history = sorted(tracker.history(run_id, "throughput/img_s"))
    shutil.rmtree(tmp / "artifacts" / "mlflow", ignore_errors=True)
    worker_cpu = cpu_delta(bg_before, bg_after)  # excludes the training workers themselves
    return RunResult(
        "detrforge", workers, [v for _, v in history], wall, sampler.peaks_mb(), worker_cpu,
        extra={"job_id": job_id},
    )


# -- driver ----------------------------------------------------------------------------------------


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED_PORTS:
            return port


def versions() -> str:
    names = ["torch", "rfdetr", "ray", "pytorch-lightning", "mlflow"]
    parts = [f"python {sys.version.split()[0]}"]
    for name in names:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} ?")
    return ", ".join(parts)


def fmt_row(r: RunResult) -> str:
    epochs = " ".join(f"{v:6.2f}" for v in r.img_s)
    rss = "/".join(f"{m:.0f}" for m in r.rss_mb) or "n/a"
    return (
        f"  {r.side:<10} W={r.workers}  img/s {r.steady:7.2f}  per-epoch [{epochs}]  "
        f"peak RSS MB/worker {rss:>9}  wall {r.wall_s:6.1f}s  ray-bg cpu {r.ray_bg_cpu_s:5.1f}s"
        + (f"  ({r.note})" if r.note else "")
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--train-images", type=int, default=32)
    p.add_argument("--valid-images", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--num-queries", type=int, default=50)
    p.add_argument("--group-detr", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    p.add_argument("--workers", type=int, default=1, help="detrforge DDP workers (compared row)")
    p.add_argument(
        "--extra-workers", type=int, default=2,
        help="also run detrforge with this many workers each round (0: skip)",
    )
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=42, help="FinetuneSpec's default seed")
    p.add_argument("--keep-tmp", action="store_true", help="keep the scratch folder (debugging)")
    p.add_argument("--rfdetr-child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rfdetr_child is not None:
        os.environ.update(BASE_ENV)
        return rfdetr_child(json.loads(args.rfdetr_child))

    os.environ.update(BASE_ENV)  # the Ray head (and so its workers) inherits these
    os.environ.pop("RAY_ADDRESS", None)
    from detrforge.platform.cluster import LocalRayHead
    from detrforge.platform.data import synth_dataset

    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}")
    print(f"versions: {versions()}")
    print(f"host: {os.cpu_count()} CPUs, load average at start {os.getloadavg()}")
    print(
        f"config: nano res={args.resolution} train_images={args.train_images} "
        f"batch={args.batch_size} epochs={args.epochs} queries={args.num_queries} "
        f"group_detr={args.group_detr} threads={args.threads} lr={args.lr} seed={args.seed} "
        f"use_ema=True; detrforge W={args.workers} (+W={args.extra_workers} extra row)",
        flush=True,
    )
    # Short path: Ray's unix sockets live under the head's temp dir (108-byte limit).
    tmp = Path(tempfile.mkdtemp(prefix="dfb-", dir="/tmp"))
    max_workers = max(args.workers, args.extra_workers)
    head = LocalRayHead(
        temp_dir=tmp / "ray",
        gcs_port=free_port(),
        dashboard_port=free_port(),
        num_cpus=max_workers * args.threads,
    )
    rounds: list[list[RunResult]] = []
    try:
        dataset = tmp / "ds"
        synth_dataset(
            dataset, seed=0, train_images=args.train_images, valid_images=args.valid_images,
            image_size=args.resolution,
        )
        t0 = time.monotonic()
        head.start()
        print(f"ray head at {head.address} up in {time.monotonic() - t0:.1f}s", flush=True)
        for i in range(args.repeats):
            results = [
                run_detrforge(args, tmp, dataset, head, args.workers, f"{i}a"),
                run_rfdetr(args, tmp, dataset, head, f"{i}"),
            ]
            if args.extra_workers > 0:
                results.append(run_detrforge(args, tmp, dataset, head, args.extra_workers, f"{i}b"))
            rounds.append(results)
            print(f"\nround {i + 1}/{args.repeats}")
            for r in results:
                print(fmt_row(r))
            ratio = results[0].steady / results[1].steady
            print(f"  ratio detrforge/rfdetr (W={args.workers}): {ratio:.3f}", flush=True)
    finally:
        head.stop()
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    def summary(select: Any) -> tuple[float, list[float], float]:
        rows = [r for rs in rounds for r in rs if select(r)]
        values = [r.steady for r in rows]
        return statistics.fmean(values), values, max(max(r.rss_mb, default=0.0) for r in rows)

    df, df_all, df_rss = summary(lambda r: r.side == "detrforge" and r.workers == args.workers)
    rf, rf_all, rf_rss = summary(lambda r: r.side == "rfdetr")
    print("\nsummary (img/s: mean over epochs after the first, then mean over rounds)")
    print(
        f"  detrforge W={args.workers}: {df:7.2f} img/s  rounds {[round(v, 2) for v in df_all]}  "
        f"peak RSS/worker {df_rss:.0f} MB"
    )
    print(
        f"  rfdetr    train(): {rf:7.2f} img/s  rounds {[round(v, 2) for v in rf_all]}  "
        f"peak RSS/worker {rf_rss:.0f} MB"
    )
    print(f"  ratio detrforge/rfdetr: {df / rf:.3f}  (target >= 0.95)")
    print(f"  per-round ratios: {[round(a / b, 3) for a, b in zip(df_all, rf_all, strict=True)]}")
    if args.extra_workers > 0:
        ex, ex_all, ex_rss = summary(
            lambda r: r.side == "detrforge" and r.workers == args.extra_workers
        )
        print(
            f"  detrforge W={args.extra_workers}: {ex:7.2f} img/s (all workers together)  rounds "
            f"{[round(v, 2) for v in ex_all]}  peak RSS/worker {ex_rss:.0f} MB"
        )
    print(f"load average at end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
