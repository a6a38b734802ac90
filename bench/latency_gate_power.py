"""How often the paired p95 ratio gate is wrong on this machine, under a background CPU load.

Each *gate run* is what a promotion's benchmark job does on its target (``jobs.benchmark`` with
a baseline): load both checkpoints afresh in one process, time them paired in ABBA blocks
(:func:`detrforge.detector.paired_latency.measure_paired`) with the policy's defaults (292
samples per arm per round, what p95 needs at 95%; up to 3 rounds while inconclusive), and take
the verdict the gate takes (:func:`detrforge.platform.paired_stats.ratio_verdict`):

- **false refusals**: a checkpoint against a byte-identical copy of itself (another version,
  the same bytes): any ``fail`` is a false refusal, and ``inconclusive`` refuses too;
- **misses**: the same weights at a larger resolution, against ``--limit`` (1.2): any ``pass``
  is a miss. The script measures the true slowdown first, with a long paired run before the
  background load starts, from ``--slow-resolution`` (192 px, 2.25x the pixels of 128) up in
  steps of 32 px until the p95 ratio is at least 1.5.

The background load is a bounded generator the script starts and stops itself: one process per
core, each busy ``--duty`` of every 100 ms (default 50%). The model is an untrained Nano with
seeded weights (latency does not depend on training; nothing is downloaded).

    .venv/bin/python bench/latency_gate_power.py            # 20 + 20 gate runs
    .venv/bin/python bench/latency_gate_power.py --runs 5   # a quicker look
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from latency import save_checkpoint  # noqa: E402  (bench/latency.py, this script's neighbour)
from PIL import Image  # noqa: E402

from detrforge.detector.model import build_detector  # noqa: E402
from detrforge.detector.paired_latency import measure_paired  # noqa: E402
from detrforge.detector.torch_predictor import TorchPredictor  # noqa: E402
from detrforge.platform.environment import capture_environment  # noqa: E402
from detrforge.platform.paired_stats import samples_for_percentile  # noqa: E402

BASE_RESOLUTION = 128


def _busy(duty: float, stop: Any) -> None:
    period = 0.1
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < duty * period:
            pass
        time.sleep((1.0 - duty) * period)


class BackgroundLoad:
    """One busy process per core at ``duty``, started and stopped with the ``with`` block."""

    def __init__(self, duty: float, processes: int) -> None:
        self.duty, self.processes = duty, processes
        self._stop = multiprocessing.Event()
        self._workers: list[multiprocessing.Process] = []

    def __enter__(self) -> BackgroundLoad:
        for _ in range(self.processes if self.duty > 0 else 0):
            worker = multiprocessing.Process(target=_busy, args=(self.duty, self._stop))
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()


def _checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    return save_checkpoint(build_detector("nano", num_classes=2, resolution=BASE_RESOLUTION), path)


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (BASE_RESOLUTION, BASE_RESOLUTION, 3), np.uint8))
        for _ in range(8)
    ]


def gate_run(
    candidate: tuple[Path, int], baseline: tuple[Path, int], args: argparse.Namespace, seed: int
) -> dict[str, Any]:
    """One gate decision as the benchmark job takes it: fresh predictors, paired, verdict."""
    started = time.monotonic()
    arms = [
        TorchPredictor(path, "nano", resolution, num_threads=args.threads)
        for path, resolution in (candidate, baseline)
    ]
    report = measure_paired(
        arms[0],
        arms[1],
        _images(),
        warmup=5,
        runs=args.samples,
        seed=seed,
        max_ratio=args.limit,
        max_rounds=args.max_rounds,
    )
    return {
        "verdict": report.verdict,
        "p95": report.p95,
        "samples": report.candidate.model_only.n,
        "rounds": len(report.rounds),
        "cv": max(report.summary()["arms"][arm]["cv"] for arm in ("candidate", "baseline")),
        "wall_s": time.monotonic() - started,
    }


def true_ratio(slow: tuple[Path, int], base: tuple[Path, int], args: argparse.Namespace) -> Any:
    """The slower candidate's p95 and p50 ratios from one long paired run with no load."""
    arms = [
        TorchPredictor(path, "nano", resolution, num_threads=args.threads)
        for path, resolution in (slow, base)
    ]
    report = measure_paired(arms[0], arms[1], _images(), warmup=10, runs=args.reference_samples)
    return report.intervals


