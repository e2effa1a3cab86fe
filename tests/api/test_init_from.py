"""``config.init_from`` in POST /jobs (docs/design.md, "Subword tokens and init_from"): a finished job of the
same owner becomes its best checkpoint's directory in the stored config; another owner's job, an unfinished
one, a path, or a checkpoint whose shapes do not fit are a 422 naming the field, before anything is queued."""

from __future__ import annotations

import random

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core.db import store
from core.ml.callbacks import Callbacks, CheckpointInfo
from core.ml.config import TrainConfig
from core.ml.train import train
from tests.api.conftest import queued_ids

ALICE = {"Authorization": "Bearer alice-key-0123456789"}
BOB = {"Authorization": "Bearer bob-key-9876543210"}
TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "dim_feedforward": 32, "max_length": 16, "dropout": 0.0}
WORDS = ["the", "food", "was", "service", "very", "and", "good", "bad", "great", "awful"]


def _csv() -> bytes:
    rng = random.Random(0)
    rows = [f"{' '.join(rng.sample(WORDS, 4))},{rng.choice(['pos', 'neg'])}" for _ in range(80)]
    return ("text,label\n" + "\n".join(rows) + "\n").encode()


def _text() -> bytes:
    rng = random.Random(1)
    return ("\n".join(" ".join(rng.choices(WORDS, k=6)) for _ in range(120)) + "\n").encode()


class _Collect(Callbacks):
    def __init__(self) -> None:
        self.checkpoints: list[CheckpointInfo] = []

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        self.checkpoints.append(info)


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def api(make_settings):
    settings = make_settings(api_keys="alice-key-0123456789, bob-key-9876543210")
    with TestClient(create_app(settings)) as c:
        yield c, settings


def _upload(client, content: bytes, headers: dict, name: str = "d.csv") -> dict:
    r = client.post("/datasets", files={"file": (name, content)}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def _finished_lm(client, settings, db_session) -> str:
    """Alice's language-model job, trained here and recorded through the store as a worker would."""
    d = _upload(client, _text(), ALICE, "docs.txt")
    config = {"task": "language_modeling", "model": TINY, "training": {"max_steps": 4, "eval_every": 4}}
    r = client.post("/jobs", json={"dataset_id": d["id"], "config": config}, headers=ALICE)
    assert r.status_code == 202, r.text
    job = r.json()
    store.claim_job(db_session, job["id"], "test:1")
    db_session.commit()
    collected = _Collect()
    path = settings.data_dir / "datasets" / d["sha256"][:2] / d["sha256"]
    train(TrainConfig.model_validate(job["config"]), path, settings.data_dir / "jobs" / job["id"], collected)
    for info in collected.checkpoints:
        store.add_checkpoint(db_session, job["id"], info, f"jobs/{job['id']}/checkpoints/{info.name}")
    store.finish_job(db_session, job["id"], "succeeded")
    db_session.commit()
    return job["id"]


def _classifier(init_from: str, **model) -> dict:
    return {"task": "classification", "model": {**TINY, **model}, "init_from": init_from}


def test_a_finished_job_becomes_its_best_checkpoint(api, db_session):
    client, settings = api
    lm = _finished_lm(client, settings, db_session)
    d = _upload(client, _csv(), ALICE)
    r = client.post("/jobs", json={"dataset_id": d["id"], "config": _classifier(lm)}, headers=ALICE)
    assert r.status_code == 202, r.text
    job = r.json()
    best = client.get(f"/jobs/{lm}/checkpoints", headers=ALICE).json()
    best_names = [c["name"] for c in best.get("data", best) if c.get("is_best")]
    stored = job["config"]["init_from"]
    assert stored.startswith(str(settings.data_dir.resolve() / "jobs" / lm / "checkpoints"))
    assert best_names and stored.endswith(best_names[0])
    assert job["id"] in queued_ids(settings.queue_name)


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("bobs", "no job {id} of yours"),
        ("unfinished", "is queued, not succeeded"),
        ("path", "a checkpoint directory is for the CLI"),
    ],
)
def test_refused_at_init_from(api, db_session, case, fragment):
    client, settings = api
    d = _upload(client, _csv(), ALICE)
    if case == "unfinished":
        r = client.post("/jobs", json={"dataset_id": d["id"], "config": _classifier_plain()}, headers=ALICE)
        ref = r.json()["id"]
    elif case == "path":
        ref = str(settings.data_dir / "jobs")
    else:
        ref = _finished_lm(client, settings, db_session)
    headers = BOB if case == "bobs" else ALICE
    if case == "bobs":
        d = _upload(client, _csv(), BOB)
    before = queued_ids(settings.queue_name)
    r = client.post("/jobs", json={"dataset_id": d["id"], "config": _classifier(ref)}, headers=headers)
    assert r.status_code == 422, r.text
    err = r.json()["errors"][0]
    assert err["loc"] == ["config", "init_from"]
    assert fragment.format(id=ref) in err["msg"]
    assert queued_ids(settings.queue_name) == before


def _classifier_plain() -> dict:
    return {"task": "classification", "model": TINY}


def test_shapes_that_do_not_fit_name_the_fields(api, db_session):
    client, settings = api
    lm = _finished_lm(client, settings, db_session)
    d = _upload(client, _csv(), ALICE)
    config = _classifier(lm, d_model=32, dim_feedforward=64)
    config["tokenizer"] = {"kind": "char"}
    r = client.post("/jobs", json={"dataset_id": d["id"], "config": config}, headers=ALICE)
    assert r.status_code == 422, r.text
    locs = {tuple(e["loc"]) for e in r.json()["errors"]}
    assert locs == {
        ("config", "model", "d_model"),
        ("config", "model", "dim_feedforward"),
        ("config", "tokenizer", "kind"),
    }
    assert "init_from" in r.json()["detail"]
