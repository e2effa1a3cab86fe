"""The Celery settings DESIGN.md section 7 asks for, and what the worker's parent process may import."""

from __future__ import annotations

import subprocess
import sys

from core.settings import Settings
from worker.celery_app import make_app


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


def test_worker_parent_never_imports_torch() -> None:
    # CUDA does not survive a fork: the worker's main process must not load torch or the training code.
    code = (
        "import sys, worker.celery_app, worker.tasks, worker.reaper, cli.service;"
        "bad = [m for m in ('torch', 'core.ml.train', 'core.ml.model') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
