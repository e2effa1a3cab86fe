"""Helpers for integration tests that start real processes (workers, `jobformer up`) and poll the store.

Every test gets its own Celery queue name (``JOBFORMER_QUEUE_NAME``) on the shared Redis at 127.0.0.1:6379,
so test runs in parallel never take each other's jobs, and its own data directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.db import store
from core.db.session import session_scope

REDIS_URL = os.environ.get("JOBFORMER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# Heartbeats for a test whose jobs must never be taken for lost (``start_service(heartbeats=...)``): a
# heartbeat a second, the reaper's timeout a minute, as a busy machine may stall a worker for seconds.
CALM_HEARTBEATS = (1.0, 60.0)

# A tiny, fast classification config: a few seconds of CPU per few hundred steps.
TINY_CONFIG: dict[str, Any] = {
    "task": "classification",
    "text_column": "text",
    "label_column": "label",
    "tokenizer": {"kind": "char"},
    "model": {
        "d_model": 32,
        "n_heads": 2,
        "n_layers": 1,
        "dim_feedforward": 64,
        "dropout": 0.0,
        "max_length": 32,
        # The n-gram bag stays on (the default path), with a table sized for a tiny model: small
        # checkpoints, and the disk-full test's filesystem still fits the first ones.
        "ngram_buckets": 4096,
    },
    "training": {
        "max_steps": 300,
        "batch_size": 16,
        "learning_rate": 0.003,
        "warmup_steps": 10,
        "eval_every": 50,
        "val_fraction": 0.2,
        "seed": 0,
    },
    "device": "cpu",
}


def tiny_config(**training: Any) -> dict[str, Any]:
    config = {**TINY_CONFIG, "training": {**TINY_CONFIG["training"], **training}}
    return config


def service_env(tmp_path: Path, database_url: str, **extra: str) -> dict[str, str]:
    """Environment for the test process and its children: own data dir, own queue, short heartbeats."""
    return {
        "JOBFORMER_DATA_DIR": str(tmp_path / "data"),
        "JOBFORMER_DATABASE_URL": database_url,
        "JOBFORMER_BROKER_URL": REDIS_URL,
        "JOBFORMER_QUEUE_NAME": f"jf-test-{uuid.uuid4().hex[:12]}",
        "JOBFORMER_HEARTBEAT_SECONDS": "0.5",
        "JOBFORMER_HEARTBEAT_TIMEOUT_SECONDS": "6",
        **extra,
    }


@contextlib.contextmanager
def service_environment(
    tmp_path: Path, database_url: str, monkeypatch: Any, **extra: str
) -> Iterator[dict[str, str]]:
    """``service_env`` (with ``extra``) set in os.environ (worker subprocesses inherit it) and the data dir
    made; afterwards the test's queue, its Celery bindings and its worker registrations are removed from
    Redis through a fresh connection (a test may have restarted Redis under a cached client)."""
    import redis

    from core.settings import get_settings

    values = service_env(tmp_path, database_url, **extra)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    (tmp_path / "data").mkdir()
    yield values
    name = values["JOBFORMER_QUEUE_NAME"]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.delete(name, *client.scan_iter(match=f"*{name}*"))  # worker marks, _kombu.binding.<queue>
    finally:
        client.close()
    get_settings.cache_clear()


def empty_database(url: str) -> None:
    """Empty every table of the PostgreSQL database at ``url`` (the test session's): a worker's reaper looks
    at every job in it, so a test's workers must not find another test's jobs."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE metric_points, events, checkpoints, jobs, datasets RESTART IDENTITY CASCADE")


def make_dataset(data_dir: Path, rows: int = 2000) -> dict[str, Any]:
    """A two-class CSV (short texts; 2000 rows = 100 steps per epoch at batch 16) stored content-addressed under ``data_dir`` (as the API stores uploads)."""
    lines = ["text,label"]
    for i in range(rows):
        if i % 2:
            lines.append(f"good nice {i},pos")
        else:
            lines.append(f"bad grim {i},neg")
    body = ("\n".join(lines) + "\n").encode()
    sha = hashlib.sha256(body).hexdigest()
    rel = f"datasets/{sha[:2]}/{sha}"
    path = data_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return {
        "owner": None,
        "filename": "tiny.csv",
        "size_bytes": len(body),
        "sha256": sha,
        "path": rel,
        "format": {"kind": "csv", "delimiter": ",", "encoding": "utf-8", "header": True, "quoting": True},
        "rows": rows,
        "columns": ["text", "label"],
        "preview": [],
    }


