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
from dataclasses import dataclass
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
    """rfdetr's own ``train()``; per-epoch images/s go as JSON to ``params['out']``."""
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
        trainer: Any = original(*args, **kwargs)
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


class ProcessSampler:
    """Every 0.5 s: peak RSS and CPU of the training processes; CPU of the Ray head's others.

    ``is_trainer(proc, under_head)`` picks the training processes; ``under_head`` is the set of
    pids below the Ray head (ours only: other Ray clusters may be running on this host).
    """

    def __init__(self, is_trainer: Any, head_pid: int, *, also: set[int] | None = None) -> None:
        self.is_trainer = is_trainer
        self.head_pid = head_pid
        self.also = also or set()  # more background processes (the job driver)
        self.peak: dict[int, int] = {}
        # pid -> ((t, cpu_s) first seen, (t, cpu_s) last seen), for the training processes
        self.cpu: dict[int, tuple[tuple[float, float], tuple[float, float]]] = {}
        # pid -> (cpu_s at start or 0 if born later, cpu_s last seen), the head's other processes
        self.background: dict[int, tuple[float, float]] = {}
        self.names: dict[int, str] = {}
        self._ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._tick()
            self._stop.wait(SAMPLE_EVERY_S)

    def _tick(self) -> None:
        import psutil

        try:
            head = psutil.Process(self.head_pid)
            under_head = {head.pid, *(c.pid for c in head.children(recursive=True))}
        except psutil.NoSuchProcess:
            under_head = set()
        background = under_head | self.also
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                # Once a trainer, always one: an exiting Ray worker drops its actor title.
                trainer = proc.pid in self.cpu or self.is_trainer(proc, under_head)
                if not trainer and proc.pid not in background:
                    continue
                times = proc.cpu_times()
                cpu_s = times.user + times.system
                if trainer:
                    rss = proc.memory_info().rss
                    self.peak[proc.pid] = max(self.peak.get(proc.pid, 0), rss)
                    point = (time.monotonic(), cpu_s)
                    self.cpu[proc.pid] = (self.cpu.get(proc.pid, (point, point))[0], point)
                    self.background.pop(proc.pid, None)  # a pre-started Ray worker turned trainer
                else:
                    start = self.background.get(proc.pid, (0.0 if self._ticks else cpu_s, 0.0))
                    self.background[proc.pid] = (start[0], cpu_s)
                    if proc.pid not in self.names:
                        self.names[proc.pid] = _short_name(proc.info["cmdline"] or [])
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        self._ticks += 1

    def peaks_mb(self) -> list[float]:
        return sorted((v / 2**20 for v in self.peak.values()), reverse=True)

    def cpu_util(self) -> list[float]:
        """Cores each training process kept busy over its sampled life."""
        return [(c1 - c0) / (t1 - t0) for (t0, c0), (t1, c1) in self.cpu.values() if t1 - t0 > 1.0]

    def background_cpu_s(self) -> float:
        return sum(last - first for first, last in self.background.values())

    def top_background(self, n: int = 4) -> list[tuple[str, float]]:
        """The ``n`` process kinds that used the most background CPU seconds."""
        by_name: dict[str, float] = {}
        for pid, (first, last) in self.background.items():
            name = self.names.get(pid, "?")
            by_name[name] = by_name.get(name, 0.0) + last - first
        return sorted(by_name.items(), key=lambda kv: -kv[1])[:n]


def _short_name(cmdline: list[str]) -> str:
    """``ray::TrainController.run``, ``gcs_server``, ``python -m detrforge.jobs.finetune``..."""
    if not cmdline:
        return "?"
    first = cmdline[0]
    if first.startswith("ray::"):
        return first.split()[0].split(".")[0]
    if "-m" in cmdline[:3]:
        return "python -m " + cmdline[cmdline.index("-m") + 1]
    for arg in cmdline[:3]:
        if arg.endswith(".py"):
            return Path(arg).name
    return Path(first).name


# -- one run of each side ------------------------------------------------------------------------


@dataclass
class RunResult:
    side: str
    workers: int
    img_s: list[float]
    wall_s: float
    rss_mb: list[float]
    cpu_util: list[float]
    ray_bg_cpu_s: float
    top_bg: list[tuple[str, float]]
    note: str = ""

    @property
    def steady(self) -> float:
        return steady(self.img_s)


