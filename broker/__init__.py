"""What the API and the worker use to talk to the broker: send a job, check the broker, count the workers.

The broker carries only job ids; the database row is the truth (docs/design.md, "Workers and the broker").
A job asking for N > 1 processes, or more memory than the plain tier, waits in its queue's capacity
queue ``<queue>.p<N>``, ``.m<T>``, which only workers that can run it consume (``broker.capacity``;
docs/design.md, "Queues").
Sending a job twice is harmless (the claim is atomic); losing its message is not, so the reaper re-sends
queued jobs whose message is gone (``queued_message_ids``).

Importing this package has no side effects: no app is built and no signal is connected. A producer sends
the task by name (``TASK_NAME``) and never imports the worker. Each function takes the caller's
``settings`` (the process settings when none is given); Celery apps and Redis clients are cached per
process, broker URL and queue.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import redis
from celery import Celery

from broker.app import make_app
from broker.capacity import (
    Needs,
    Offer,
    capacity_queue,
    capacity_queues_present,
    consumed_queues,
    fits,
    job_needs,
    job_processes,
    local_offer,
    local_processes,
    memory_tier,
    worker_capacity,
)
from core.settings import Settings, get_settings

__all__ = [
    "TASK_NAME",
    "WORKER_KEY_PREFIX",
    "Needs",
    "Offer",
    "fits",
    "job_needs",
    "local_offer",
    "broker_ok",
    "capacity_queue",
    "capacity_queues_present",
    "consumed_queues",
    "delivered_message_ids",
    "enqueue_job",
    "job_processes",
    "get_app",
    "local_processes",
    "offers_online",
    "make_app",
    "memory_tier",
    "queue_position",
    "queued_message_ids",
    "redis_client",
    "register_worker",
    "unregister_worker",
    "worker_capacity",
    "workers_online",
]

log = logging.getLogger(__name__)

TASK_NAME = "jobformer.train"
WORKER_KEY_PREFIX = "jobformer:workers"
WORKERS_TTL_SECONDS = 5.0

_lock = threading.Lock()
_apps: dict[tuple[int, str, str], Celery] = {}
_clients: dict[tuple[int, str, float], redis.Redis] = {}
# (broker URL, queue) -> (when counted, monotonic; the count, None when the broker did not answer)
_workers_cache: dict[tuple[str, str], tuple[float, int | None]] = {}
_workers_locks: dict[tuple[str, str], threading.Lock] = {}


def _reinit_locks_in_child() -> None:
    # The worker forks its pool children while the reaper thread may hold a lock: a child would inherit
    # it locked and hang on its first enqueue (the SIGTERM hand-off).
    global _lock
    _lock = threading.Lock()
    _workers_locks.clear()


os.register_at_fork(after_in_child=_reinit_locks_in_child)


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else get_settings()


def get_app(settings: Settings | None = None) -> Celery:
    """The Celery app for ``settings``, one per process (and per broker URL and queue)."""
    settings = _settings(settings)
    key = (os.getpid(), settings.broker_url, settings.queue_name)
    with _lock:
        app = _apps.get(key)
        if app is None:
            app = _apps[key] = make_app(settings)
        return app


def enqueue_job(
    job_id: str, queue: str | None = None, *, needs: Needs = Needs(), settings: Settings | None = None
) -> None:
    """Send job ``job_id`` to the workers of ``queue`` that can run it: the job's own queue
    (``jobs.queue``) and what its config needs (``job_needs``: the message goes to
    ``capacity_queue(queue, *needs)``). The default queue, this process's ``queue_name``, is right only
    where that is the job's queue. Call it AFTER the job row is committed. The Celery task id is the job
    id. Raises ``kombu.exceptions.OperationalError`` when the broker is unreachable (after retries); the
    job then stays ``queued`` and a reaper of its queue sends it again once the broker is back."""
    settings = _settings(settings)
    queue = capacity_queue(queue or settings.queue_name, *needs)
    get_app(settings).send_task(TASK_NAME, args=[job_id], task_id=job_id, queue=queue)
    log.info("enqueued job %s on queue %s", job_id, queue, extra={"job_id": job_id})


def redis_client(timeout: float = 1.0, *, settings: Settings | None = None) -> redis.Redis:
    """A redis-py client for the broker URL (cached per process), for checks the Celery API lacks."""
    url = _settings(settings).broker_url
    key = (os.getpid(), url, timeout)
    with _lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30
            )
        return client


def broker_ok(timeout: float = 1.0, *, settings: Settings | None = None) -> bool:
    """True when the broker answers a PING within ``timeout`` seconds (for ``/readyz``)."""
    try:
        return bool(redis_client(timeout, settings=settings).ping())
    except (redis.RedisError, OSError) as exc:
        log.warning("broker check failed: %s", exc)
        return False


def _workers_pattern(queue: str) -> str:
    return f"{WORKER_KEY_PREFIX}:{queue}:*"


def register_worker(
    name: str, ttl_seconds: float, *, settings: Settings | None = None, offer: Offer | None = None
) -> None:
    """Mark worker ``name`` as online on its queue for ``ttl_seconds`` (each worker's main process
    refreshes it), advertising what it gives one job (default: ``local_offer``; docs/design.md, "Queues"
    and "Memory")."""
    settings = _settings(settings)
    offer = offer or local_offer(settings)
    key = f"{WORKER_KEY_PREFIX}:{settings.queue_name}:{name}"
    mark = {"at": time.time(), **offer._asdict()}
    redis_client(settings=settings).set(key, json.dumps(mark), px=int(ttl_seconds * 1000))


# (broker URL, queue) -> (when read, monotonic; the online workers' offers, None when the broker failed)
_offers_cache: dict[tuple[str, str], tuple[float, list[Offer] | None]] = {}


def offers_online(
    queue: str | None = None, timeout: float = 1.0, *, settings: Settings | None = None
) -> list[Offer] | None:
    """What each online worker of ``queue`` offers (cached ``WORKERS_TTL_SECONDS``); None when the
    broker did not answer. A mark without an offer (an older worker) is left out."""
    settings = _settings(settings)
    queue = queue or settings.queue_name
    key = (settings.broker_url, queue)
    cached = _offers_cache.get(key)
    if cached is not None and time.monotonic() - cached[0] < WORKERS_TTL_SECONDS:
        return cached[1]
    offers: list[Offer] | None = []
    try:
        client = redis_client(timeout, settings=settings)
        keys = list(client.scan_iter(match=_workers_pattern(queue)))
        for raw in client.mget(keys) if keys else []:
            try:
                mark = json.loads(raw)
                memory = mark.get("memory_gib")
                offer = Offer(
                    int(mark["processes"]), None if memory is None else float(memory), bool(mark.get("gpu"))
                )
            except (TypeError, ValueError, KeyError):
                continue  # gone since the scan, or a mark without the field
            offers.append(offer)
    except (redis.RedisError, OSError) as exc:
        log.warning("offers_online: broker unreachable: %s", exc)
        offers = None
    _offers_cache[key] = (time.monotonic(), offers)
    return offers


def unregister_worker(name: str, *, settings: Settings | None = None) -> None:
    """Remove worker ``name``'s online mark (on a clean shutdown)."""
    settings = _settings(settings)
    redis_client(settings=settings).delete(f"{WORKER_KEY_PREFIX}:{settings.queue_name}:{name}")


