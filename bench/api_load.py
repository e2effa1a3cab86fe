"""API under load while a job trains on the same machine (issue 4, "Load").

Starts its own stack on loopback only: ``jobformer serve`` and ``jobformer worker`` subprocesses, a
database (a dedicated PostgreSQL database ``jobformer_bench`` on 127.0.0.1:5432, dropped and re-created
each run, or SQLite in a temporary directory with ``--db sqlite``), Redis 127.0.0.1:6379 on its own DB
number and its own queue name (so no other worker can take the job). It uploads the SMS spam file, starts
a training job on it, then measures three phases of ``--duration`` seconds each:

    quiet-before  no requests; the job trains alone
    load          ``--clients`` concurrent clients poll GET /jobs/{id} (asyncio, raw HTTP/1.1), each every
                  ``--poll-interval`` seconds (0: back to back) and with the ETag of its last answer in
                  ``If-None-Match`` (an unchanged job answers 304), while ``--subscribers`` clients
                  follow GET /jobs/{id}/stream (server-sent events; issue 9)
    quiet-after   no requests again (shows drift: evaluations, other load on the machine, and how long
                  the API takes to drain what the pollers left in flight)

and prints requests/s, p50/p99 latency and errors of the pollers and the subscribers' messages and errors
(errors must be 0: a stream that fails or closes early is one), and the training
throughput in each phase, and the CPU cores each process used in each phase (the API, the worker with
the pool child that trains, and this script, the load): tokens/s from the job's progress (the ``step`` it reports, times the tokens in a
step: the job is a character language model on the SMS texts, so every step is exactly batch x context
tokens), and the ratio with pollers / without. The progress is read twice a second straight from the
database by a thread of this script, so the training measurement does not depend on the API answering. Then it cancels the job and stops everything. Exit code 1
if any poller request failed. Usage::

    python bench/api_load.py [--clients 200] [--subscribers 200] [--poll-interval 1] [--duration 30]
                             [--db postgres|sqlite] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
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
from dataclasses import dataclass, field
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


def session_cpu_seconds(sid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of session ``sid`` (Linux /proc):
    a ``Proc`` and its children (the worker's pool child that trains)."""
    ticks = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited
        if int(fields[3]) == sid:  # after the name: state, ppid, pgrp, session, ... utime (11), stime (12)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_now(procs: list[Proc]) -> dict[str, float]:
    """CPU seconds so far of each stack process (with its children) and of this script (the load)."""
    return {
        **{p.name: session_cpu_seconds(p.popen.pid) for p in procs},
        "load_generator": time.process_time(),
    }


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


class Connection:
    """One client's own keep-alive HTTP/1.1 connection, on raw asyncio streams.

    The load generator shares the machine with the API and the job it measures, so each of its requests
    must cost little: a request is one pre-encoded write and an answer is one header read plus
    ``Content-Length`` bytes. (httpx cost this process a third to half a core at 190 requests/s and 200
    streams, taken from the job being measured.) Each of the 400 users has its own connection, as on the
    real network; the API sees the same requests either way."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None or self.reader.at_eof():
            self.close()
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self.reader, self.writer

    def request(self, path: str, extra: str = "") -> bytes:
        return f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.headers}{extra}\r\n".encode()

    async def get(self, path: str, etag: str | None) -> tuple[int, str | None]:
        """The answer's status and ETag (its body is read and dropped); reconnects if the API closed."""
        reader, writer = await self._connect()
        writer.write(self.request(path, f"If-None-Match: {etag}\r\n" if etag else ""))
        status, headers = await self._head(reader)
        if status != 304:  # a 304 has no body (RFC 9110, 15.4.5)
            if "content-length" not in headers:
                raise ConnectionError(f"HTTP {status} without Content-Length")
            await reader.readexactly(int(headers["content-length"]))
        if headers.get("connection") == "close":
            self.close()
        return status, headers.get("etag")

    async def stream(self, path: str) -> tuple[int, asyncio.StreamReader]:
        reader, writer = await self._connect()
        writer.write(self.request(path, "Accept: text/event-stream\r\n"))
        status, _ = await self._head(reader)
        return status, reader

    @staticmethod
    async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def poller(
    client: Connection, path: str, deadline: float, interval: float, lat: Latencies, errs: list[str]
) -> None:
    """One client: GET ``path`` every ``interval`` seconds until ``deadline``, sending the ETag of its last
    answer (an unchanged job is a 304 without a body); latencies in seconds. Clients start at random
    moments within the first interval, as independent users do (not 200 requests in the same instant)."""
    await asyncio.sleep(random.uniform(0, interval))
    try:
        await _poll(client, path, deadline, interval, lat, errs)
    finally:
        client.close()


