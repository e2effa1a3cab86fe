"""What operators watch, with the real processes (docs/design.md, "Operators"): a worker with
JOBFORMER_LOG_FORMAT=json trains a job that names a webhook; the receiver (a small HTTP server on
127.0.0.1, allowed explicitly) gets the signed end once it is committed, the delivery is in the job's
events, and every log line of the worker that is a record is one JSON object, with the job and attempt."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import update

import broker as queue
from core import webhooks
from core.db.models import Job
from core.db.session import session_scope
from tests.integration.procs import (
    create_job,
    job_events,
    job_row,
    start_worker,
    tiny_config,
    wait_for,
)
from tests.worker.test_webhooks import Receiver

pytestmark = pytest.mark.integration

SECRET = "integration-webhook-secret-0123"


def test_json_logs_and_a_signed_webhook_after_the_end(env: dict[str, str], tmp_path: Path) -> None:
    job_id = create_job(Path(env["JOBFORMER_DATA_DIR"]), tiny_config(max_steps=30))
    worker_env = {
        **os.environ,
        "JOBFORMER_LOG_FORMAT": "json",
        "JOBFORMER_WEBHOOK_SECRET": SECRET,
        "JOBFORMER_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    }
    with Receiver([503]) as receiver:
        with session_scope() as s:
            s.execute(update(Job).where(Job.id == job_id).values(webhook_url=receiver.url))
        worker = start_worker(tmp_path, env=worker_env)
        try:
            queue.enqueue_job(job_id)
            wait_for(lambda: len(receiver.received) >= 2, "the webhook's second attempt", procs=(worker,))
            wait_for(
                lambda: [k for k, _m, _d in job_events(job_id)].count("webhook") == 2,
                "both attempts in the events",
                procs=(worker,),
            )
        finally:
            worker.stop()
    assert job_row(job_id).status == "succeeded"
    for got in receiver.received:
        headers = got["headers"]
        assert webhooks.verify(
            SECRET, headers[webhooks.TIMESTAMP_HEADER], got["body"], headers[webhooks.SIGNATURE_HEADER]
        )
    payload = json.loads(receiver.received[-1]["body"])
    assert payload["type"] == "job.succeeded" and payload["job"]["finished_at"]
    outcomes = [d["outcome"] for k, _m, d in job_events(job_id) if k == "webhook"]
    assert outcomes == ["error", "delivered"]

    records = [json.loads(line) for line in worker.log_tail(10**6).splitlines() if line.startswith("{")]
    assert records, worker.log_tail()
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    claimed = [r for r in records if "claimed by" in r["message"]]
    assert claimed and claimed[0]["job_id"] == job_id and claimed[0]["attempt"] == 1
    ended = [r for r in records if r["message"] == f"job {job_id} ended succeeded"]
    assert ended and ended[0]["attempt"] == 1
