"""API under load while a job trains on the same machine (issue 4, "Load").

Starts its own stack on loopback only: ``jobformer serve`` and ``jobformer worker`` subprocesses, a
database (a dedicated PostgreSQL database ``jobformer_bench`` on 127.0.0.1:5432, dropped and re-created
each run, or SQLite in a temporary directory with ``--db sqlite``), Redis 127.0.0.1:6379 on its own DB
number and its own queue name (so no other worker can take the job). It uploads the SMS spam file, starts
a training job on it, then measures three phases of ``--duration`` seconds each:

    quiet-before  no requests; the job trains alone
    load          ``--clients`` concurrent clients poll GET /jobs/{id} back to back (asyncio + httpx)
    quiet-after   no requests again (shows drift: evaluations, other load on the machine, and how long
                  the API takes to drain what the pollers left in flight)

and prints requests/s, p50/p99 latency and errors of the pollers (errors must be 0), and the training
throughput in each phase: tokens/s from the job's progress (the ``step`` it reports, times the tokens in a
step: the job is a character language model on the SMS texts, so every step is exactly batch x context
tokens), and the ratio with pollers / without. The progress is read twice a second straight from the
database by a thread of this script, so the training measurement does not depend on the API answering. Then it cancels the job and stops everything. Exit code 1
if any poller request failed. Usage::

    python bench/api_load.py [--clients 200] [--duration 30] [--db postgres|sqlite] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SMS = ROOT.parent / "shared" / "data" / "sms_spam" / "SMSSpamCollection.tsv"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_BENCH_DB = "jobformer_bench"
REDIS_URL = "redis://127.0.0.1:6379/12"  # a DB number of its own; the queue name is unique per run too

BATCH, CONTEXT = 16, 64
TOKENS_PER_STEP = BATCH * CONTEXT
# A character LM on the SMS texts: every step trains on exactly BATCH x CONTEXT tokens, so tokens/s over a
# window is (steps in the window) x TOKENS_PER_STEP / seconds. max_steps is far more than the bench needs:
# the job is cancelled at the end.
JOB_CONFIG = {
    "task": "language_modeling",
    "text_column": 1,
    "tokenizer": {"kind": "char", "lowercase": False},
    "model": {
        "d_model": 128,
        "n_heads": 4,
        "n_layers": 2,
        "dim_feedforward": 512,
        "dropout": 0.0,
        "max_length": CONTEXT,
    },
    "training": {"max_steps": 1_000_000, "batch_size": BATCH, "learning_rate": 1e-3, "seed": 0},
    "device": "cpu",
}


class Proc:
    """A child process in its own session (so stopping it stops its children), output to a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self._f = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, stdout=self._f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )

    def tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self, timeout: float = 60) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)  # whatever is left of its session
        self.popen.wait()
        self._f.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_url() -> str | None:
    """A fresh, empty ``jobformer_bench`` database on the local server, or None if there is no server."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {PG_BENCH_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {PG_BENCH_DB}")
    except Exception as e:  # noqa: BLE001 - any failure means: use SQLite
        print(f"PostgreSQL not usable ({type(e).__name__}: {e}); using SQLite", flush=True)
        return None
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{PG_BENCH_DB}"


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


class Monitor:
    """Samples the job's progress twice a second straight from the database, in a thread of its own,
    so that the training throughput is measured even while the API is slow or stuck."""

    def __init__(self, database_url: str, job_id: str) -> None:
        from sqlalchemy import create_engine, select

        from core.db.models import Job
        from core.db.session import normalize_url

        self.engine = create_engine(normalize_url(database_url), pool_size=1, max_overflow=0)
        self.query = select(Job.progress).where(Job.id == job_id)
        self.samples: list[tuple[float, int]] = []
        self.last: dict = {}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.engine.connect() as conn:
                    progress = conn.execute(self.query).scalar() or {}
                if "step" in progress:
                    self.last = progress
                    self.samples.append((time.perf_counter(), int(progress["step"])))
            except Exception:  # noqa: BLE001 - counted and reported; the measurement goes on
                self.errors += 1
            self._stop.wait(0.5)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()

    def step_at(self, t: float) -> tuple[float, int]:
        """The last sample at or before ``t``."""
        before = [s for s in self.samples if s[0] <= t]
        return before[-1] if before else self.samples[0]

    def tokens_per_second(self, t0: float, t1: float) -> float:
        """Training tokens/s between two moments, from the steps the job reported (the worker writes its
        progress about once a second, so the window's ends are the samples nearest before them)."""
        (a_t, a_step), (b_t, b_step) = self.step_at(t0), self.step_at(t1)
        return (b_step - a_step) * TOKENS_PER_STEP / (b_t - a_t) if b_t > a_t else 0.0


async def poller(client: httpx.AsyncClient, path: str, deadline: float, lat: list[float], errs: list[str]):
    """One client: GET ``path`` back to back until ``deadline``; latencies in seconds."""
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        try:
            r = await client.get(path)
            if r.status_code != 200:
                errs.append(f"HTTP {r.status_code}")
            else:
                lat.append(time.perf_counter() - t)
        except httpx.HTTPError as e:
            errs.append(type(e).__name__)


async def measure(
    base_url: str, key: str, job_id: str, clients: int, duration: float, monitor: Monitor
) -> dict:
    headers = {"Authorization": f"Bearer {key}"}
    phases: dict[str, tuple[float, float]] = {}
    async with (
        # One connection per client: each poller is a separate keep-alive connection, as 200 users are.
        httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=30,
            limits=httpx.Limits(max_connections=clients, max_keepalive_connections=clients),
        ) as load_client,
    ):
        t = time.perf_counter()
        await asyncio.sleep(duration)
        phases["quiet_before"] = (t, time.perf_counter())

        lat: list[float] = []
        errs: list[str] = []
        t = time.perf_counter()
        deadline = t + duration
        await asyncio.gather(
            *(poller(load_client, f"/jobs/{job_id}", deadline, lat, errs) for _ in range(clients))
        )
        phases["load"] = (t, time.perf_counter())

        t = time.perf_counter()
        await asyncio.sleep(duration)
        phases["quiet_after"] = (t, time.perf_counter())

    lat.sort()
    load_s = phases["load"][1] - phases["load"][0]
    throughput = {name: monitor.tokens_per_second(a, b) for name, (a, b) in phases.items()}
    quiet = (throughput["quiet_before"] + throughput["quiet_after"]) / 2
    return {
        "clients": clients,
        "duration_s": duration,
        "requests": len(lat) + len(errs),
        "requests_per_second": (len(lat) + len(errs)) / load_s,
        "latency_ms": {
            "p50": 1000 * percentile(lat, 50),
            "p99": 1000 * percentile(lat, 99),
            "max": 1000 * lat[-1] if lat else float("nan"),
            "mean": 1000 * statistics.fmean(lat) if lat else float("nan"),
        },
        "errors": len(errs),
        "error_kinds": sorted(set(errs))[:10],
        "monitor_errors": monitor.errors,
        "training_tokens_per_second": throughput,
        "training_ratio_load_vs_quiet": throughput["load"] / quiet if quiet else float("nan"),
        "job_progress_tokens_per_second": monitor.last.get("tokens_per_second"),
        "job_step": monitor.last.get("step"),
    }