@dataclass
class Latencies:
    """Answer latencies in seconds: each client's first answer (it opens the connection, while the other
    399 clients open theirs) apart from the steady state of polling on open connections."""

    first: list[float] = field(default_factory=list)
    steady: list[float] = field(default_factory=list)


async def _poll(
    client: Connection, path: str, deadline: float, interval: float, lat: Latencies, errs: list[str]
) -> None:
    etag = None
    answers = lat.first
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        try:
            async with asyncio.timeout(30):
                status, new_etag = await client.get(path, etag)
            if status in (200, 304):
                etag = new_etag if status == 200 else etag
                answers.append(time.perf_counter() - t)
                answers = lat.steady
            else:
                errs.append(f"HTTP {status}")
        except (OSError, EOFError, TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
            errs.append(type(e).__name__)
            client.close()
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t)))


async def subscriber(client: Connection, path: str, deadline: float, got: list[int], errs: list[str]):
    """One watcher: follow the job's event stream until ``deadline``; counts its messages (lines that
    begin with ``event:``, read from the raw chunked body). A stream that fails, or closes before the
    deadline (the job runs on), is an error."""
    messages = 0
    try:
        async with asyncio.timeout(deadline - time.perf_counter()):
            status, reader = await client.stream(path)
            if status != 200:
                errs.append(f"stream HTTP {status}")
                return
            tail = b"\n"  # the message before a read's first byte ended its line
            while chunk := await reader.read(65536):
                text = tail + chunk
                messages += text.count(b"\nevent:")
                if text.endswith(b"\r\n0\r\n\r\n"):
                    break  # the chunked body's last chunk: the API ended the stream (the connection stays)
                tail = text[-6:]
        errs.append("stream closed early")
    except TimeoutError:
        pass  # the deadline: the stream was still open, as it should be
    except (OSError, EOFError, ValueError, asyncio.IncompleteReadError) as e:
        errs.append(f"stream {type(e).__name__}")
    finally:
        client.close()
        got.append(messages)


METRICS_TOKEN = secrets.token_hex(16)


def server_histogram(base_url: str) -> dict[float, float]:
    """The API's own latency histogram of GET /jobs/{job_id} (200 and 304 answers, cumulative counts by
    upper bound, from GET /metrics): time from a request reaching the app to the start of its answer."""
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30)
    r.raise_for_status()
    counts: dict[float, float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "jobformer_http_request_duration_seconds_bucket"
                and labels.get("method") == "GET"
                and labels.get("route") == "/jobs/{job_id}"
                and labels.get("status") in ("200", "304")
            ):
                bound = float(labels["le"])
                counts[bound] = counts.get(bound, 0.0) + sample.value
    return counts


def server_summary(before: dict[float, float], after: dict[float, float]) -> dict:
    """The load phase's share of answers the app took longer than 100 ms (and 250 ms) to start, and the
    histogram bound under which 99% of them started."""
    diff = {b: after.get(b, 0.0) - before.get(b, 0.0) for b in sorted(after)}
    total = diff.get(float("inf"), 0.0)
    if not total:
        return {"answers": 0}
    p99_bound = next((b for b, n in diff.items() if n >= 0.99 * total), float("inf"))
    return {
        "answers": int(total),
        "over_100ms": 1 - diff.get(0.1, 0.0) / total,
        "over_250ms": 1 - diff.get(0.25, 0.0) / total,
        "p99_at_most_ms": 1000 * p99_bound,
    }


