"""POST/GET /jobs and the job's sub-resources, against a real database and a real Redis.

No worker runs here: what a worker writes (progress, metrics, events, checkpoints) is written through
core.db.store, the same functions the worker calls.
"""

from __future__ import annotations

import io
import json
import tarfile

import pytest
from sqlalchemy.orm import Session

from core.db import store
from core.ml.callbacks import CheckpointInfo, MetricPoint
from tests.api.conftest import queued_ids

SMALL = {"task": "classification", "model": {"d_model": 16, "n_heads": 2, "dim_feedforward": 32}}


@pytest.fixture
def dataset(upload, spam_csv) -> dict:
    return upload(spam_csv, "spam.csv")


def create(client, dataset_id: str, config: dict | None = None):
    return client.post("/jobs", json={"dataset_id": dataset_id, "config": config or SMALL})


def test_create_json_form_commits_then_enqueues(client, settings, dataset):
    r = create(client, dataset["id"])
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["dataset_id"] == dataset["id"]
    assert job["attempts"] == 0 and job["error"] is None and job["progress"] is None
    # the config comes back fully resolved
    assert job["config"]["label_column"] == "label"
    assert job["config"]["model"]["d_model"] == 16
    assert job["config"]["training"]["batch_size"] == 32
    assert job["config"]["tokenizer"]["kind"] == "spacy"
    # really sent to Redis, with the job id as the task id
    assert queued_ids(settings.queue_name) == [job["id"]]
    # no worker consumes the test queue: the job says so, naming it
    assert job["queue_name"] == settings.queue_name
    assert job["queue"] == {"position": 1, "workers_online": 0}
    assert job["warnings"] == [
        f"no worker is online for queue '{settings.queue_name}': the job will start when one connects "
        f"(start one with `jobformer worker -Q {settings.queue_name}`)"
    ]


def test_create_multipart_form_stores_the_dataset_too(client, settings, spam_csv):
    r = client.post(
        "/jobs",
        files={"file": ("spam.csv", spam_csv, "text/csv")},
        data={"config": json.dumps(SMALL)},
    )
    assert r.status_code == 202, r.text
    job = r.json()
    d = client.get(f"/datasets/{job['dataset_id']}").json()
    assert d["filename"] == "spam.csv" and d["rows"] == 60
    assert queued_ids(settings.queue_name) == [job["id"]]


def test_multipart_with_a_config_that_does_not_fit_stores_nothing(client, settings, spam_csv):
    r = client.post(
        "/jobs",
        files={"file": ("spam.csv", spam_csv, "text/csv")},
        data={"config": json.dumps({"task": "classification", "text_column": "body"})},
    )
    assert r.status_code == 422
    assert r.json()["errors"] == [
        {
            "loc": ["config", "text_column"],
            "msg": "column 'body' not found; the file has: label, text",
            "type": "value_error",
        }
    ]
    assert client.get("/datasets").json()["count"] == 0
    assert client.get("/jobs").json()["count"] == 0
    assert not list((settings.data_dir / "tmp").iterdir())
    assert queued_ids(settings.queue_name) == []


def test_all_problems_at_once(client, dataset):
    r = create(
        client, dataset["id"], {"task": "classification", "text_column": "body", "label_column": "kind"}
    )
    assert r.status_code == 422
    locs = [e["loc"] for e in r.json()["errors"]]
    assert ["config", "text_column"] in locs and ["config", "label_column"] in locs
    assert "the file has: label, text" in r.json()["detail"]


