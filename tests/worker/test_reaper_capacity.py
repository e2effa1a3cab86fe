"""The reaper sends a job back to the list it belongs in (docs/design.md, "Queues"): a lost 2-process job
is requeued to its capacity queue ``<queue>.p2``, and a queued one whose message is gone is re-sent
there, never to the plain queue a 1-process worker consumes; a message a worker has just received is not
gone. Real Redis and database (both backends)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from sqlalchemy import update

import broker
from core.db import store
from core.db.models import Job, utcnow
from core.db.session import session_scope
from core.settings import Settings
from tests.worker._rows import placeholder_dataset
from worker.reaper import Reaper

REDIS_URL = os.environ.get("JOBFORMER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def settings(db_url: str, tmp_path) -> Iterator[Settings]:
    queue = f"jf-test-{uuid.uuid4().hex[:12]}"
    yield Settings(
        database_url=db_url,
        data_dir=tmp_path,
        broker_url=REDIS_URL,
        queue_name=queue,
        heartbeat_seconds=0.5,
        heartbeat_timeout_seconds=6,
    )
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.delete(queue, f"{queue}.p2", *client.scan_iter(match=f"{broker.WORKER_KEY_PREFIX}:{queue}:*"))
    finally:
        client.close()


def _job(settings: Settings, processes: int) -> str:
    with session_scope(settings.resolved_database_url) as s:
        dataset_id = placeholder_dataset(s)
        config = {"task": "classification", "resources": {"processes": processes}}
        job = store.create_job(
            s, dataset_id=dataset_id, config=config, owner=None, max_attempts=3, queue=settings.queue_name
        )
        return job.id


def _age(settings: Settings, job_id: str, **values) -> None:
    long_ago = utcnow() - timedelta(seconds=600)
    with session_scope(settings.resolved_database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(**{k: long_ago for k in values}))


def test_requeues_and_resends_go_to_the_capacity_queue(settings: Settings) -> None:
    queue = settings.queue_name
    lost, unsent, small = _job(settings, 2), _job(settings, 2), _job(settings, 1)
    with session_scope(settings.resolved_database_url) as s:
        store.claim_job(s, lost, "ghost:1")
    _age(settings, lost, heartbeat_at=True)
    for job_id in (unsent, small):  # queued long ago, their messages lost
        _age(settings, job_id, created_at=True)

    Reaper(node="test-reaper", settings=settings).run_once()

    plain = broker.queued_message_ids(queue, settings=settings)
    big = broker.queued_message_ids(broker.capacity_queue(queue, 2), settings=settings)
    assert big == {lost, unsent}
    assert plain == {small}
    with session_scope(settings.resolved_database_url) as s:
        assert store.get_job(s, lost).status == "queued"


def test_a_message_a_worker_received_is_resent_only_once_it_is_as_old_as_the_timeout(
    settings: Settings,
) -> None:
    """Between its delivery and its claim (a fresh pool child importing torch) a job's message has left
    its queue's list for kombu's unacked hash: not lost, so not sent a second time (a duplicate would take
    a pool slot only to find the job claimed). Received longer ago than the heartbeat timeout and still
    not claimed, its worker is gone: sent again."""
    queue = settings.queue_name
    job_id = _job(settings, 1)
    _age(settings, job_id, created_at=True)  # queued longer than the timeout
    broker.enqueue_job(job_id, queue, settings=settings)
    client = redis.Redis.from_url(REDIS_URL)
    with broker.get_app(settings).connection_for_read() as conn:
        received = conn.SimpleQueue(queue, no_ack=False).get(timeout=10)  # as a worker receives it
        try:
            assert received.headers["id"] == job_id
            assert broker.delivered_message_ids(6, settings=settings) >= {job_id}
            Reaper(node="test-reaper", settings=settings).run_once()
            assert broker.queued_message_ids(queue, settings=settings) == set()  # not sent again

            client.zadd(
                broker.UNACKED_INDEX_KEY, {received.delivery_tag: time.time() - 60}
            )  # received long ago
            assert job_id not in broker.delivered_message_ids(6, settings=settings)
            Reaper(node="test-reaper", settings=settings).run_once()
            assert broker.queued_message_ids(queue, settings=settings) == {job_id}
        finally:
            received.ack()
            client.close()
