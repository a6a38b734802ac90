"""Registry read load: "the production version of model M" through our API vs MLflow's server.

One invocation starts two servers as subprocesses on free loopback ports, each on its own fresh
database of the same kind (``--db sqlite``: one SQLite file each; ``--db postgresql``: one new
PostgreSQL database each, dropped at the end):

- ``ours``:   ``detrforge serve`` (one uvicorn worker; ``DETRFORGE_RAY_ADDRESS`` points at a
  closed port so no Ray head starts, registry reads do not need Ray), route
  ``GET /api/v1/models/{name}/aliases/production`` with a viewer key (``Authorization: Bearer``);
- ``mlflow``: ``mlflow server --workers 1`` (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``), REST
  ``GET /api/2.0/mlflow/registered-models/alias?name=M&alias=production``.

Both registries hold ``--models`` models x ``--versions`` versions with the same version of each
model in production (``1 + 7 * i % versions``, so not always the latest). Ours is populated
through the registry stores directly (register, then request/update/finish a passing promotion)
before its server starts; MLflow's through ``MlflowClient`` over REST, one model per thread
(``create_registered_model``, ``create_model_version`` with an ``s3://`` source, since MLflow
refuses local sources without a run, and ``set_registered_model_alias``).

Each measured run: ``--clients`` threads, one keep-alive ``httpx.Client`` each, request the
production version of a uniformly random model back to back for ``--warmup`` + ``--duration``
seconds. Only requests that start after the warmup and end before the deadline count. Every
response must be 200 and name the expected version; anything else (or a transport error) is
counted as an error. Latency is client-side wall time per request; percentiles are numpy's linear
interpolation. The sides alternate (ours, mlflow, ours, mlflow for ``--rounds 2``) so load drift
on a shared machine shows up in the per-run rows; the pooled rows merge each side's runs. The
clients run in this process and share the CPUs with the server under test, alike for both sides.

    .venv/bin/python bench/registry_load.py                     # SQLite, 50 x 20, 16 clients, 20 s
    .venv/bin/python bench/registry_load.py --db postgresql     # two fresh PostgreSQL databases
    .venv/bin/python bench/registry_load.py --duration 5 --rounds 1 --models 10 --versions 5
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402

VENV_BIN = Path(sys.executable).parent
ACTOR = "key:bench-registry-load"
STARTUP_TIMEOUT_S = 180.0


# -- environment ---------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def production_version(index: int, versions: int) -> int:
    """The version of model ``index`` that is in production, on both sides."""
    return 1 + (7 * index) % versions


def model_name(index: int) -> str:
    return f"bench-model-{index:03d}"


# -- databases -----------------------------------------------------------------------------------
@contextmanager
def databases(kind: str, workdir: Path, admin_url: str) -> Iterator[tuple[str, str]]:
    """Two fresh databases of ``kind`` (ours, MLflow's) as SQLAlchemy URLs; removed afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'ours.db'}", f"sqlite:///{workdir / 'mlflow.db'}"
        return
    import psycopg
    from sqlalchemy import make_url

    tag = secrets.token_hex(4)
    names = [f"bench_registry_ours_{tag}", f"bench_registry_mlflow_{tag}"]
    base = make_url(admin_url)
    created: list[str] = []
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for name in names:
                conn.execute(f'CREATE DATABASE "{name}"')
                created.append(name)
        ours = base.set(drivername="postgresql", database=names[0])
        # MLflow's default PostgreSQL driver is psycopg2, which is not installed: name psycopg 3.
        theirs = base.set(drivername="postgresql+psycopg", database=names[1])
        yield (
            ours.render_as_string(hide_password=False),
            theirs.render_as_string(hide_password=False),
        )
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for name in created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- servers -------------------------------------------------------------------------------------
@contextmanager
def server(name: str, argv: list[str], env: dict[str, str], log_path: Path) -> Iterator[None]:
    """A subprocess in its own process group; the whole group is stopped on the way out."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        yield
    finally:
        for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
        # uvicorn children of MLflow's launcher share the group; make sure none is left behind.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_healthy(name: str, url: str, log_path: Path) -> float:
    start = time.perf_counter()
    deadline = start + STARTUP_TIMEOUT_S
    with httpx.Client(timeout=2.0) as client:
        while time.perf_counter() < deadline:
            try:
                if client.get(url).status_code == 200:
                    return time.perf_counter() - start
            except httpx.TransportError:
                pass
            time.sleep(0.25)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(
        f"{name} did not become healthy at {url} in {STARTUP_TIMEOUT_S:.0f} s:\n{tail}"
    )


# -- population ----------------------------------------------------------------------------------
def populate_ours(url: str, models: int, versions: int) -> tuple[str, float]:
    """Fill our registry directly through its stores; returns a viewer key and seconds."""
    from detrforge.platform.db import make_engine, make_session_factory, upgrade_database
    from detrforge.registry.entities import PromotionState, Role
    from detrforge.registry.keys import KeyStore
    from detrforge.registry.models import ModelStore
    from detrforge.registry.promotions import PromotionStore

    upgrade_database(url)
    engine = make_engine(url)
    try:
        sessions = make_session_factory(engine)
        registry = ModelStore(sessions)
        promotions = PromotionStore(sessions)
        start = time.perf_counter()
        for i in range(models):
            name = model_name(i)
            registry.create_model(name, description="registry_load bench", actor=ACTOR)
            for v in range(1, versions + 1):
                registry.register_version(
                    name,
                    checkpoint_uri=f"s3://bench/{name}/{v}.pth",
                    checkpoint_sha256=f"{i * 1000 + v:064x}",
                    checkpoint_bytes=1000 + v,
                    model_size="nano",
                    resolution=384,
                    class_names=["square"],
                    params={"lr": 5e-4},
                    actor=ACTOR,
                )
            promotion = promotions.request(
                name, production_version(i, versions), "production", actor=ACTOR, reason="bench"
            )
            promotions.update(promotion.id, state=PromotionState.running)
            promotions.finish(promotion.id, gate_results=[], passed=True, message="bench: no gates")
        seconds = time.perf_counter() - start
        _, secret = KeyStore(sessions).create(name="bench-viewer", role=Role.viewer)
        return secret, seconds
    finally:
        engine.dispose()


def populate_mlflow(tracking_uri: str, models: int, versions: int, threads: int) -> float:
    """Fill MLflow's registry over REST, one model per thread; returns seconds."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def one(i: int) -> None:
        name = model_name(i)
        client.create_registered_model(name, description="registry_load bench")
        for v in range(1, versions + 1):
            mv = client.create_model_version(
                name, source=f"s3://bench/{name}/{v}.pth", run_id=None, await_creation_for=0
            )
            if int(mv.version) != v:
                raise RuntimeError(f"MLflow numbered {name} version {mv.version}, expected {v}")
        client.set_registered_model_alias(name, "production", str(production_version(i, versions)))

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(models)))
    return time.perf_counter() - start