def test_list_newest_first_and_filter_by_status(client, dataset):
    ids = [create(client, dataset["id"]).json()["id"] for _ in range(3)]
    client.post(f"/jobs/{ids[1]}/cancel")
    body = client.get("/jobs").json()
    assert body["count"] == 3
    assert [j["id"] for j in body["data"]] == ids[::-1]
    queued = client.get("/jobs", params={"status": "queued"}).json()
    assert queued["count"] == 2 and [j["id"] for j in queued["data"]] == [ids[2], ids[0]]
    cancelled = client.get("/jobs", params={"status": "cancelled"}).json()
    assert [j["id"] for j in cancelled["data"]] == [ids[1]]
    page = client.get("/jobs", params={"limit": 1, "offset": 1}).json()
    assert page["count"] == 3 and [j["id"] for j in page["data"]] == [ids[1]]
    # queue positions follow creation order among queued jobs
    assert client.get(f"/jobs/{ids[0]}").json()["queue"]["position"] == 1
    assert client.get(f"/jobs/{ids[2]}").json()["queue"]["position"] == 2


def test_cancel_queued_at_once_running_goes_cancelling_finished_409(client, dataset, db_session: Session):
    a, b, c = (create(client, dataset["id"]).json()["id"] for _ in range(3))
    r = client.post(f"/jobs/{a}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert client.post(f"/jobs/{a}/cancel").status_code == 202  # idempotent

    store.claim_job(db_session, b, "test:1")
    db_session.commit()
    r = client.post(f"/jobs/{b}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelling"

    store.claim_job(db_session, c, "test:1")
    store.finish_job(db_session, c, "succeeded")
    db_session.commit()
    r = client.post(f"/jobs/{c}/cancel")
    assert r.status_code == 409
    assert r.json()["detail"] == f"job {c} already succeeded; nothing to cancel"
    kinds = [e["kind"] for e in client.get(f"/jobs/{b}/events").json()["data"]]
    assert kinds == ["queued", "started", "cancelling"]


def _write_checkpoint(settings, job_id: str, step: int) -> CheckpointInfo:
    rel = f"jobs/{job_id}/checkpoints/step-{step:08d}"
    d = settings.data_dir / rel
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"step": step}))
    (d / "model.safetensors").write_bytes(b"\x00" * 1000)
    return CheckpointInfo(
        name=f"step-{step:08d}",
        path=str(d),
        step=step,
        epoch=0,
        metrics={"val_loss": 0.5},
        size_bytes=1000 + len(json.dumps({"step": step})),
        is_best=True,
    )


def test_progress_metrics_events_checkpoints_as_a_worker_writes_them(
    client, settings, dataset, db_session: Session
):
    job_id = create(client, dataset["id"]).json()["id"]
    store.claim_job(db_session, job_id, "test:1")
    store.update_progress(
        db_session,
        job_id,
        {
            "step": 20,
            "total_steps": 40,
            "epoch": 0,
            "total_epochs": 1,
            "percent": 50.0,
            "eta_seconds": 3.0,
            "tokens_per_second": 1234.5,
            "train_loss": 0.7,
        },
    )
    store.add_metrics(
        db_session,
        job_id,
        [MetricPoint(10, 0, "train", "loss", 0.9), MetricPoint(20, 0, "train", "loss", 0.7)],
    )
    store.add_metrics(
        db_session,
        job_id,
        [MetricPoint(20, 0, "val", "loss", 0.5), MetricPoint(20, 0, "val", "accuracy", 0.75)],
    )
    info = _write_checkpoint(settings, job_id, 20)
    store.add_checkpoint(
        db_session, job_id, info, f"jobs/{job_id}/checkpoints/{info.name}", metric="val_loss"
    )
    db_session.commit()

    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "running" and job["attempts"] == 1 and job["queue"] is None
    assert job["progress"]["step"] == 20 and job["progress"]["percent"] == 50.0
    assert job["metrics"] == {"train_loss": 0.7, "val_loss": 0.5, "val_accuracy": 0.75}
    assert job["best"]["checkpoint"] == "step-00000020" and job["best"]["step"] == 20

    m = client.get(f"/jobs/{job_id}/metrics").json()
    assert m["count"] == 4
    assert [(p["step"], p["split"], p["name"]) for p in m["data"]] == [
        (10, "train", "loss"),
        (20, "train", "loss"),
        (20, "val", "loss"),
        (20, "val", "accuracy"),
    ]
    since = client.get(f"/jobs/{job_id}/metrics", params={"since_step": 20}).json()
    assert since["count"] == 3 and all(p["step"] == 20 for p in since["data"])

    cps = client.get(f"/jobs/{job_id}/checkpoints").json()
    assert cps["count"] == 1
    assert cps["data"][0] | {"created_at": None} == {
        "name": "step-00000020",
        "step": 20,
        "metrics": {"val_loss": 0.5},
        "size_bytes": 1012,
        "is_best": True,
        "created_at": None,
    }

    r = client.get(f"/jobs/{job_id}/checkpoints/step-00000020")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/gzip"
    assert f'filename="{job_id}-step-00000020.tar.gz"' in r.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["step-00000020/meta.json", "step-00000020/model.safetensors"]
        assert json.loads(tar.extractfile("step-00000020/meta.json").read()) == {"step": 20}