def create_job(data_dir: Path, config: dict[str, Any], max_attempts: int = 3) -> str:
    """Dataset + job rows through the store (committed), as the API would; not yet enqueued."""
    with session_scope() as s:
        dataset = store.create_dataset(s, **make_dataset(data_dir))
        job = store.create_job(s, dataset_id=dataset.id, config=config, owner=None, max_attempts=max_attempts)
        return job.id


def job_row(job_id: str) -> Any:
    with session_scope() as s:
        job = store.get_job(s, job_id)
        s.expunge(job)
        return job


class Proc:
    """A child process in its own session (so a signal to its group reaches its children too)."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env or dict(os.environ),
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def signal(self, sig: int, group: bool = False) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig) if group else os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        finally:
            if self.popen.poll() is not None:
                self._log.close()

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, then SIGKILL the whole group after ``timeout``; always reaps."""
        self.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait()
        self._log.close()


def start_worker(
    tmp_path: Path, name: str = "worker", env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Proc:
    """A real `jobformer worker` (prefork, one child per job) with the test's environment (``os.environ``
    unless ``env`` is given) and more command-line ``args`` (``("--concurrency", "2")``)."""
    log = tmp_path / f"{name}-{uuid.uuid4().hex[:6]}.log"
    return Proc([sys.executable, "-m", "cli.main", "worker", "--loglevel", "info", *args], log, env=env)


def start_api(tmp_path: Path, port: int, env: dict[str, str] | None = None) -> Proc:
    """A real `jobformer serve` on 127.0.0.1:``port`` (wait for ``/healthz`` before using it)."""
    log = tmp_path / f"api-{uuid.uuid4().hex[:6]}.log"
    args = [sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--log-level", "warning"]
    return Proc(args, log, env=env)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A real `jobformer serve` on a port of its own and the real `jobformer worker`s started so far, all with
    one test's environment ``env``. The API may be killed and started again on the same port; ``stop()``
    closes every client and stops every process started (``procs``, in order)."""

    def __init__(self, tmp_path: Path, env: dict[str, str], api_keys: tuple[str, ...] = ()) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.api_keys = api_keys
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[Proc] = []
        self.api: Proc | None = None
        self.workers: list[Proc] = []
        self._clients: list[Any] = []

    @property
    def data_dir(self) -> Path:
        return Path(self.env["JOBFORMER_DATA_DIR"])

    def start_api(self, wait: bool = True) -> Proc:
        """`jobformer serve`; with ``wait``, return once it answers ``/healthz``."""
        self.api = start_api(self.tmp_path, self.port, env=self.env)
        self.procs.append(self.api)
        if wait:
            self.wait_until_up()
        return self.api

    def start_worker(self, name: str = "worker", args: tuple[str, ...] = ()) -> Proc:
        worker = start_worker(self.tmp_path, name, env=self.env, args=args)
        self.procs.append(worker)
        self.workers.append(worker)
        return worker

    def wait_until_up(self, timeout: float = 60) -> None:
        wait_for(self.answers, "the API to answer", timeout, tuple(self.procs))

    def answers(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def client(self, key: str | None = None) -> Any:
        """An ``httpx.Client`` on the API with ``key`` (default: the first API key; ``""``: none)."""
        import httpx

        key = self.api_keys[0] if key is None and self.api_keys else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        client = httpx.Client(base_url=self.url, headers=headers, timeout=60)
        self._clients.append(client)
        return client

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM to every process at once (they shut down side by side), then ``Proc.stop`` each."""
        for client in self._clients:
            client.close()
        for proc in self.procs:
            proc.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            proc.stop(0)  # reaps it; SIGKILL to its group if it is still there


@contextlib.contextmanager
def start_service(
    tmp_path: Path,
    database_url: str,
    monkeypatch: Any,
    *,
    workers: int = 1,
    api_keys: tuple[str, ...] = (),
    worker_args: tuple[str, ...] = (),
    heartbeats: tuple[float, float] = (0.5, 6),
    env: dict[str, str] | None = None,
) -> Iterator[Service]:
    """The whole service for one test: `jobformer serve` (answering ``/healthz`` when this yields) and
    ``workers`` `jobformer worker`s (with ``worker_args``) on the emptied database ``database_url``, the shared Redis with a queue
    of the test's own and a data dir in ``tmp_path`` (``service_environment``: set in the test's os.environ
    too); every process stopped afterwards. ``heartbeats``: (seconds, timeout), short by default so that a
    worker's reaper acts within seconds; ``env``: more variables for the test and every process."""
    empty_database(database_url)
    extra = {
        "JOBFORMER_API_KEYS": ",".join(api_keys),
        "JOBFORMER_HEARTBEAT_SECONDS": f"{heartbeats[0]:g}",
        "JOBFORMER_HEARTBEAT_TIMEOUT_SECONDS": f"{heartbeats[1]:g}",
        **(env or {}),
    }
    with service_environment(tmp_path, database_url, monkeypatch, **extra):
        service = Service(tmp_path, dict(os.environ), api_keys)
        try:
            service.start_api(wait=False)  # the API and the workers start side by side
            for i in range(workers):
                service.start_worker(f"worker-{i + 1}", worker_args)
            service.wait_until_up()
            yield service
        finally:
            service.stop()


class RedisServer:
    """A `redis-server` of the test's own on a free port, which the test may kill and start again on the
    same port and directory. ``persistent``: AOF with ``appendfsync always`` (as compose runs Redis with
    ``--appendonly yes``), so the queue and the unacked messages survive a crash; otherwise nothing is kept."""

    def __init__(self, directory: Path, persistent: bool = True) -> None:
        self.directory = directory
        self.persistent = persistent
        self.port = free_port()
        self.proc: Proc | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        """Start it (again) and wait until it answers PING."""
        import redis

        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--save", "", "--protected-mode", "no"]
        args += (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        )
        self.proc = Proc(args, self.directory / "redis.log")
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            wait_for(lambda: _pings(client), f"redis-server on port {self.port}", timeout, (self.proc,))
        finally:
            client.close()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Stop it with ``sig`` (SIGKILL: a crash, nothing flushed at exit) and reap it."""
        if self.proc is not None:
            self.proc.signal(sig)
            self.proc.wait(30)
            self.proc.stop(5)
            self.proc = None


def _pings(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 (a free port) to ``target``, which a test can cut to simulate a server
    outage: ``cut()`` closes every open connection (the clients see the server hang up) and closes the
    listening port (new connections are refused) until ``restore()`` opens it again on the same port.
    Threads only; every socket it opens it closes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.connections = 0  # accepted so far

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="proxy-accept", daemon=True).start()
        return self

    restore = start

    def cut(self) -> None:
        """Close the listening socket and every connection through the proxy."""
        listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)  # shutdown() wakes the thread blocked in accept()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _close(conn)

    stop = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # cut while we connected
                    _close(client)
                    _close(upstream)
                    return
                self._conns.update((client, upstream))
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def poll_until(condition: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy (returned) or ``timeout`` seconds pass (its last
    value): for a wait the caller may go on without."""
    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(interval)
    return value


def wait_for(
    condition: Callable[[], Any],
    what: str,
    timeout: float = 180,
    procs: tuple[Proc, ...] = (),
    interval: float = 0.1,
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with the processes' logs otherwise."""
    value = poll_until(condition, timeout, interval)
    if value:
        return value
    logs = "\n".join(f"--- {p.log_path.name} ---\n{p.log_tail()}" for p in procs)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{logs}")


def descendants(pid: int) -> set[int]:
    """All live descendants of ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# ------------------------------------------------------------------------------ reading a job's records


def job_events(job_id: str) -> list[tuple[str, str, dict | None]]:
    """``(kind, message, data)`` of every event of the job, in order."""
    from sqlalchemy import select

    from core.db.models import Event

    with session_scope() as s:
        rows = s.scalars(select(Event).where(Event.job_id == job_id).order_by(Event.id))
        return [(e.kind, e.message, e.data) for e in rows]


def job_curves(job_id: str) -> dict[str, list[int]]:
    """Steps of every metric curve (``"train_loss"``, ``"val_loss"``...), in insertion order."""
    from sqlalchemy import select

    from core.db.models import MetricPoint

    curves: dict[str, list[int]] = {}
    with session_scope() as s:
        for p in s.scalars(select(MetricPoint).where(MetricPoint.job_id == job_id).order_by(MetricPoint.id)):
            curves.setdefault(f"{p.split}_{p.name}", []).append(p.step)
    return curves


def job_checkpoints(job_id: str) -> list[tuple[str, int, bool, str]]:
    """``(name, step, is_best, path relative to the data dir)`` of the job's checkpoint rows, by step."""
    from sqlalchemy import select

    from core.db.models import Checkpoint

    with session_scope() as s:
        rows = s.execute(
            select(Checkpoint.name, Checkpoint.step, Checkpoint.is_best, Checkpoint.path)
            .where(Checkpoint.job_id == job_id)
            .order_by(Checkpoint.step)
        ).all()
    return [tuple(r) for r in rows]


def job_step(job_id: str) -> int:
    """The step of the job's last recorded progress (0 before any)."""
    return (job_row(job_id).progress or {}).get("step", 0)