def _run_sampled(
    cmd: list[str],
    *,
    env: dict[str, str],
    log: Path,
    head_pid: int,
    is_trainer: Any,
    driver_is_trainer: bool,
) -> tuple[int, float, ProcessSampler]:
    """Run ``cmd`` to the end while sampling; returns exit code, wall seconds and the samples."""
    started = time.monotonic()
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            if driver_is_trainer:
                sampler = ProcessSampler(lambda p, _: p.pid == proc.pid, head_pid)
            else:
                sampler = ProcessSampler(is_trainer, head_pid, also={proc.pid})
            with sampler:
                rc = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: leave nothing behind
                proc.kill()
                proc.wait()
    return rc, time.monotonic() - started, sampler


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_rfdetr(
    args: argparse.Namespace, tmp: Path, dataset: Path, head: Any, tag: str
) -> RunResult:
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
    rc, wall, sampler = _run_sampled(
        [sys.executable, __file__, "--rfdetr-child", json.dumps(params)],
        env=env,
        log=log,
        head_pid=head.process.pid,
        is_trainer=None,
        driver_is_trainer=True,
    )
    shutil.rmtree(output_dir, ignore_errors=True)
    if rc != 0 or not out.exists():
        raise RuntimeError(f"rfdetr child failed (rc={rc}); log tail:\n{_tail(log)}")
    data = json.loads(out.read_text())
    note = ""
    if data["actual_img_s"] != data["img_s"]:
        note = f"actual-batch img/s {steady(data['actual_img_s']):.2f}"
    return RunResult(
        side="rfdetr",
        workers=1,
        img_s=data["img_s"],
        wall_s=wall,
        rss_mb=sampler.peaks_mb(),
        cpu_util=sampler.cpu_util(),
        ray_bg_cpu_s=sampler.background_cpu_s(),
        top_bg=sampler.top_background(),
        note=note,
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

    def is_our_worker(p: Any, under_head: set[int]) -> bool:
        return p.pid in under_head and "RayTrainWorker" in " ".join(p.info["cmdline"] or [])

    rc, wall, sampler = _run_sampled(
        [
            sys.executable,
            "-m",
            "detrforge.jobs.finetune",
            "--job-id",
            job_id,
            "--spec",
            json.dumps(spec),
        ],
        env=env,
        log=log,
        head_pid=head.process.pid,
        is_trainer=is_our_worker,
        driver_is_trainer=False,
    )
    # The job's checkpoints (Ray storage) and published model are ~120 MB each: drop them now.
    shutil.rmtree(tmp / "artifacts" / "ray" / job_id, ignore_errors=True)
    shutil.rmtree(tmp / "artifacts" / "jobs" / job_id, ignore_errors=True)
    tracker = Tracker(tracking_uri)
    run_id = tracker.find_job_run(job_id)
    if rc != 0 or run_id is None:
        raise RuntimeError(f"detrforge job {job_id} failed (rc={rc}); log tail:\n{_tail(log)}")
    history = sorted(tracker.history(run_id, "throughput/img_s"))
    shutil.rmtree(tmp / "artifacts" / "mlflow", ignore_errors=True)
    return RunResult(
        side="detrforge",
        workers=workers,
        img_s=[v for _, v in history],
        wall_s=wall,
        rss_mb=sampler.peaks_mb(),
        cpu_util=sampler.cpu_util(),
        ray_bg_cpu_s=sampler.background_cpu_s(),
        top_bg=sampler.top_background(),
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
    util = "/".join(f"{u:.2f}" for u in r.cpu_util) or "n/a"
    return (
        f"  {r.side:<10} W={r.workers}  img/s {r.steady:6.2f}  per-epoch [{epochs}]  "
        f"peak RSS MB/worker {rss:>9}  cpu util {util:>9}  wall {r.wall_s:5.1f}s  "
        f"ray-bg cpu {r.ray_bg_cpu_s:4.1f}s" + (f"  ({r.note})" if r.note else "")
    )


def fmt_background(r: RunResult) -> str:
    top = ", ".join(f"{name} {cpu:.1f}s" for name, cpu in r.top_bg if cpu >= 0.5)
    return f"      top ray-bg ({r.side} W={r.workers}): {top or 'none'}"


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
        "--extra-workers",
        type=int,
        default=2,
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
    if args.extra_workers == args.workers:
        args.extra_workers = 0  # the extra row would only repeat the compared one
    if args.rfdetr_child is not None:
        os.environ.update(BASE_ENV)
        return rfdetr_child(json.loads(args.rfdetr_child))

    os.environ.update(BASE_ENV)  # the Ray head (and so its workers) inherits these
    os.environ.pop("RAY_ADDRESS", None)
    from detrforge.detector.synthetic import synth_dataset
    from detrforge.platform.cluster import LocalRayHead

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
            dataset,
            seed=0,
            train_images=args.train_images,
            valid_images=args.valid_images,
            image_size=args.resolution,
        )
        t0 = time.monotonic()
        head.start()
        print(f"ray head at {head.address} up in {time.monotonic() - t0:.1f}s", flush=True)
        print(
            "columns: img/s = mean over epochs after the first; cpu util = cores the training "
            "process kept busy over its life (below --threads means it waited for a CPU); "
            "wall = whole run incl. startup; ray-bg cpu = CPU seconds used meanwhile by the "
            "Ray head's other processes and the job driver",
            flush=True,
        )
        for i in range(args.repeats):
            results = [
                run_detrforge(args, tmp, dataset, head, args.workers, f"{i}a"),
                run_rfdetr(args, tmp, dataset, head, f"{i}"),
            ]
            if args.extra_workers > 0:
                results.append(run_detrforge(args, tmp, dataset, head, args.extra_workers, f"{i}b"))
            rounds.append(results)
            print(f"\nround {i + 1}/{args.repeats}  (load average {os.getloadavg()[0]:.2f})")
            for r in results:
                print(fmt_row(r))
            for r in results:
                if r.side == "detrforge":
                    print(fmt_background(r))
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
