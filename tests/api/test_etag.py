"""GET /jobs/{id} answers an ETag, and 304 without a body to a matching If-None-Match
(docs/design.md, "Live updates")."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.views import etag_matches
from core.db import store
from core.ml.callbacks import MetricPoint

SMALL = {"task": "classification", "model": {"d_model": 16, "n_heads": 2, "dim_feedforward": 32}}


def test_etag_then_304_until_the_job_changes(client, upload, spam_csv, db_session: Session):
    dataset = upload(spam_csv, "spam.csv")
    job_id = client.post("/jobs", json={"dataset_id": dataset["id"], "config": SMALL}).json()["id"]
    first = client.get(f"/jobs/{job_id}")
    assert first.status_code == 200
    tag = first.headers["etag"]
    assert tag.startswith('W/"') and tag.endswith('"') and len(tag) == 36
    assert first.headers["cache-control"] == "no-cache"

    same = client.get(f"/jobs/{job_id}", headers={"If-None-Match": tag})
    assert same.status_code == 304 and same.content == b""
    assert same.headers["etag"] == tag
    # A list holding it, the strong form of it, or *: not modified either.
    for header in [f'"other", {tag}', tag.removeprefix("W/"), "*"]:
        assert client.get(f"/jobs/{job_id}", headers={"If-None-Match": header}).status_code == 304
    assert client.get(f"/jobs/{job_id}", headers={"If-None-Match": 'W/"other"'}).status_code == 200

    store.claim_job(db_session, job_id, "test:1")
    store.add_metrics(db_session, job_id, [MetricPoint(1, 0, "train", "loss", 0.9)])
    db_session.commit()
    changed = client.get(f"/jobs/{job_id}", headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.json()["metrics"] == {"train_loss": 0.9}
    assert changed.headers["etag"] != tag
    again = client.get(f"/jobs/{job_id}", headers={"If-None-Match": changed.headers["etag"]})
    assert again.status_code == 304


def test_another_owners_etag_does_not_reveal_the_job(make_settings, spam_csv):
    from fastapi.testclient import TestClient

    from api.main import create_app

    alice = {"Authorization": "Bearer alice-key-0123456789"}
    bob = {"Authorization": "Bearer bob-key-9876543210"}
    with TestClient(create_app(make_settings(api_keys="alice-key-0123456789,bob-key-9876543210"))) as c:
        ds = c.post("/datasets", files={"file": ("s.csv", spam_csv, "text/csv")}, headers=alice).json()
        job_id = c.post("/jobs", json={"dataset_id": ds["id"], "config": SMALL}, headers=alice).json()["id"]
        tag = c.get(f"/jobs/{job_id}", headers=alice).headers["etag"]
        r = c.get(f"/jobs/{job_id}", headers={**bob, "If-None-Match": tag})
        assert r.status_code == 404 and "etag" not in r.headers
        r = c.get(f"/jobs/{job_id}", headers={"If-None-Match": "*"})
        assert r.status_code == 401


def test_if_none_match_parsing():
    assert not etag_matches(None, 'W/"a"') and not etag_matches("", 'W/"a"')
    assert etag_matches('"b" , W/"a"', 'W/"a"') and etag_matches('"a"', 'W/"a"')
    assert not etag_matches('"ab"', 'W/"a"')
