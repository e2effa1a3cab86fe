"""The Celery settings docs/design.md, "Workers and the broker" asks for, what the worker's parent process
may import, and what the producer side (the API) may not: the worker, or the worker's signal handlers."""

from __future__ import annotations

import subprocess
import sys

from broker import make_app
from core.settings import Settings


def test_production_celery_settings() -> None:
    settings = Settings(
        broker_url="redis://127.0.0.1:6379/5", visibility_timeout_seconds=1234, queue_name="q1"
    )
    conf = make_app(settings).conf
    assert conf.broker_url == "redis://127.0.0.1:6379/5"
    assert conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options == {"visibility_timeout": 1234}
    assert conf.broker_connection_retry_on_startup is True
    assert conf.task_reject_on_worker_lost is False
    assert conf.worker_max_tasks_per_child == 1
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.result_backend is None and conf.task_ignore_result is True
    assert conf.task_default_queue == "q1"
    assert conf.task_always_eager is False  # never eager


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_worker_parent_never_imports_torch() -> None:
    # CUDA does not survive a fork: the worker's main process must not load torch or the training code.
    run = _run(
        "import sys, worker.celery_app, worker.tasks, worker.reaper, cli.service;"
        "bad = [m for m in ('torch', 'core.ml.train', 'core.ml.model') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_worker_entry_module_includes_the_tasks_and_connects_the_signals() -> None:
    run = _run(
        "import sys; from celery import signals; import worker.celery_app as w;"
        "names = {r().__name__ for _, r in signals.worker_ready.receivers + signals.worker_process_init.receivers"
        " + signals.worker_shutting_down.receivers};"
        "print(w.app.conf.include, sorted(names));"
        "sys.exit(0 if set(w.app.conf.include) == {'worker.tasks', 'worker.runs'}"
        " and names == {'_main_ready', '_child_init', '_main_shutting_down'} else 1)"
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_producer_side_imports_no_worker_and_connects_no_signal() -> None:
    # The API enqueues through ``broker``: importing it and building the app must not build the worker's
    # app or hang the worker's handlers (reaper, SIGTERM hand-off) off Celery's signals in the API process.
    run = _run(
        "import sys; from celery import signals; import api.main, broker;"
        "api.main.create_app(); broker.get_app();"
        "leaks = [m for m in sys.modules if m == 'worker' or m.startswith('worker.')];"
        "hooks = signals.worker_ready.receivers + signals.worker_process_init.receivers"
        " + signals.worker_shutting_down.receivers;"
        "print(leaks, hooks); sys.exit(1 if leaks or hooks else 0)"
    )
    assert run.returncode == 0, run.stdout + run.stderr
