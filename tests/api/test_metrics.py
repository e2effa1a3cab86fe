"""GET /metrics (docs/design.md, "Operators"): Prometheus text that parses, with the database's numbers."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api import metrics as api_metrics
from api.main import create_app
from core.db import store
from core.db.models import Job

SMALL = {"task": "classification", "model": {"d_model": 16, "n_heads": 2, "dim_feedforward": 32}}


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every scrape takes a new snapshot (the default keeps one for a few seconds)."""
    monkeypatch.setattr(api_metrics, "SNAPSHOT_SECONDS", 0.0)


def scrape(client: TestClient, **headers: str) -> dict[str, list]:
    r = client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float | None:
    for sample in samples.get(name, []):
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample.value
    return None


def test_job_counts_running_jobs_and_durations_match_the_database(
    client, settings, upload, spam_csv, db_session: Session, fresh
):
    dataset = upload(spam_csv, "spam.csv")
    ids = [
        client.post("/jobs", json={"dataset_id": dataset["id"], "config": SMALL}).json()["id"]
        for _ in range(4)
    ]
    client.post(f"/jobs/{ids[0]}/cancel")  # cancelled while queued: never ran, no duration
    store.claim_job(db_session, ids[1], "test:1")
    store.update_progress(
        db_session,
        ids[1],
        {"step": 3, "total_steps": 10, "tokens_per_second": 1234.5, "train_loss": 0.75},
    )
    store.claim_job(db_session, ids[2], "test:1")
    store.finish_job(db_session, ids[2], "succeeded")
    db_session.commit()
    # A 90 s run: its first start 90 s before its end.
    job = db_session.get(Job, ids[2])
    db_session.execute(
        update(Job).where(Job.id == ids[2]).values(started_at=job.finished_at - timedelta(seconds=90))
    )
    db_session.commit()

    samples = scrape(client)
    queue = settings.queue_name
    counts = dict(db_session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
    assert counts == {"queued": 1, "running": 1, "succeeded": 1, "cancelled": 1}
    for status in ("queued", "running", "cancelling", "succeeded", "failed", "cancelled"):
        assert value(samples, "jobformer_jobs", queue=queue, status=status) == counts.get(status, 0), status
    assert value(samples, "jobformer_job_tokens_per_second", job_id=ids[1], queue=queue) == 1234.5
    assert value(samples, "jobformer_job_train_loss", job_id=ids[1], queue=queue) == 0.75
    assert value(samples, "jobformer_job_tokens_per_second", job_id=ids[3]) is None  # queued: not running
    # Only the succeeded job ran to an end: one observation of 90 s, in the buckets from 120 s up.
    assert value(samples, "jobformer_job_duration_seconds_count", queue=queue, status="succeeded") == 1
    assert value(samples, "jobformer_job_duration_seconds_sum", queue=queue, status="succeeded") == 90
    assert (
        value(samples, "jobformer_job_duration_seconds_bucket", queue=queue, status="succeeded", le="60.0")
        == 0
    )
    assert (
        value(samples, "jobformer_job_duration_seconds_bucket", queue=queue, status="succeeded", le="120.0")
        == 1
    )
    assert value(samples, "jobformer_job_duration_seconds_count", queue=queue, status="cancelled") is None
    # Every message still waits in Redis: no worker consumes this queue (a worker drops the stale ones).
    assert value(samples, "jobformer_queue_messages", queue=queue) == 4
    assert value(samples, "jobformer_workers_online", queue=queue) == 0
    assert value(samples, "jobformer_metrics_up") == 1

    # A later end is counted once, however many scrapes see it.
    store.finish_job(db_session, ids[1], "failed", error_code="x", error_message="y")
    db_session.commit()
    for _ in range(2):
        samples = scrape(client)
    assert value(samples, "jobformer_job_duration_seconds_count", queue=queue, status="failed") == 1
    assert value(samples, "jobformer_job_duration_seconds_count", queue=queue, status="succeeded") == 1
    assert value(samples, "jobformer_job_tokens_per_second", job_id=ids[1]) is None


def test_http_latency_is_labelled_by_route_template(client, upload, spam_csv, fresh):
    dataset = upload(spam_csv, "spam.csv")
    for _ in range(3):
        assert client.get(f"/datasets/{dataset['id']}").status_code == 200
    assert client.get("/datasets/" + "0" * 32).status_code == 404
    assert client.get("/no/such/path").status_code == 404
    samples = scrape(client)
    name = "jobformer_http_request_duration_seconds_count"
    assert value(samples, name, method="GET", route="/datasets/{dataset_id}", status="200") == 3
    assert value(samples, name, method="GET", route="/datasets/{dataset_id}", status="404") == 1
    assert value(samples, name, method="POST", route="/datasets", status="201") == 1
    assert value(samples, name, method="GET", route="<unmatched>", status="404") == 1
    assert not any(dataset["id"] in s.labels.get("route", "") for s in samples[name])


def test_snapshot_is_reused_between_scrapes(client, upload, spam_csv, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(api_metrics, "SNAPSHOT_SECONDS", 3600.0)
    dataset = upload(spam_csv, "spam.csv")
    before = scrape(client)
    client.post("/jobs", json={"dataset_id": dataset["id"], "config": SMALL})
    after = scrape(client)
    queued = [value(s, "jobformer_jobs", status="queued") for s in (before, after)]
    assert queued == [0, 0]  # the second scrape read no database


def test_keys_without_a_metrics_token_refuse_and_the_token_opens(make_settings, fresh):
    with TestClient(create_app(make_settings(api_keys="user-key-0123456789"))) as c:
        r = c.get("/metrics", headers={"Authorization": "Bearer user-key-0123456789"})
        assert r.status_code == 403
        assert r.headers["content-type"] == "application/problem+json"
        assert "JOBFORMER_METRICS_TOKEN" in r.json()["detail"]
    settings = make_settings(api_keys="user-key-0123456789", metrics_token="scrape-token-0123456789")
    with TestClient(create_app(settings)) as c:
        assert c.get("/metrics").status_code == 401
        r = c.get("/metrics", headers={"Authorization": "Bearer user-key-0123456789"})
        assert r.status_code == 401 and r.json()["code"] == "unauthorized"
        assert value(scrape(c, Authorization="Bearer scrape-token-0123456789"), "jobformer_metrics_up") == 1
