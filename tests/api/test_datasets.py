"""POST/GET/DELETE /datasets against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib

from sqlalchemy.orm import Session

from api.uploads import sanitize_filename
from core.db import store
from core.db.models import Dataset


def test_upload_answers_the_dataset_and_stores_it_content_addressed(client, settings, spam_csv):
    r = client.post("/datasets", files={"file": ("spam.csv", spam_csv, "text/csv")})
    assert r.status_code == 201, r.text
    d = r.json()
    sha = hashlib.sha256(spam_csv).hexdigest()
    assert d["sha256"] == sha
    assert d["size_bytes"] == len(spam_csv)
    assert d["filename"] == "spam.csv"
    assert d["rows"] == 60
    assert d["columns"] == ["label", "text"]
    assert d["format"] == {
        "kind": "csv",
        "delimiter": ",",
        "encoding": "utf-8",
        "header": True,
        "quoting": True,
    }
    assert d["preview"][0] == {"label": "spam", "text": "win a free prize now 0"}
    assert len(d["preview"]) == 5
    assert d["created_at"].endswith("Z") or d["created_at"].endswith("+00:00")
    stored = settings.data_dir / "datasets" / sha[:2] / sha
    assert stored.read_bytes() == spam_csv
    # nothing left behind in the temp dir
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_same_content_twice_is_stored_once(client, settings, upload, spam_csv):
    a = upload(spam_csv, "a.csv")
    b = upload(spam_csv, "b.csv")
    assert a["id"] != b["id"] and a["sha256"] == b["sha256"]
    files = [p for p in (settings.data_dir / "datasets").rglob("*") if p.is_file()]
    assert len(files) == 1
    # deleting one keeps the shared file; deleting the last removes it
    assert client.delete(f"/datasets/{a['id']}").status_code == 204
    assert files[0].exists()
    assert client.delete(f"/datasets/{b['id']}").status_code == 204
    assert not files[0].exists()


def test_list_get_and_404(client, upload, spam_csv):
    first = upload(spam_csv, "first.csv")
    second = upload(spam_csv.replace(b"lunch", b"dinner"), "second.csv")
    r = client.get("/datasets")
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 2
    assert [d["id"] for d in body["data"]] == [second["id"], first["id"]]  # newest first
    page = client.get("/datasets", params={"limit": 1, "offset": 1}).json()
    assert page["count"] == 2 and [d["id"] for d in page["data"]] == [first["id"]]
    assert client.get(f"/datasets/{first['id']}").json() == first
    r = client.get("/datasets/0123456789abcdef0123456789abcdef")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "dataset 0123456789abcdef0123456789abcdef not found"


def test_delete_refused_while_a_job_uses_it(client, upload, spam_csv, db_session: Session):
    d = upload(spam_csv)
    r = client.post("/jobs", json={"dataset_id": d["id"], "config": {"task": "classification"}})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    r = client.delete(f"/datasets/{d['id']}")
    assert r.status_code == 409
    assert r.json()["detail"] == f"dataset {d['id']} is used by active job(s) {job_id}; cancel them first"
    assert client.get(f"/datasets/{d['id']}").status_code == 200


def test_delete_after_its_jobs_ended_keeps_the_jobs(client, upload, spam_csv, settings, db_session: Session):
    """A finished job's record outlives its dataset: the file goes, the dataset is gone for the API, the
    job still shows its dataset_id, config and results."""
    d = upload(spam_csv)
    job_id = client.post("/jobs", json={"dataset_id": d["id"], "config": {"task": "classification"}}).json()[
        "id"
    ]
    assert client.post(f"/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    path = settings.data_dir / db_session.get(Dataset, d["id"]).path
    assert path.is_file()
    assert client.delete(f"/datasets/{d['id']}").status_code == 204
    assert not path.exists()
    assert client.get(f"/datasets/{d['id']}").status_code == 404
    assert client.delete(f"/datasets/{d['id']}").status_code == 404
    assert d["id"] not in [x["id"] for x in client.get("/datasets").json()["data"]]
    job = client.get(f"/jobs/{job_id}")
    assert job.status_code == 200 and job.json()["dataset_id"] == d["id"]
    r = client.post("/jobs", json={"dataset_id": d["id"], "config": {"task": "classification"}})
    assert (r.status_code, r.json()["code"]) == (422, "dataset_not_found"), r.text
    # the same content uploaded again is a new dataset with its file back in the store
    again = upload(spam_csv)
    assert (
        again["id"] != d["id"] and (settings.data_dir / db_session.get(Dataset, again["id"]).path).is_file()
    )


def test_filenames_are_sanitized_for_display():
    assert sanitize_filename("../../etc/passwd") == "passwd"
    assert sanitize_filename("/abs/path/data.csv") == "data.csv"
    assert sanitize_filename("C:\\Users\\me\\data.csv") == "data.csv"
    assert sanitize_filename("a\x00b\x1fc\x7f.csv") == "abc.csv"
    assert sanitize_filename("..") == "upload"
    assert sanitize_filename("") == "upload"
    assert sanitize_filename(None) == "upload"
    long = sanitize_filename("x" * 1000 + ".csv")
    assert len(long) == 200 and long.endswith(".csv")


def test_store_rows_record_the_relative_content_path(client, upload, spam_csv, db_session: Session):
    d = upload(spam_csv)
    row = store.get_job(db_session, "nope")
    assert row is None
    from core.db.models import Dataset

    ds = db_session.get(Dataset, d["id"])
    assert ds.path == f"datasets/{d['sha256'][:2]}/{d['sha256']}"
