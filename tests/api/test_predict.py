"""POST /jobs/{id}/predict with real checkpoints: a tiny model trained by core.ml.train in the job's run dir
and recorded through core.db.store, as the worker does (the worker itself is exercised in
tests/integration)."""

from __future__ import annotations

import random

import pytest

from core.db import store
from core.ml.callbacks import Callbacks, CheckpointInfo
from core.ml.config import TrainConfig
from core.ml.predict import Predictor
from core.ml.train import train

WORDS = ["the", "meal", "food", "was", "very", "really", "and", "so", "it", "our"]
POS, NEG = ["good", "great", "lovely", "nice"], ["bad", "awful", "poor", "sad"]
TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "dim_feedforward": 32, "max_length": 16, "dropout": 0.0}


def _sentiment_csv(rows: int = 160) -> bytes:
    rng = random.Random(0)
    lines = ["text,label"]
    for _ in range(rows):
        label = rng.choice(["pos", "neg"])
        words = rng.sample(WORDS, 3) + [rng.choice(POS if label == "pos" else NEG)]
        rng.shuffle(words)
        lines.append(f"{' '.join(words)},{label}")
    return ("\n".join(lines) + "\n").encode()


def _text_file(lines: int = 120) -> bytes:
    rng = random.Random(0)
    return (
        "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(lines)) + "\n"
    ).encode()


class _Collect(Callbacks):
    def __init__(self) -> None:
        self.checkpoints: list[CheckpointInfo] = []

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        self.checkpoints.append(info)


def _run_like_a_worker(client, settings, db_session, content: bytes, config: dict) -> str:
    """Create the job through the API, then train it here and record its checkpoints through the store."""
    d = client.post("/datasets", files={"file": ("d.csv", content)}).json()
    job = client.post("/jobs", json={"dataset_id": d["id"], "config": config}).json()
    store.claim_job(db_session, job["id"], "test:1")
    db_session.commit()
    out = settings.data_dir / "jobs" / job["id"]
    collected = _Collect()
    cfg = TrainConfig.model_validate(job["config"])
    train(cfg, settings.data_dir / "datasets" / d["sha256"][:2] / d["sha256"], out, collected)
    for info in collected.checkpoints:
        store.add_checkpoint(db_session, job["id"], info, f"jobs/{job['id']}/checkpoints/{info.name}")
    store.finish_job(db_session, job["id"], "succeeded")
    db_session.commit()
    return job["id"]


@pytest.fixture
def db_url(sqlite_url: str) -> str:  # prediction does not touch the backend beyond one lookup
    return sqlite_url


def test_classification_predictions_come_from_the_best_checkpoint(client, settings, db_session):
    config = {
        "task": "classification",
        "tokenizer": {"kind": "char"},
        "model": TINY,
        "training": {
            "max_steps": 40,
            "batch_size": 16,
            "warmup_steps": 5,
            "learning_rate": 0.003,
            "eval_every": 20,
        },
        "device": "cpu",
    }
    job_id = _run_like_a_worker(client, settings, db_session, _sentiment_csv(), config)
    best = next(c for c in client.get(f"/jobs/{job_id}/checkpoints").json()["data"] if c["is_best"])
    texts = ["the meal was good", "it was awful"]
    r = client.post(f"/jobs/{job_id}/predict", json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["checkpoint"] == best["name"]
    expected = Predictor.load(settings.data_dir / "jobs" / job_id / "checkpoints" / best["name"]).classify(
        texts
    )
    assert body["data"] == expected
    assert set(body["data"][0]["probabilities"]) == {"neg", "pos"}
    # the loaded predictor is cached: a second call does not load again
    assert len(client.app.state.predictors) == 1
    client.post(f"/jobs/{job_id}/predict", json={"texts": texts})
    assert len(client.app.state.predictors) == 1


def test_language_model_generation_is_seeded(client, settings, db_session):
    config = {
        "task": "language_modeling",
        "tokenizer": {"kind": "char"},
        "model": TINY,
        "training": {
            "max_steps": 30,
            "batch_size": 16,
            "warmup_steps": 5,
            "learning_rate": 0.003,
            "eval_every": 15,
        },
        "device": "cpu",
    }
    job_id = _run_like_a_worker(client, settings, db_session, _text_file(), config)
    body = {"prompt": "the meal", "max_new_tokens": 12, "temperature": 0.8, "top_k": 5, "seed": 3}
    a = client.post(f"/jobs/{job_id}/predict", json=body)
    assert a.status_code == 200, a.text
    b = client.post(f"/jobs/{job_id}/predict", json=body)
    assert a.json() == b.json()
    assert isinstance(a.json()["text"], str) and a.json()["checkpoint"].startswith("step-")
    # an empty prompt and a long generation past the context length still answer
    r = client.post(f"/jobs/{job_id}/predict", json={"prompt": "", "max_new_tokens": 40, "seed": 0})
    assert r.status_code == 200, r.text
    r = client.post(f"/jobs/{job_id}/predict", json={"texts": ["x"]})
    assert r.status_code == 422
    assert r.json()["detail"] == 'this is a language-modelling job: send {"prompt": ...}'
