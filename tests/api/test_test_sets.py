"""``test_dataset_id`` in POST /jobs (docs/design.md, "Evaluations and batch predictions"): refused before
anything is queued (another owner's dataset 404, a test set without the job's text or label column 422
naming it), kept on the job and shown in its answer. The evaluation itself runs on a real worker:
tests/integration/test_model_runs.py."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.api.conftest import queued_ids

SMALL = {"task": "classification", "model": {"d_model": 16, "n_heads": 2, "dim_feedforward": 32}}
ALICE = {"Authorization": "Bearer alice-key-0123456789"}
BOB = {"Authorization": "Bearer bob-key-9876543210"}


@pytest.fixture
def two_owners(make_settings, spam_csv):
    """A client of an app with two owners' keys, Alice's training file, her test set, her file without
    the label column and Bob's file (``ids``), and the app's settings. Also tests/api/test_sweep_test_sets.py's."""
    settings = make_settings(api_keys="alice-key-0123456789, bob-key-9876543210")
    with TestClient(create_app(settings)) as c:

        def upload(content: bytes, headers: dict) -> str:
            r = c.post("/datasets", files={"file": ("d.csv", content, "text/csv")}, headers=headers)
            assert r.status_code == 201, r.text
            return r.json()["id"]

        ids = {
            "train": upload(spam_csv, ALICE),
            "test": upload(spam_csv.replace(b"free", b"gratis"), ALICE),
            "nolabel": upload(b"text,kind\n" + b"".join(b"hello %d,x\n" % i for i in range(10)), ALICE),
            "bobs": upload(spam_csv, BOB),
        }
        yield c, ids, settings


def test_a_test_set_is_kept_and_shown(two_owners):
    client, ids, settings = two_owners
    body = {"dataset_id": ids["train"], "test_dataset_id": ids["test"], "config": SMALL}
    r = client.post("/jobs", json=body, headers=ALICE)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["test_dataset_id"] == ids["test"] and job["test_evaluation"] is None
    assert job["id"] in queued_ids(settings.queue_name)
    assert client.get(f"/jobs/{job['id']}", headers=ALICE).json()["test_dataset_id"] == ids["test"]


def test_the_form_takes_a_test_set_too(two_owners, spam_csv):
    client, ids, _ = two_owners
    r = client.post(
        "/jobs",
        files={"file": ("spam.csv", spam_csv, "text/csv")},
        data={"config": json.dumps(SMALL), "test_dataset_id": ids["test"]},
        headers=ALICE,
    )
    assert r.status_code == 202, r.text
    assert r.json()["test_dataset_id"] == ids["test"]


@pytest.mark.parametrize(
    ("which", "config", "status", "loc", "fragment"),
    [
        ("bobs", SMALL, 404, ["body", "test_dataset_id"], "test dataset {id} not found"),
        ("unknown", SMALL, 404, ["body", "test_dataset_id"], "upload the test file with POST /datasets"),
        (
            "nolabel",
            SMALL,
            422,
            ["body", "test_dataset_id"],
            "the test set lacks the job's label_column (column 'label' not found; the file has: text, kind)",
        ),
        (
            "nolabel",
            {**SMALL, "text_column": "body"},
            422,
            ["body", "test_dataset_id"],
            "lacks the job's text_column (column 'body' not found",
        ),
    ],
)
def test_a_bad_test_set_is_refused_before_anything_is_queued(
    two_owners, which, config, status, loc, fragment
):
    client, ids, settings = two_owners
    test_id = ids.get(which, "0" * 32)
    train_id = ids["train"]
    if (
        config.get("text_column") == "body"
    ):  # a training file that has the column, so only the test set is wrong
        r = client.post(
            "/datasets",
            files={"file": ("b.csv", b"label,body\n" + b"a,x\nb,y\n" * 30, "text/csv")},
            headers=ALICE,
        )
        train_id = r.json()["id"]
    r = client.post(
        "/jobs", json={"dataset_id": train_id, "test_dataset_id": test_id, "config": config}, headers=ALICE
    )
    assert r.status_code == status, r.text
    problem = r.json()
    assert problem["errors"][0]["loc"] == loc
    assert fragment.format(id=test_id) in problem["detail"]
    assert client.get("/jobs", headers=ALICE).json()["count"] == 0
    assert queued_ids(settings.queue_name) == []


def test_columns_given_by_number_zero_are_kept(two_owners):
    """A headerless file addresses its columns by number: label_column 0 is a column, not "unset"."""
    client, ids, _ = two_owners
    rows = b"".join(b"%s\thello number %d\n" % (b"ham" if i % 2 else b"spam", i) for i in range(40))
    headerless = client.post(
        "/datasets", files={"file": ("h.tsv", rows, "text/tab-separated-values")}, headers=ALICE
    ).json()["id"]
    config = {**SMALL, "text_column": 1, "label_column": 0}
    body = {"dataset_id": headerless, "test_dataset_id": headerless, "config": config}
    r = client.post("/jobs", json=body, headers=ALICE)
    assert r.status_code == 202, r.text
