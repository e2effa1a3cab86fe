"""``webhook_url`` in POST /jobs (docs/design.md, "Operators"): checked before anything is stored, kept
on the job, shown in its answer."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from api.main import create_app

SMALL = {"task": "classification", "model": {"d_model": 16, "n_heads": 2, "dim_feedforward": 32}}
SECRET = "test-webhook-secret-0123456789"


@pytest.fixture
def hooked(make_settings, spam_csv):
    settings = make_settings(webhook_secret=SECRET, webhook_allowed_hosts="127.0.0.1")
    with TestClient(create_app(settings)) as c:
        dataset = c.post("/datasets", files={"file": ("spam.csv", spam_csv)}).json()
        yield c, dataset["id"]


def test_an_allowed_url_is_kept_and_shown(hooked):
    client, dataset_id = hooked
    url = "http://127.0.0.1:9000/hook"
    r = client.post("/jobs", json={"dataset_id": dataset_id, "config": SMALL, "webhook_url": url})
    assert r.status_code == 202, r.text
    assert r.json()["webhook_url"] == url
    assert client.get(f"/jobs/{r.json()['id']}").json()["webhook_url"] == url


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://127.0.0.1/hook", "only http and https URLs are called, not 'ftp'"),
        ("file:///etc/passwd", "only http and https"),
        ("http://10.0.0.5/hook", "not one of JOBFORMER_WEBHOOK_ALLOWED_HOSTS"),
    ],
)
def test_a_refused_url_is_a_422_at_the_field_and_nothing_is_stored(hooked, url: str, fragment: str):
    client, dataset_id = hooked
    r = client.post("/jobs", json={"dataset_id": dataset_id, "config": SMALL, "webhook_url": url})
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["code"] == "invalid_webhook_url"
    assert problem["errors"][0]["loc"] == ["body", "webhook_url"]
    assert fragment in problem["detail"]
    assert client.get("/jobs").json()["count"] == 0


def test_a_server_without_a_secret_refuses_webhooks(client, upload, spam_csv):
    dataset = upload(spam_csv, "spam.csv")
    r = client.post(
        "/jobs", json={"dataset_id": dataset["id"], "config": SMALL, "webhook_url": "https://93.184.215.14/x"}
    )
    assert r.status_code == 422
    assert "JOBFORMER_WEBHOOK_SECRET" in r.json()["detail"]


def test_the_form_takes_a_webhook_url_too(hooked, spam_csv):
    client, _ = hooked
    r = client.post(
        "/jobs",
        files={"file": ("spam.csv", spam_csv)},
        data={"config": json.dumps(SMALL), "webhook_url": "gopher://127.0.0.1/"},
    )
    assert r.status_code == 422 and r.json()["code"] == "invalid_webhook_url"
    r = client.post(
        "/jobs",
        files={"file": ("spam.csv", spam_csv)},
        data={"config": json.dumps(SMALL), "webhook_url": "http://127.0.0.1:1/h"},
    )
    assert r.status_code == 202 and r.json()["webhook_url"] == "http://127.0.0.1:1/h"
