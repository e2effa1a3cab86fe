"""What the API (and the worker's reaper) use to talk to the broker, without importing the worker.

The broker carries only job ids; the database row is the truth (DESIGN.md section 7). Sending a job twice
is harmless (the claim is atomic); losing its message is not, so the reaper re-sends queued jobs whose
message is gone (``missing_messages``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import redis
from celery import Celery

from core.settings import get_settings

log = logging.getLogger(__name__)

TASK_NAME = "jobformer.train"
WORKER_KEY_PREFIX = "jobformer:workers"

_lock = threading.Lock()
_apps: dict[tuple[int, str, str], Celery] = {}
_clients: dict[tuple[int, str, float], redis.Redis] = {}
_workers_cache: dict[tuple[str, str], tuple[float, int]] = {}


def _reinit_lock_in_child() -> None:
    # The worker forks its pool children while the reaper thread may hold this lock: a child would
    # inherit it locked and hang on its first enqueue (the SIGTERM hand-off).
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reinit_lock_in_child)


def get_app() -> Celery:
    """The Celery app for the current settings, one per process (and per broker URL and queue)."""
    settings = get_settings()
    key = (os.getpid(), settings.broker_url, settings.queue_name)
    with _lock:
        app = _apps.get(key)
        if app is None:
            from worker.celery_app import make_app

            app = _apps[key] = make_app(settings)
        return app


def enqueue_job(job_id: str) -> None:
    """Send job ``job_id`` to the workers. Call it AFTER the job row is committed. The Celery task id is
    the job id. Raises ``kombu.exceptions.OperationalError`` when the broker is unreachable (after retries);
    the job then stays ``queued`` and a worker's reaper sends it again once the broker is back."""
    settings = get_settings()
    get_app().send_task(TASK_NAME, args=[job_id], task_id=job_id, queue=settings.queue_name)
    log.info("enqueued job %s on queue %s", job_id, settings.queue_name, extra={"job_id": job_id})


def redis_client(timeout: float = 1.0) -> redis.Redis:
    """A redis-py client for the broker URL (cached per process), for checks the Celery API lacks."""
    url = get_settings().broker_url
    key = (os.getpid(), url, timeout)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30
            )
        return client


def broker_ok(timeout: float = 1.0) -> bool:
    """True when the broker answers a PING within ``timeout`` seconds (for ``/readyz``)."""
    try:
        return bool(redis_client(timeout).ping())
    except (redis.RedisError, OSError) as exc:
        log.warning("broker check failed: %s", exc)
        return False


def _workers_pattern(queue: str) -> str:
    return f"{WORKER_KEY_PREFIX}:{queue}:*"


def register_worker(name: str, ttl_seconds: float) -> None:
    """Mark worker ``name`` as online for ``ttl_seconds`` (each worker's main process refreshes it)."""
    queue = get_settings().queue_name
    redis_client().set(f"{WORKER_KEY_PREFIX}:{queue}:{name}", str(time.time()), px=int(ttl_seconds * 1000))


def unregister_worker(name: str) -> None:
    """Remove worker ``name``'s online mark (on a clean shutdown)."""
    queue = get_settings().queue_name
    redis_client().delete(f"{WORKER_KEY_PREFIX}:{queue}:{name}")


def workers_online(timeout: float = 1.0) -> int:
    """How many workers consume this queue now (their marks in Redis; cached 5 s). 0 when the broker is
    unreachable: a queued job then shows a "no worker online" warning, which is true for the user too."""
    settings = get_settings()
    key = (settings.broker_url, settings.queue_name)
    now = time.monotonic()
    cached = _workers_cache.get(key)
    if cached is not None and now - cached[0] < 5.0:
        return cached[1]
    try:
        count = sum(1 for _ in redis_client(timeout).scan_iter(match=_workers_pattern(settings.queue_name)))
    except (redis.RedisError, OSError) as exc:
        log.warning("workers_online: broker unreachable: %s", exc)
        count = 0
    _workers_cache[key] = (now, count)
    return count


def queued_message_ids() -> set[str]:
    """Task ids of the messages waiting in this queue's Redis list (kombu's JSON envelope)."""
    client = redis_client(5.0)
    ids: set[str] = set()
    for raw in client.lrange(get_settings().queue_name, 0, -1):
        try:
            ids.add(json.loads(raw)["headers"]["id"])
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def queue_position(job_id: str) -> int | None:
    """1-based position of ``job_id`` among the messages waiting in the queue (1: next to run), or None
    when it is not waiting there (running, unknown, or the broker is unreachable)."""
    try:
        raw = redis_client().lrange(get_settings().queue_name, 0, -1)
    except (redis.RedisError, OSError):
        return None
    # kombu LPUSHes new messages and BRPOPs from the right: the last element runs next.
    for position, item in enumerate(reversed(raw), start=1):
        try:
            if json.loads(item)["headers"]["id"] == job_id:
                return position
        except (ValueError, KeyError, TypeError):
            continue
    return None