async def loop_lag(deadline: float, lags: list[float]) -> None:
    """How late this process's own event loop wakes up (a 10 ms sleep's overshoot, seconds): a request's
    latency as measured here includes it, so a late generator is told apart from a slow API."""
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        await asyncio.sleep(0.01)
        lags.append(time.perf_counter() - t - 0.01)


async def measure(
    base_url: str, key: str, job_id: str, args: argparse.Namespace, monitor: Monitor, procs: list[Proc]
) -> dict:
    clients, subscribers, duration = args.clients, args.subscribers, args.duration
    headers = {"Authorization": f"Bearer {key}"}
    phases: dict[str, tuple[float, float]] = {}
    cpu: dict[str, dict[str, float]] = {}  # the cores each process used in each phase
    t, c = time.perf_counter(), cpu_now(procs)
    await asyncio.sleep(duration)
    phases["quiet_before"] = (t, time.perf_counter())
    cpu["quiet_before"] = {k: v - c[k] for k, v in cpu_now(procs).items()}

    lat = Latencies()
    errs: list[str] = []
    stream_messages: list[int] = []
    stream_errs: list[str] = []
    host, port = base_url.removeprefix("http://").split(":")
    pollers = [Connection(host, int(port), headers) for _ in range(clients)]
    watchers = [Connection(host, int(port), headers) for _ in range(subscribers)]
    t, c = time.perf_counter(), cpu_now(procs)
    deadline = t + duration
    path = f"/jobs/{job_id}"
    histogram_before = await asyncio.to_thread(server_histogram, base_url)
    lags: list[float] = []
    await asyncio.gather(
        loop_lag(deadline, lags),
        *(poller(client, path, deadline, args.poll_interval, lat, errs) for client in pollers),
        *(
            subscriber(client, f"{path}/stream", deadline, stream_messages, stream_errs)
            for client in watchers
        ),
    )
    phases["load"] = (t, time.perf_counter())
    cpu["load"] = {k: v - c[k] for k, v in cpu_now(procs).items()}
    server = server_summary(histogram_before, await asyncio.to_thread(server_histogram, base_url))

    t, c = time.perf_counter(), cpu_now(procs)
    await asyncio.sleep(duration)
    phases["quiet_after"] = (t, time.perf_counter())
    cpu["quiet_after"] = {k: v - c[k] for k, v in cpu_now(procs).items()}

    first, steady = sorted(lat.first), sorted(lat.steady)
    lags.sort()
    load_s = phases["load"][1] - phases["load"][0]
    throughput = {name: monitor.tokens_per_second(a, b) for name, (a, b) in phases.items()}
    quiet = (throughput["quiet_before"] + throughput["quiet_after"]) / 2
    return {
        "clients": clients,
        "duration_s": duration,
        "requests": len(first) + len(steady) + len(errs),
        "requests_per_second": (len(first) + len(steady) + len(errs)) / load_s,
        # Polling on open connections: what a page or a script polling a job sees.
        "latency_ms": {
            "p50": 1000 * percentile(steady, 50),
            "p99": 1000 * percentile(steady, 99),
            "max": 1000 * steady[-1] if steady else float("nan"),
            "mean": 1000 * statistics.fmean(steady) if steady else float("nan"),
        },
        # Each client's first answer: its connection opened while 399 others open theirs, and the job's
        # answer first read after the quiet phase.
        "first_answer_latency_ms": {
            "p50": 1000 * percentile(first, 50),
            "p99": 1000 * percentile(first, 99),
            "max": 1000 * first[-1] if first else float("nan"),
        },
        "latency_ms_all": {"p99": 1000 * percentile(sorted(first + steady), 99)},
        "server_side": server,
        "generator_lag_ms": {"p50": 1000 * percentile(lags, 50), "p99": 1000 * percentile(lags, 99)},
        "poll_interval_s": args.poll_interval,
        "errors": len(errs),
        "error_kinds": sorted(set(errs))[:10],
        "subscribers": subscribers,
        "stream_messages": sum(stream_messages),
        "stream_messages_min": min(stream_messages, default=0),
        "stream_errors": len(stream_errs),
        "stream_error_kinds": sorted(set(stream_errs))[:10],
        "monitor_errors": monitor.errors,
        "training_tokens_per_second": throughput,
        "training_ratio_load_vs_quiet": throughput["load"] / quiet if quiet else float("nan"),
        # CPU cores each process used per phase (CPU seconds / phase seconds): what the 2 cores went to.
        "cores_used": {
            name: {k: v / (phases[name][1] - phases[name][0]) for k, v in used.items()}
            for name, used in cpu.items()
        },
        "load_average_1min": os.getloadavg()[0],
        "job_progress_tokens_per_second": monitor.last.get("tokens_per_second"),
        "job_step": monitor.last.get("step"),
    }


