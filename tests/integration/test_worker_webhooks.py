"""Webhooks for every end (docs/design.md, "Operators"), sent by a real `jobformer worker`'s deliverer from
the outbox: a job that trains to its end, a queued job the API cancels (on a queue no worker consumes),
and a job the reaper fails after its last attempt. None of them names a webhook_url: the key's default
(JOBFORMER_WEBHOOK_DEFAULTS) applies. Each end is POSTed once, signed, and recorded in the job's events.
Real API (in process), worker, PostgreSQL and Redis; the receiver is a small HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.main import create_app
from core import webhooks
from core.db import store
from core.db.models import Job, utcnow
from core.db.session import session_scope
from core.owners import owner_of_key
from core.settings import get_settings
from tests.integration.procs import (
    REDIS_URL,
    empty_database,
    job_events,
    job_row,
    make_dataset,
    service_environment,
    start_worker,
    tiny_config,
    wait_for,
)
from tests.worker.test_webhooks import Receiver

pytestmark = pytest.mark.integration

SECRET = "integration-webhook-secret-0123"
KEY = "alice-integration-key-0123456789"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver([]) as r:
        yield r


@pytest.fixture
def env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str, receiver: Receiver
) -> Iterator[dict[str, str]]:
    empty_database(pg_url)
    with service_environment(tmp_path, pg_url, monkeypatch) as values:
        idle = f"{values['JOBFORMER_QUEUE_NAME']}-idle"  # no worker consumes it
        for key, value in {
            "JOBFORMER_QUEUES": f"{values['JOBFORMER_QUEUE_NAME']},{idle}",
            "JOBFORMER_API_KEYS": KEY,
            "JOBFORMER_WEBHOOK_SECRET": SECRET,
            "JOBFORMER_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            "JOBFORMER_WEBHOOK_DEFAULTS": json.dumps({KEY: receiver.url}),
        }.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        yield {**values, "idle": idle}
        client = redis.Redis.from_url(REDIS_URL)
        try:
            client.delete(idle)
        finally:
            client.close()


def _by_job(receiver: Receiver) -> dict[str, list[dict]]:
    got: dict[str, list[dict]] = {}
    for item in list(receiver.received):
        got.setdefault(json.loads(item["body"])["job"]["id"], []).append(item)
    return got


def test_every_end_is_posted_once_with_the_keys_default(
    env: dict[str, str], tmp_path: Path, receiver: Receiver
) -> None:
    """Would catch: an end written outside the train task (the API's cancel, the reaper's failure) never
    delivered, a delivery sent twice (two polls, two deliverers), or the key's default ignored."""
    settings = get_settings()
    rows = make_dataset(settings.data_dir)
    body = (settings.data_dir / rows["path"]).read_bytes()
    headers = {"Authorization": f"Bearer {KEY}"}
    worker = start_worker(tmp_path)
    try:
        with TestClient(create_app(settings), headers=headers) as api:
            dataset = api.post("/datasets", files={"file": ("tiny.csv", body, "text/csv")}).json()
            config = tiny_config(max_steps=30, eval_every=15)
            trained = api.post("/jobs", json={"dataset_id": dataset["id"], "config": config}).json()
            idle = api.post(
                "/jobs", json={"dataset_id": dataset["id"], "config": config, "queue": env["idle"]}
            ).json()
            assert api.post(f"/jobs/{idle['id']}/cancel").json()["status"] == "cancelled"
        # A job whose worker vanished on its last attempt: the worker's reaper fails it (worker_lost).
        with session_scope() as s:
            lost = store.create_job(
                s,
                dataset_id=dataset["id"],
                config=config,
                owner=owner_of_key(KEY),
                max_attempts=1,
                queue=env["idle"],
            )
            lost_id = lost.id
        with session_scope() as s:
            store.claim_job(s, lost_id, f"ghost:{uuid.uuid4().hex[:6]}")
            stale = utcnow() - timedelta(seconds=600)
            s.execute(update(Job).where(Job.id == lost_id).values(heartbeat_at=stale))

        ends = {trained["id"]: "job.succeeded", idle["id"]: "job.cancelled", lost_id: "job.failed"}
        wait_for(lambda: set(_by_job(receiver)) >= set(ends), "a POST for each end", procs=(worker,))
        wait_for(
            lambda: all([k for k, _m, _d in job_events(job_id)].count("webhook") >= 1 for job_id in ends),
            "each delivery in its job's events",
            procs=(worker,),
        )
        time.sleep(3)  # several more polls of the outbox: nothing is sent twice
    finally:
        worker.stop()

    got = _by_job(receiver)
    assert set(got) == set(ends)
    assert job_row(lost_id).error_code == "worker_lost"
    deliveries = set()
    for job_id, event in ends.items():
        assert len(got[job_id]) == 1, (job_id, got[job_id])
        [item] = got[job_id]
        assert item["path"] == "/hook"
        h = item["headers"]
        assert webhooks.verify(
            SECRET, h[webhooks.TIMESTAMP_HEADER], item["body"], h[webhooks.SIGNATURE_HEADER]
        )
        payload = json.loads(item["body"])
        assert payload["type"] == event and payload["job"]["status"] == event.removeprefix("job.")
        deliveries.add(h["X-Jobformer-Delivery"])
        webhook_events = [d for k, _m, d in job_events(job_id) if k == "webhook"]
        assert [(d["outcome"], d["delivery"]) for d in webhook_events] == [
            ("delivered", h["X-Jobformer-Delivery"])
        ]
    assert len(deliveries) == 3