def _line(i: int, kind: str, out: dict[str, Any]) -> str:
    p95 = out["p95"]
    return (
        f"{kind:<12} run {i + 1:>2}: {out['verdict']:<12} p95 ratio {p95.describe()}  "
        f"n={out['samples']:<4} rounds={out['rounds']}  CV {out['cv']:.0%}  "
        f"{out['wall_s']:.0f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="gate runs of each kind")
    parser.add_argument("--limit", type=float, default=1.2, help="the gate's max p95 ratio")
    parser.add_argument("--slow-resolution", type=int, default=192)
    parser.add_argument("--samples", type=int, default=samples_for_percentile(95))
    parser.add_argument("--max-rounds", type=int, default=3)
    parser.add_argument("--reference-samples", type=int, default=600)
    parser.add_argument("--duty", type=float, default=0.5, help="background load per core")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="detrforge-gate-power-"))
    try:
        base = _checkpoint(work / "v1.pth")
        same = shutil.copyfile(base, work / "v2-same-bytes.pth")
        env = capture_environment(backend="torch", precision="fp32")
        print(
            f"== Nano, {args.threads} thread(s), {args.samples} samples per arm per round, up to "
            f"{args.max_rounds} rounds, limit {args.limit}; torch {env.get('torch')}, rfdetr "
            f"{env.get('rfdetr')}, CPU {env.get('cpu_model')} x{os.cpu_count()}"
        )
        # The slower candidate: the first resolution whose p95 is truly >= 1.5x the base's.
        resolution = args.slow_resolution
        while True:
            reference = true_ratio((base, resolution), (base, BASE_RESOLUTION), args)
            print(
                f"== true slowdown of {resolution} px vs {BASE_RESOLUTION} px (no load, "
                f"{args.reference_samples} paired samples per arm): p50 "
                f"{reference['p50'].describe()}, p95 {reference['p95'].describe()}"
            )
            if reference["p95"].ratio >= 1.5 or resolution >= 4 * BASE_RESOLUTION:
                break
            resolution += 32
        slow = (base, resolution)
        cores = os.cpu_count() or 1
        print(f"== background load: {cores} process(es) busy {args.duty:.0%} of every 100 ms")
        results: dict[str, list[dict[str, Any]]] = {"same bytes": [], "slower": []}
        with BackgroundLoad(args.duty, cores):
            for i in range(args.runs):
                for kind, candidate in (("same bytes", (same, BASE_RESOLUTION)), ("slower", slow)):
                    out = gate_run(candidate, (base, BASE_RESOLUTION), args, seed=1000 + i)
                    results[kind].append(out)
                    print(_line(i, kind, out), flush=True)
        print("\n== confusion matrix (rows: truth; columns: the gate's verdict)")
        print(f"{'':<34}{'pass':>8}{'fail':>8}{'inconclusive':>14}")
        for kind, label in (
            ("same bytes", "same bytes (should pass)"),
            ("slower", f"{reference['p95'].ratio:.2f}x slower (should fail)"),
        ):
            counts = [sum(r["verdict"] == v for r in results[kind]) for v in ("pass", "fail")]
            inconclusive = sum(r["verdict"] == "inconclusive" for r in results[kind])
            print(f"{label:<34}{counts[0]:>8}{counts[1]:>8}{inconclusive:>14}")
        same_runs, slow_runs = results["same bytes"], results["slower"]
        false_refusals = sum(r["verdict"] == "fail" for r in same_runs)
        inconclusive = sum(r["verdict"] == "inconclusive" for r in same_runs)
        misses = sum(r["verdict"] == "pass" for r in slow_runs)
        print(
            f"false refusals {false_refusals}/{len(same_runs)} (target <= 1), inconclusive "
            f"{inconclusive}/{len(same_runs)} (target <= 3), misses {misses}/{len(slow_runs)} "
            "(target 0)"
        )
        for kind, runs in results.items():
            walls = [r["wall_s"] for r in runs]
            samples = sorted({r["samples"] for r in runs})
            print(
                f"{kind}: wall per gate run median {np.median(walls):.0f} s, max "
                f"{max(walls):.0f} s; samples per arm chosen {samples}"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