def workers_online(
    queue: str | None = None, timeout: float = 1.0, *, settings: Settings | None = None
) -> int | None:
    """How many workers consume ``queue`` (default: this process's queue) now: their marks in Redis.
    None when the broker did not answer (unknown, which is not "no worker online").

    The one cache of this count in a process: ``WORKERS_TTL_SECONDS`` per broker and queue. Counting
    takes up to ``timeout`` when the broker does not answer; many clients polling a job must not each
    pay it, so one caller refreshes while the others read the last value."""
    settings = _settings(settings)
    queue = queue or settings.queue_name
    key = (settings.broker_url, queue)
    cached = _workers_cache.get(key)
    if cached is not None and time.monotonic() - cached[0] < WORKERS_TTL_SECONDS:
        return cached[1]
    with _lock:
        refresh = _workers_locks.setdefault(key, threading.Lock())
    # Only one thread refreshes; the rest use the stale value rather than wait (if there is one).
    if not refresh.acquire(blocking=cached is None):
        return cached[1] if cached is not None else None
    try:
        cached = _workers_cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < WORKERS_TTL_SECONDS:
            return cached[1]
        count: int | None
        try:
            count = sum(
                1 for _ in redis_client(timeout, settings=settings).scan_iter(match=_workers_pattern(queue))
            )
        except (redis.RedisError, OSError) as exc:
            log.warning("workers_online: broker unreachable: %s", exc)
            count = None
        _workers_cache[key] = (time.monotonic(), count)
        return count
    finally:
        refresh.release()


def queued_message_ids(queue: str | None = None, *, settings: Settings | None = None) -> set[str]:
    """Task ids of the messages waiting in ``queue``'s Redis list (default: this process's queue; kombu's
    JSON envelope)."""
    settings = _settings(settings)
    client = redis_client(5.0, settings=settings)
    ids: set[str] = set()
    for raw in client.lrange(queue or settings.queue_name, 0, -1):
        try:
            ids.add(json.loads(raw)["headers"]["id"])
        except (ValueError, KeyError, TypeError):
            continue
    return ids


# kombu's Redis transport keeps each delivered, unacknowledged message in this hash (delivery tag -> [the
# message, exchange, routing key]) and its delivery time in this sorted set (kombu.transport.redis.Channel).
UNACKED_KEY, UNACKED_INDEX_KEY = "unacked", "unacked_index"


def delivered_message_ids(within_seconds: float, *, settings: Settings | None = None) -> set[str]:
    """Task ids of the messages a worker received less than ``within_seconds`` ago and has not yet
    acknowledged: a job between its delivery and its claim (a fresh pool child importing torch) has left
    its queue's list but is not lost. One received longer ago than that whose job is still queued is lost
    with its worker (the visibility timeout would bring it back only after days)."""
    settings = _settings(settings)
    client = redis_client(5.0, settings=settings)
    tags = client.zrangebyscore(UNACKED_INDEX_KEY, time.time() - within_seconds, "+inf")
    ids: set[str] = set()
    for raw in client.hmget(UNACKED_KEY, tags) if tags else []:
        try:
            ids.add(json.loads(raw)[0]["headers"]["id"])
        except (ValueError, KeyError, TypeError, IndexError):
            continue
    return ids


def queue_position(job_id: str, queue: str | None = None, *, settings: Settings | None = None) -> int | None:
    """1-based position of ``job_id`` among the messages waiting in ``queue`` (default: this process's
    queue; 1: next to run), or None when it is not waiting there (running, unknown, or the broker is
    unreachable)."""
    settings = _settings(settings)
    try:
        raw = redis_client(settings=settings).lrange(queue or settings.queue_name, 0, -1)
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
