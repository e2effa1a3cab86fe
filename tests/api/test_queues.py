"""Jobs name their worker queue: `queue` in POST /jobs, checked against JOBFORMER_QUEUES, sent to that
queue in Redis, and the queue view (position, workers online, warning) is the job's own queue's.

The worker side (a `cpu` worker never runs a `gpu` job) is tests/integration/test_queues.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.main import create_app
from core.settings import Settings
from tests.api.conftest import purge_queue, queued_ids

SMALL = {"task": "classification", "model": {"d_model": 16, "n_heads": 2, "dim_feedforward": 32}}


@pytest.fixture
def gpu_queue() -> Iterator[str]:
    name = f"test-api-gpu-{uuid.uuid4().hex[:8]}"
    yield name
    purge_queue(name)


@pytest.fixture
def settings(make_settings, gpu_queue: str) -> Settings:
    """This module's server: the test's own queue (the default) and a second one, both configured."""
    base = make_settings()
    return make_settings(queues=f"{base.queue_name},{gpu_queue}")


@pytest.fixture
def two_queues(settings: Settings) -> Settings:
    return settings


@pytest.fixture
def dataset(upload, spam_csv) -> dict:
    return upload(spam_csv, "spam.csv")


def test_a_job_records_its_queue_and_is_sent_there(client, two_queues, gpu_queue, dataset):
    default = two_queues.queue_name
    plain = client.post("/jobs", json={"dataset_id": dataset["id"], "config": SMALL}).json()
    gpu = [
        client.post("/jobs", json={"dataset_id": dataset["id"], "config": SMALL, "queue": gpu_queue}).json()
        for _ in range(2)
    ]
    assert plain["queue_name"] == default
    assert [j["queue_name"] for j in gpu] == [gpu_queue, gpu_queue]
    assert queued_ids(default) == [plain["id"]]
    assert queued_ids(gpu_queue) == [gpu[1]["id"], gpu[0]["id"]]  # kombu pushes on the left

    # Positions count the job's own queue only; no worker consumes either: the warning names the queue.
    assert client.get(f"/jobs/{plain['id']}").json()["queue"] == {"position": 1, "workers_online": 0}
    second = client.get(f"/jobs/{gpu[1]['id']}").json()
    assert second["queue"] == {"position": 2, "workers_online": 0}
    assert second["warnings"] == [
        f"no worker is online for queue '{gpu_queue}': the job will start when one connects "
        f"(start one with `jobformer worker -Q {gpu_queue}`)"
    ]
    listed = {j["id"]: j["queue_name"] for j in client.get("/jobs").json()["data"]}
    assert listed == {plain["id"]: default, gpu[0]["id"]: gpu_queue, gpu[1]["id"]: gpu_queue}


def test_the_multipart_form_takes_a_queue_too(client, two_queues, gpu_queue, spam_csv):
    r = client.post(
        "/jobs",
        files={"file": ("spam.csv", spam_csv, "text/csv")},
        data={"config": json.dumps(SMALL), "queue": gpu_queue},
    )
    assert r.status_code == 202, r.text
    assert r.json()["queue_name"] == gpu_queue
    assert queued_ids(gpu_queue) == [r.json()["id"]]


def test_an_unknown_queue_is_a_422_naming_the_field_and_the_queues(client, two_queues, gpu_queue, dataset):
    names = f"{two_queues.queue_name}, {gpu_queue}"
    r = client.post("/jobs", json={"dataset_id": dataset["id"], "config": SMALL, "queue": "tpu"})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["detail"] == (
        f"queue 'tpu' is not one of this server's queues ({names}; setting JOBFORMER_QUEUES): "
        f"send one of those, or leave queue out for '{two_queues.queue_name}'"
    )
    assert body["errors"] == [{"loc": ["body", "queue"], "msg": f"must be one of: {names}", "type": "enum"}]
    assert client.get("/jobs").json()["count"] == 0


def test_an_unknown_queue_in_the_form_stores_nothing(client, two_queues, spam_csv):
    r = client.post(
        "/jobs",
        files={"file": ("spam.csv", spam_csv, "text/csv")},
        data={"config": json.dumps(SMALL), "queue": ""},
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == ["body", "queue"]
    assert client.get("/datasets").json()["count"] == 0
    assert not list((two_queues.data_dir / "tmp").iterdir())


@pytest.mark.parametrize("queue", [123, "x" * 65])
def test_a_queue_of_the_wrong_type_or_length_is_a_422(client, dataset, queue):
    r = client.post("/jobs", json={"dataset_id": dataset["id"], "config": SMALL, "queue": queue})
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == ["body", "queue"]


def test_without_queues_configured_only_the_default_queue_is_allowed(make_settings, spam_csv):
    settings = make_settings(queues="")
    with TestClient(create_app(settings)) as client:
        d = client.post("/datasets", files={"file": ("spam.csv", spam_csv, "text/csv")}).json()
        body = {"dataset_id": d["id"], "config": SMALL}
        ok = client.post("/jobs", json={**body, "queue": settings.queue_name})
        assert ok.status_code == 202 and ok.json()["queue_name"] == settings.queue_name
        r = client.post("/jobs", json={**body, "queue": "gpu"})
    assert r.status_code == 422
    assert r.json()["errors"][0]["msg"] == f"must be one of: {settings.queue_name}"


def test_the_queues_setting_must_hold_the_default_queue(make_settings):
    with pytest.raises(ValidationError, match="JOBFORMER_QUEUE_NAME='cpu' is not in JOBFORMER_QUEUES='gpu'"):
        make_settings(queue_name="cpu", queues="gpu")
    with pytest.raises(ValidationError, match="'a b' is not a queue name"):
        make_settings(queue_name="cpu", queues="cpu,a b")
    assert make_settings(queue_name="cpu", queues=" cpu , gpu,cpu").allowed_queues == ["cpu", "gpu"]
