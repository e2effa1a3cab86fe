"""Process wiring of a worker, hung off Celery's signals.

Main process (never touches CUDA or torch):
- ``worker_ready``: start the stale-job reaper thread (``worker.reaper``) and the "worker online" mark.
- ``worker_shutting_down`` (SIGTERM/SIGINT, Celery's warm shutdown): pass SIGTERM on to the pool children
  so a running job saves a checkpoint and hands itself back to the queue. Celery's warm shutdown then
  waits for the task to return before the process exits. A child never sees the main process's signal
  otherwise: Celery resets SIGTERM in its children and only signals the main one.

Pool child (one per job, ``worker_max_tasks_per_child=1``):
- ``worker_process_init``: drop the database engines inherited over fork (without closing the parent's
  connections). The task installs the SIGTERM handler that ``shutdown_requested()`` reads when it starts
  (billiard resets the child's handlers after this signal).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading

from celery import signals

log = logging.getLogger(__name__)

_shutdown = threading.Event()
_pool = None
_reaper = None


def shutdown_requested() -> bool:
    """True once this process was asked to stop (SIGTERM): the running job should checkpoint and yield."""
    return _shutdown.is_set()


def _on_sigterm(signum: int, _frame: object) -> None:
    # Only set a flag: the training loop polls it between steps through the callbacks' should_stop().
    _shutdown.set()


def install_sigterm_handler() -> None:
    """In a pool child: SIGTERM asks the running job to stop (checkpoint, hand back) instead of killing."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def worker_name() -> str:
    """The name a job records for the process running it: "hostname:pid"."""
    return f"{socket.gethostname()}:{os.getpid()}"


@signals.worker_process_init.connect
def _child_init(**_kwargs: object) -> None:
    from core.db import session

    pid = os.getpid()
    for (owner, _url), engine in list(session._engines.items()):
        if owner != pid:
            engine.dispose(close=False)  # the parent's connections stay the parent's
            del session._engines[(owner, _url)]
    _shutdown.clear()


@signals.worker_ready.connect
def _main_ready(sender: object = None, **_kwargs: object) -> None:
    global _pool, _reaper
    from worker.reaper import Reaper

    _pool = getattr(sender, "pool", None)
    _reaper = Reaper(node=getattr(sender, "hostname", None) or worker_name())
    _reaper.start()


@signals.worker_shutting_down.connect
def _main_shutting_down(sig: str | None = None, how: str | None = None, **_kwargs: object) -> None:
    # Runs inside the main process's signal handler: keep it to signalling and flag setting.
    _shutdown.set()
    if _reaper is not None:
        _reaper.stop()
    for pid in _child_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _child_pids() -> list[int]:
    try:
        return [int(pid) for pid in _pool.info.get("processes", [])] if _pool is not None else []
    except Exception:  # noqa: BLE001 - the pool may be half torn down; the children then go with it
        return []
