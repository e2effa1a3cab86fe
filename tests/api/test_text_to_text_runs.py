"""Text to text's runs through the API (issue 13; docs/design.md "Text to text"): POST /jobs takes a test
set whose source and target columns the job's config names, and refuses one that lacks either (422 at
body.test_dataset_id naming the column) before anything is queued. The evaluation itself, and the
predictions and evaluations of a finished job, run on a real worker:
tests/integration/test_text_to_text_e2e.py."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.api.conftest import queued_ids

PAIRS = b"en\tfr\n" + b"".join(b"sentence %d\tphrase %d\n" % (i, i) for i in range(30))
CONFIG = {
    "task": "text_to_text",
    "source_column": "en",
    "target_column": "fr",
    "target_tokenizer": {"language": "fr"},
    "model": {"d_model": 16, "n_heads": 2, "dim_feedforward": 32},
}


@pytest.fixture
def client(make_settings):
    settings = make_settings()
    with TestClient(create_app(settings)) as c:
        yield c, settings.queue_name


def upload(client: TestClient, content: bytes) -> str:
    r = client.post("/datasets", files={"file": ("p.tsv", content, "text/tab-separated-values")})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_a_pair_test_set_is_kept(client):
    c, queue = client
    train_id, test_id = upload(c, PAIRS), upload(c, PAIRS.replace(b"sentence", b"line"))
    r = c.post("/jobs", json={"dataset_id": train_id, "test_dataset_id": test_id, "config": CONFIG})
    assert r.status_code == 202, r.text
    assert r.json()["test_dataset_id"] == test_id and r.json()["id"] in queued_ids(queue)


@pytest.mark.parametrize(
    ("header", "field", "column"),
    [(b"english\tfr", "source_column", "en"), (b"en\tfrench", "target_column", "fr")],
)
def test_a_test_set_without_the_source_or_target_column_is_refused(client, header, field, column):
    c, queue = client
    train_id = upload(c, PAIRS)
    test_id = upload(c, header + PAIRS[PAIRS.index(b"\n") :])
    r = c.post("/jobs", json={"dataset_id": train_id, "test_dataset_id": test_id, "config": CONFIG})
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["errors"][0]["loc"] == ["body", "test_dataset_id"]
    assert f"the test set lacks the job's {field} (column '{column}' not found" in problem["detail"]
    assert c.get("/jobs").json()["count"] == 0 and queued_ids(queue) == []