def new_event_loop():  # type: ignore[no-untyped-def]
    """uvloop's event loop factory if it is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


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
            "JOBFORMER_METRICS_TOKEN": METRICS_TOKEN,
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
            # uvloop (installed with uvicorn[standard]): the generator's own loop costs the machine less.
            with Monitor(db_url, job_id) as monitor, asyncio.Runner(loop_factory=new_event_loop()) as runner:
                result = runner.run(measure(base_url, key, job_id, args, monitor, procs))
            result["database"] = "postgresql" if database_url else "sqlite"
            if result["errors"] or result["stream_errors"] or result["monitor_errors"]:
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
    p.add_argument("--subscribers", type=int, default=200, help="concurrent stream watchers (default 200)")
    p.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="seconds between a poller's requests (0: back to back)",
    )
    p.add_argument("--duration", type=float, default=30.0, help="seconds per phase (default 30)")
    p.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--warmup-steps", type=int, default=20, help="job steps before measuring")
    p.add_argument("--quick", action="store_true", help="smoke run: 10 clients, 3 s phases")
    p.add_argument("--json", action="store_true", help="also print one JSON object as the last line")
    p.add_argument("--log-dir", type=Path, help="copy the API and worker logs here at the end")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.duration, args.warmup_steps = min(args.clients, 10), 3.0, 2
        args.subscribers = min(args.subscribers, 10)
    if not (1 <= args.clients <= 1000 and 0 <= args.subscribers <= 1000 and 1 <= args.duration <= 600):
        p.error("--clients must be 1..1000, --subscribers 0..1000 and --duration 1..600 seconds")
    if not 0 <= args.poll_interval <= 60:
        p.error("--poll-interval must be 0..60 seconds")
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
    fa = r["first_answer_latency_ms"]
    print(
        f"  (polling on open connections; each client's first answer, opening its connection: "
        f"p50_ms={fa['p50']:.1f} p99_ms={fa['p99']:.1f}; all answers p99_ms={r['latency_ms_all']['p99']:.1f})"
    )
    print(
        f"subscribers: {r['subscribers']} streams: messages={r['stream_messages']} "
        f"min_per_stream={r['stream_messages_min']} errors={r['stream_errors']}"
        + (f" {r['stream_error_kinds']}" if r["stream_errors"] else "")
    )
    srv = r["server_side"]
    if srv.get("answers"):
        print(
            f"the API's own timing of those answers: over 100 ms {100 * srv['over_100ms']:.2f}%, over 250 ms "
            f"{100 * srv['over_250ms']:.2f}%, p99 at most {srv['p99_at_most_ms']:g} ms"
        )
    lag = r["generator_lag_ms"]
    print(f"the load generator's own event loop, late by: p50_ms={lag['p50']:.1f} p99_ms={lag['p99']:.1f}")
    print(
        f"training tokens/s: quiet_before={tps['quiet_before']:.0f} load={tps['load']:.0f} "
        f"quiet_after={tps['quiet_after']:.0f}"
    )
    print(f"ratio training tokens/s with pollers/without: {r['training_ratio_load_vs_quiet']:.2f}x")
    for phase, used in r["cores_used"].items():
        print(f"cores used, {phase}: " + " ".join(f"{k}={v:.2f}" for k, v in used.items()))
    print(f"load average (1 min) at the end: {r['load_average_1min']:.2f}")
    if args.json:
        print(json.dumps(r))
    return 1 if r["errors"] or r["stream_errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