@pytest.mark.parametrize(
    "name,status",
    [
        ("step-99999999", 404),  # no such checkpoint
        ("...", 422),  # the pattern refuses it before any lookup
        ("..%2F..%2Fdatasets", 404),  # an encoded separator: no route matches
        ("step-1%00", 422),
        (".hidden", 422),
        ("a" * 65, 422),
    ],
)
def test_checkpoint_download_names_cannot_leave_the_data_dir(client, dataset, name, status):
    job_id = create(client, dataset["id"]).json()["id"]
    r = client.get(f"/jobs/{job_id}/checkpoints/{name}")
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"


def test_checkpoint_row_pointing_outside_the_data_dir_is_refused(client, settings, dataset, db_session):
    job_id = create(client, dataset["id"]).json()["id"]
    store.claim_job(db_session, job_id, "test:1")
    info = _write_checkpoint(settings, job_id, 5)
    store.add_checkpoint(db_session, job_id, info, "../../etc")
    db_session.commit()
    r = client.get(f"/jobs/{job_id}/checkpoints/{info.name}")
    assert r.status_code == 404
    assert r.json()["code"] == "checkpoint_missing"


def test_predict_before_any_checkpoint_is_409(client, dataset):
    job_id = create(client, dataset["id"]).json()["id"]
    r = client.post(f"/jobs/{job_id}/predict", json={"texts": ["hello"]})
    assert r.status_code == 409
    assert (
        r.json()["detail"]
        == f"job {job_id} (queued) has no checkpoint yet; predict after its first evaluation"
    )
    r = client.post(f"/jobs/{job_id}/predict", json={"prompt": "hello"})
    assert r.status_code == 422
    assert r.json()["detail"] == 'this is a classification job: send {"texts": [...]}'
    r = client.post(f"/jobs/{job_id}/predict", json={"texts": ["a"], "prompt": "b"})
    assert r.status_code == 422


def test_unknown_job_is_404_everywhere(client):
    missing = "0" * 32
    for method, path in [
        ("GET", f"/jobs/{missing}"),
        ("GET", f"/jobs/{missing}/metrics"),
        ("GET", f"/jobs/{missing}/events"),
        ("GET", f"/jobs/{missing}/checkpoints"),
        ("GET", f"/jobs/{missing}/checkpoints/step-00000001"),
        ("POST", f"/jobs/{missing}/cancel"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 404, (method, path)
        assert r.json()["detail"] == f"job {missing} not found"


def test_too_many_active_jobs_is_429_with_retry_after(make_settings, spam_csv):
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(make_settings(max_active_jobs_per_key="2"))) as client:
        d = client.post("/datasets", files={"file": ("s.csv", spam_csv)}).json()
        a = create(client, d["id"])
        assert create(client, d["id"]).status_code == 202
        r = create(client, d["id"])
        assert r.status_code == 429
        assert r.headers["retry-after"] == "30"
        assert r.json()["detail"].startswith("2 jobs are already queued or running for this key (limit 2")
        client.post(f"/jobs/{a.json()['id']}/cancel")
        assert create(client, d["id"]).status_code == 202
