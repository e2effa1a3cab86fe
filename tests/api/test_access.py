"""API keys and ownership (issue 4, Access)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.deps import KeyRing, hash_key, owner_id
from api.main import create_app
from core.db.models import Dataset, Job

ALICE = {"Authorization": "Bearer alice-key-0123456789"}
BOB = {"Authorization": "Bearer bob-key-9876543210"}


@pytest.fixture
def keyed(make_settings) -> Iterator[TestClient]:
    settings = make_settings(api_keys="alice-key-0123456789, bob-key-9876543210")
    with TestClient(create_app(settings)) as c:
        yield c


def test_every_endpoint_but_healthz_needs_a_key(keyed, spam_csv):
    assert keyed.get("/healthz").status_code == 200
    missing = "0" * 32
    for method, path in [
        ("GET", "/readyz"),
        ("GET", "/datasets"),
        ("POST", "/datasets"),
        ("GET", f"/datasets/{missing}"),
        ("DELETE", f"/datasets/{missing}"),
        ("GET", "/jobs"),
        ("POST", "/jobs"),
        ("GET", f"/jobs/{missing}"),
        ("GET", f"/jobs/{missing}/metrics"),
        ("GET", f"/jobs/{missing}/events"),
        ("GET", f"/jobs/{missing}/checkpoints"),
        ("GET", f"/jobs/{missing}/checkpoints/step-00000001"),
        ("POST", f"/jobs/{missing}/cancel"),
        ("POST", f"/jobs/{missing}/predict"),
    ]:
        r = keyed.request(method, path)
        assert r.status_code == 401, (method, path, r.text)
        assert r.headers["www-authenticate"] == 'Bearer realm="jobformer"'
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["detail"] == "this server needs an API key: send 'Authorization: Bearer <key>'"


@pytest.mark.parametrize(
    "header,detail",
    [
        ("Bearer wrong-key", "invalid API key"),
        ("Bearer alice-key-012345678", "invalid API key"),  # a prefix of a real key
        ("Basic YWxpY2U6eA==", "malformed Authorization header: expected 'Bearer <key>'"),
        ("Bearer ", "malformed Authorization header: expected 'Bearer <key>'"),
    ],
)
def test_wrong_keys_are_401(keyed, header, detail):
    r = keyed.get("/datasets", headers={"Authorization": header})
    assert r.status_code == 401
    assert r.json()["detail"] == detail


def test_datasets_and_jobs_belong_to_their_key_others_get_404(keyed, spam_csv, db_session):
    d = keyed.post("/datasets", files={"file": ("a.csv", spam_csv)}, headers=ALICE)
    assert d.status_code == 201
    dataset_id = d.json()["id"]
    cfg = {"task": "classification", "model": {"d_model": 16, "n_heads": 2}}
    j = keyed.post("/jobs", json={"dataset_id": dataset_id, "config": cfg}, headers=ALICE)
    assert j.status_code == 202
    job_id = j.json()["id"]

    # the owner is a short hash id, not the key
    owner = owner_id(hash_key("alice-key-0123456789"))
    assert len(owner) == 16
    assert db_session.get(Dataset, dataset_id).owner == owner
    assert db_session.get(Job, job_id).owner == owner

    assert keyed.get("/datasets", headers=BOB).json() == {"data": [], "count": 0}
    assert keyed.get("/jobs", headers=BOB).json() == {"data": [], "count": 0}
    for method, path in [
        ("GET", f"/datasets/{dataset_id}"),
        ("DELETE", f"/datasets/{dataset_id}"),
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/metrics"),
        ("GET", f"/jobs/{job_id}/events"),
        ("GET", f"/jobs/{job_id}/checkpoints"),
        ("POST", f"/jobs/{job_id}/cancel"),
    ]:
        r = keyed.request(method, path, headers=BOB)
        assert r.status_code == 404, (method, path)
    # Bob cannot start a job on Alice's dataset either
    r = keyed.post("/jobs", json={"dataset_id": dataset_id, "config": cfg}, headers=BOB)
    assert r.status_code == 422 and r.json()["code"] == "dataset_not_found"

    assert keyed.get(f"/jobs/{job_id}", headers=ALICE).json()["status"] == "queued"
    assert keyed.get("/jobs", headers=ALICE).json()["count"] == 1


def test_keys_are_kept_hashed_and_compared_by_digest():
    ring = KeyRing(["k1", "k2"])
    assert ring.enabled
    assert all(isinstance(d, bytes) and len(d) == 32 for d in ring._digests)
    assert b"k1" not in b"".join(ring._digests)
    assert ring.owner_for("k2") == owner_id(hash_key("k2"))
    assert ring.owner_for("k3") is None
    assert not KeyRing([]).enabled


def test_active_job_limit_is_per_key(make_settings, spam_csv):
    settings = make_settings(api_keys="alice-key-0123456789,bob-key-9876543210", max_active_jobs_per_key="1")
    cfg = {"task": "classification", "model": {"d_model": 16, "n_heads": 2}}
    with TestClient(create_app(settings)) as c:
        for headers in (ALICE, BOB):
            d = c.post("/datasets", files={"file": ("a.csv", spam_csv)}, headers=headers).json()
            assert (
                c.post("/jobs", json={"dataset_id": d["id"], "config": cfg}, headers=headers).status_code
                == 202
            )
            r = c.post("/jobs", json={"dataset_id": d["id"], "config": cfg}, headers=headers)
            assert r.status_code == 429 and r.headers["retry-after"] == "30"
