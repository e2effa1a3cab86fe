"""Process wiring of a worker, hung off Celery's signals (``connect``, called by ``worker.celery_app``).

Main process (never touches CUDA or torch):
- ``celeryd_after_setup``: consume the capacity queues of this worker's queue that it can serve
  (``<queue>.p<N>`` and ``.m<T>`` for what it offers, ``broker.consumed_queues``; docs/design.md,
  "Queues"), the way Celery's docs add a queue to a worker at start.
- ``worker_ready``: start the stale-job reaper thread (``worker.reaper``) and the "worker online" mark,
  and the webhook deliverer thread (``worker.webhooks``: it sends the outbox's pending deliveries).
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

import broker
from core.db.session import forget_inherited_engines
from core.settings import Settings
from worker.reaper import Reaper
from worker.webhooks import Deliverer

log = logging.getLogger(__name__)

_shutdown = threading.Event()
_settings: Settings | None = None
_pool = None
_reaper = None
_deliverer = None


def connect(settings: Settings) -> None:
    """Hang this module's handlers off Celery's signals, for a worker process running with ``settings``."""
    global _settings
    _settings = settings
    signals.celeryd_after_setup.connect(_add_capacity_queues)
    signals.worker_process_init.connect(_child_init)
    signals.worker_ready.connect(_main_ready)
    signals.worker_shutting_down.connect(_main_shutting_down)


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


def _add_capacity_queues(sender: object = None, instance: object = None, **_kwargs: object) -> None:
    assert _settings is not None, "connect(settings) comes first"
    offer = broker.local_offer(_settings)
    extra = broker.consumed_queues(_settings.queue_name, offer)[1:]
    for name in extra:
        instance.app.amqp.queues.select_add(name)  # type: ignore[attr-defined]
    memory = "unknown (plain tier only)" if offer.memory_gib is None else f"{offer.memory_gib:.1f} GiB"
    log.info(
        "worker %s takes jobs of up to %d processes, %s %s: queues %s",
        sender,
        offer.processes,
        memory,
        "per GPU" if offer.gpu else "shared by a job's processes",
        ", ".join([_settings.queue_name, *extra]),
    )


def _child_init(**_kwargs: object) -> None:
    forget_inherited_engines()
    _shutdown.clear()


def _main_ready(sender: object = None, **_kwargs: object) -> None:
    global _pool, _reaper, _deliverer
    assert _settings is not None, "connect(settings) comes first"
    _pool = getattr(sender, "pool", None)
    node = getattr(sender, "hostname", None) or worker_name()
    _reaper = Reaper(node=node, settings=_settings)
    _reaper.start()
    _deliverer = Deliverer(node, _settings)
    _deliverer.start()


def _main_shutting_down(sig: str | None = None, how: str | None = None, **_kwargs: object) -> None:
    # Runs inside the main process's signal handler: keep it to signalling and flag setting.
    _shutdown.set()
    if _reaper is not None:
        _reaper.stop()
    if _deliverer is not None:
        _deliverer.stop()
    for pid in _child_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _child_pids() -> list[int]:
    try:
        return [int(pid) for pid in _pool.info.get("processes", [])] if _pool is not None else []
    except Exception:  # noqa: BLE001 - the pool may be half torn down; the children then go with it
        return []