def wait_until(condition, what: str, timeout: float, procs: list[Proc]):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.popen.returncode}:\n{p.tail()}")
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    logs = "\n".join(f"--- {p.name} ---\n{p.tail()}" for p in procs)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


def run(args: argparse.Namespace) -> dict:
    key = secrets.token_hex(16)
    queue = f"bench-load-{secrets.token_hex(5)}"
    database_url = postgres_url() if args.db == "postgres" else None
    with tempfile.TemporaryDirectory(prefix="jobformer-load-") as tmp:
        tmp_path = Path(tmp)
        (tmp_path / "data").mkdir()
        env = {
            **os.environ,
            "JOBFORMER_DATA_DIR": str(tmp_path / "data"),
            "JOBFORMER_BROKER_URL": REDIS_URL,
            "JOBFORMER_QUEUE_NAME": queue,
            "JOBFORMER_API_KEYS": key,
        }
        if database_url:
            env["JOBFORMER_DATABASE_URL"] = database_url
        else:
            env.pop("JOBFORMER_DATABASE_URL", None)  # SQLite under the data directory
        cli = [sys.executable, "-m", "cli.main"]
        subprocess.run([*cli, "migrate"], env=env, cwd=ROOT, check=True, capture_output=True, timeout=120)
        port = free_port()
        procs = [
            Proc("api", [*cli, "serve", "--port", str(port), "--log-level", "warning"], env, tmp_path),
            Proc("worker", [*cli, "worker", "--loglevel", "warning"], env, tmp_path),
        ]
        base_url = f"http://127.0.0.1:{port}"
        job_id = None
        client = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        try:

            def api_up() -> bool:
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(api_up, "the API", 90, procs)
            with SMS.open("rb") as f:
                r = client.post("/datasets", files={"file": (SMS.name, f, "text/tab-separated-values")})
            r.raise_for_status()
            r = client.post("/jobs", json={"dataset_id": r.json()["id"], "config": JOB_CONFIG})
            r.raise_for_status()
            job_id = r.json()["id"]

            def warmed_up() -> bool:
                job = client.get(f"/jobs/{job_id}").json()
                if job["status"] not in ("queued", "running"):
                    raise RuntimeError(
                        f"the job ended before the measurement: {job['status']} {job['error']}"
                    )
                return (job.get("progress") or {}).get("step", 0) >= args.warmup_steps

            wait_until(warmed_up, f"the job to pass step {args.warmup_steps}", 300, procs)
            print(f"job {job_id} training; measuring {args.duration:g} s per phase", flush=True)
            db_url = database_url or f"sqlite:///{tmp_path / 'data' / 'jobformer.db'}"
            with Monitor(db_url, job_id) as monitor:
                result = asyncio.run(measure(base_url, key, job_id, args.clients, args.duration, monitor))
            result["database"] = "postgresql" if database_url else "sqlite"
            if result["errors"] or result["monitor_errors"]:
                for p in procs:
                    print(f"--- {p.name} log (tail) ---\n{p.tail(4000)}", file=sys.stderr)
            return result
        finally:
            if job_id is not None:
                with contextlib.suppress(httpx.HTTPError):
                    client.post(f"/jobs/{job_id}/cancel")
            client.close()
            for p in reversed(procs):  # the worker first: its job checkpoints and stops
                p.stop(timeout=30)
            if args.log_dir:
                args.log_dir.mkdir(parents=True, exist_ok=True)
                for p in procs:
                    shutil.copy(p.log, args.log_dir / p.log.name)
            with contextlib.suppress(Exception):
                import redis

                r = redis.Redis.from_url(REDIS_URL)
                r.delete(queue, *r.scan_iter(match=f"*{queue}*"))
                r.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=200, help="concurrent pollers (default 200)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per phase (default 30)")
    p.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--warmup-steps", type=int, default=20, help="job steps before measuring")
    p.add_argument("--quick", action="store_true", help="smoke run: 10 clients, 3 s phases")
    p.add_argument("--json", action="store_true", help="also print one JSON object as the last line")
    p.add_argument("--log-dir", type=Path, help="copy the API and worker logs here at the end")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.duration, args.warmup_steps = min(args.clients, 10), 3.0, 2
    if args.clients < 1 or args.clients > 1000 or not 1 <= args.duration <= 600:
        p.error("--clients must be 1..1000 and --duration 1..600 seconds")
    if not SMS.is_file():
        p.error(f"{SMS} not found (../shared/data)")
    r = run(args)
    lat = r["latency_ms"]
    tps = r["training_tokens_per_second"]
    print(
        f"pollers: {r['clients']} clients x {r['duration_s']:g} s on {r['database']}: "
        f"requests/s={r['requests_per_second']:.0f} p50_ms={lat['p50']:.1f} p99_ms={lat['p99']:.1f} "
        f"max_ms={lat['max']:.1f} errors={r['errors']}" + (f" {r['error_kinds']}" if r["errors"] else "")
    )
    print(
        f"training tokens/s: quiet_before={tps['quiet_before']:.0f} load={tps['load']:.0f} "
        f"quiet_after={tps['quiet_after']:.0f}"
    )
    print(f"ratio training tokens/s with pollers/without: {r['training_ratio_load_vs_quiet']:.2f}x")
    if args.json:
        print(json.dumps(r))
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