# -- load ----------------------------------------------------------------------------------------
@dataclass
class Side:
    name: str
    base_url: str
    headers: dict[str, str]
    path: Callable[[str], str]
    version_of: Callable[[Any], int]


@dataclass
class RunResult:
    side: str
    duration_s: float
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies_s) + self.errors

    @property
    def rps(self) -> float:
        return len(self.latencies_s) / self.duration_s

    def pct_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        return float(np.percentile(np.asarray(self.latencies_s), q) * 1000.0)


def run_load(
    side: Side,
    *,
    models: int,
    versions: int,
    clients: int,
    duration: float,
    warmup: float,
    seed: int,
) -> RunResult:
    expected = {model_name(i): production_version(i, versions) for i in range(models)}
    names = sorted(expected)
    barrier = threading.Barrier(clients + 1)
    window: dict[str, float] = {}
    per_thread: list[RunResult] = [RunResult(side.name, duration) for _ in range(clients)]

    def client_loop(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        out = per_thread[k]
        with httpx.Client(
            base_url=side.base_url,
            headers=side.headers,
            timeout=30.0,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        ) as client:
            barrier.wait()
            begin, end = window["begin"], window["end"]
            while True:
                name = rng.choice(names)
                t0 = time.perf_counter()
                if t0 >= end:
                    return
                error: str | None = None
                try:
                    response = client.get(side.path(name))
                    if response.status_code != 200:
                        error = f"HTTP {response.status_code}: {response.text[:200]}"
                    else:
                        got = side.version_of(response.json())
                        if got != expected[name]:
                            error = f"{name}: version {got}, expected {expected[name]}"
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                t1 = time.perf_counter()
                if t0 < begin or t1 > end:
                    if error is not None:
                        time.sleep(0.01)
                    continue
                if error is None:
                    out.latencies_s.append(t1 - t0)
                else:
                    out.errors += 1
                    if len(out.error_samples) < 3:
                        out.error_samples.append(error)
                    time.sleep(0.01)  # do not spin on a dead server

    threads = [
        threading.Thread(target=client_loop, args=(k,), name=f"client-{k}", daemon=True)
        for k in range(clients)
    ]
    for thread in threads:
        thread.start()
    now = time.perf_counter()
    window["begin"] = now + warmup
    window["end"] = now + warmup + duration
    barrier.wait()
    for thread in threads:
        thread.join()
    result = RunResult(side.name, duration)
    for part in per_thread:
        result.latencies_s.extend(part.latencies_s)
        result.errors += part.errors
        result.error_samples.extend(part.error_samples)
    return result


def pooled(results: list[RunResult], side: str) -> RunResult:
    mine = [r for r in results if r.side == side]
    out = RunResult(f"{side} (pooled)", sum(r.duration_s for r in mine))
    for r in mine:
        out.latencies_s.extend(r.latencies_s)
        out.errors += r.errors
    return out


# -- report --------------------------------------------------------------------------------------
HEADER = (
    f"{'run':<18} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    f" {'errors':>7} {'load avg':>16}"
)


def row(label: str, result: RunResult, load: str = "") -> str:
    return (
        f"{label:<18} {result.requests:>9d} {result.rps:>9.1f} {result.pct_ms(50):>8.2f}"
        f" {result.pct_ms(95):>8.2f} {result.pct_ms(99):>8.2f} {result.errors:>7d} {load:>16}"
    )


def verdict(ours: RunResult, theirs: RunResult) -> str:
    ratio = ours.rps / theirs.rps if theirs.rps else float("inf")
    lower = ours.pct_ms(95) < theirs.pct_ms(95)
    met = ratio >= 2.0 and lower and ours.errors == 0
    return (
        f"throughput ours/mlflow = {ratio:.2f}x; p95 {ours.pct_ms(95):.2f} vs "
        f"{theirs.pct_ms(95):.2f} ms ({'lower' if lower else 'NOT lower'}); "
        f"target (>= 2x at a lower p95, no errors): {'MET' if met else 'NOT MET'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="ours+mlflow pairs, alternating")
    parser.add_argument("--populate-threads", type=int, default=8)
    parser.add_argument(
        "--pg-admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="where to CREATE/DROP the two databases for --db postgresql",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-logs", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if args.models < 1 or args.versions < 1 or args.clients < 1 or args.rounds < 1:
        parser.error("--models, --versions, --clients and --rounds must be >= 1")

    # SIGTERM unwinds like Ctrl-C, so the servers and databases are cleaned up either way.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    import detrforge

    print(f"machine:  {cpu_model()}, {os.cpu_count()} logical CPUs; load avg {load_average()}")
    print(
        f"versions: detrforge {detrforge.__version__}, mlflow {dist_version('mlflow')}, "
        f"python {platform.python_version()}, httpx {httpx.__version__}, "
        f"uvicorn {dist_version('uvicorn')}"
    )
    print(
        f"setup:    --db {args.db}, {args.models} models x {args.versions} versions, "
        f"{args.clients} client threads (keep-alive httpx.Client each), "
        f"{args.warmup:g} s warmup + {args.duration:g} s measured per run, {args.rounds} round(s)"
    )

    workdir = Path(tempfile.mkdtemp(prefix="registry_load_"))
    try:
        with ExitStack() as stack:
            ours_url, mlflow_url = stack.enter_context(
                databases(args.db, workdir, args.pg_admin_url)
            )
            if args.db == "postgresql":
                import psycopg

                with psycopg.connect(args.pg_admin_url) as conn:
                    server_version = conn.execute("SHOW server_version").fetchone()
                print(f"database: PostgreSQL {server_version[0] if server_version else '?'}")
            else:
                import sqlite3

                print(f"database: SQLite {sqlite3.sqlite_version} (one file per server, WAL)")

            secret, ours_fill_s = populate_ours(ours_url, args.models, args.versions)
            print(
                f"populate: ours {args.models * args.versions} versions + "
                f"{args.models} promotions via the registry stores in {ours_fill_s:.1f} s"
            )

            ours_port, mlflow_port = free_port(), free_port()
            home = workdir / "ours-home"
            ours_log, mlflow_log = workdir / "ours.log", workdir / "mlflow.log"
            stack.enter_context(
                server(
                    "ours",
                    [str(VENV_BIN / "detrforge"), "serve", "--port", str(ours_port)],
                    {
                        "DETRFORGE_HOME": str(home),
                        "DETRFORGE_DATABASE_URL": ours_url,
                        "DETRFORGE_RAY_ADDRESS": f"http://127.0.0.1:{free_port()}",
                        "DETRFORGE_HOST": "127.0.0.1",
                        "DETRFORGE_PORT": str(ours_port),
                        "DETRFORGE_MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
                    },
                    ours_log,
                )
            )
            stack.enter_context(
                server(
                    "mlflow",
                    [
                        str(VENV_BIN / "mlflow"),
                        "server",
                        "--backend-store-uri",
                        mlflow_url,
                        "--default-artifact-root",
                        str(workdir / "mlflow-artifacts"),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(mlflow_port),
                        "--workers",
                        "1",
                    ],
                    {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                    mlflow_log,
                )
            )
            ours_base, mlflow_base = (
                f"http://127.0.0.1:{ours_port}",
                f"http://127.0.0.1:{mlflow_port}",
            )
            up_ours = wait_healthy("ours", f"{ours_base}/health", ours_log)
            up_mlflow = wait_healthy("mlflow", f"{mlflow_base}/health", mlflow_log)
            print(f"servers:  ours healthy after {up_ours:.1f} s, mlflow after {up_mlflow:.1f} s")

            mlflow_fill_s = populate_mlflow(
                mlflow_base, args.models, args.versions, args.populate_threads
            )
            print(
                f"populate: mlflow {args.models * args.versions} versions + {args.models} "
                f"aliases over REST ({args.populate_threads} threads) in {mlflow_fill_s:.1f} s"
            )

            sides = {
                "ours": Side(
                    "ours",
                    ours_base,
                    {"Authorization": f"Bearer {secret}"},
                    lambda name: f"/api/v1/models/{name}/aliases/production",
                    lambda body: int(body["version"]) if body["stage"] == "production" else -1,
                ),
                "mlflow": Side(
                    "mlflow",
                    mlflow_base,
                    {},
                    lambda name: (
                        f"/api/2.0/mlflow/registered-models/alias?name={name}&alias=production"
                    ),
                    lambda body: int(body["model_version"]["version"]),
                ),
            }

            print()
            print(HEADER)
            results: list[RunResult] = []
            for rnd in range(args.rounds):
                for key in ("ours", "mlflow"):
                    result = run_load(
                        sides[key],
                        models=args.models,
                        versions=args.versions,
                        clients=args.clients,
                        duration=args.duration,
                        warmup=args.warmup,
                        seed=args.seed + rnd,
                    )
                    results.append(result)
                    print(row(f"{key} #{rnd + 1}", result, load_average()), flush=True)
                    for sample in result.error_samples:
                        print(f"    error: {sample}")
            ours_all, mlflow_all = pooled(results, "ours"), pooled(results, "mlflow")
            print(row("ours (pooled)", ours_all))
            print(row("mlflow (pooled)", mlflow_all))
            print()
            for rnd in range(args.rounds):
                print(f"round {rnd + 1}: " + verdict(results[2 * rnd], results[2 * rnd + 1]))
            print("pooled:  " + verdict(ours_all, mlflow_all))
            print(f"load avg at the end: {load_average()}")
            errors = ours_all.errors + mlflow_all.errors
    except KeyboardInterrupt:
        print("interrupted: servers stopped, databases dropped", file=sys.stderr)
        return 130
    finally:
        if args.keep_logs:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
