"""GET /jobs/{id}/checkpoints/{name}?format=onnx (docs/design.md, "Evaluations and batch predictions"): the
archive holds model.onnx, vocab.json, labels.json, config.json and the README; run in onnxruntime as the
README says, the model gives the probabilities of the API's own /predict within 1e-4. A language model's
checkpoint is a 422 at query.format naming the way out."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from tests.api.test_predict import TINY, _run_like_a_worker, _sentiment_csv, _text_file

ort = pytest.importorskip("onnxruntime")
spacy = pytest.importorskip("spacy")


@pytest.fixture
def db_url(sqlite_url: str) -> str:  # the download touches the backend for one lookup
    return sqlite_url


def _config(task: str) -> dict:
    training = {
        "max_steps": 60,
        "batch_size": 16,
        "warmup_steps": 5,
        "learning_rate": 0.003,
        "eval_every": 15,
    }
    return {"task": task, "model": TINY, "training": training, "device": "cpu"}


def test_the_onnx_archive_gives_the_apis_probabilities(client, settings, db_session, tmp_path):
    job_id = _run_like_a_worker(client, settings, db_session, _sentiment_csv(), _config("classification"))
    best = next(c for c in client.get(f"/jobs/{job_id}/checkpoints").json()["data"] if c["is_best"])
    r = client.get(f"/jobs/{job_id}/checkpoints/{best['name']}", params={"format": "onnx"})
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == f'attachment; filename="{job_id}-{best["name"]}-onnx.tar.gz"'
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        names = sorted(m.name for m in tar.getmembers())
        tar.extractall(tmp_path, filter="data")
    folder = tmp_path / f"{best['name']}-onnx"
    assert names == [
        f"{best['name']}-onnx/{n}"
        for n in sorted(("model.onnx", "vocab.json", "labels.json", "config.json", "README.md"))
    ]

    # tokenized as the README says: spaCy's blank tokenizer, lowercased, <cls> first, padded with 0
    config = json.loads((folder / "config.json").read_text())
    itos = json.loads((folder / "vocab.json").read_text())["tokens"]
    labels = json.loads((folder / "labels.json").read_text())
    stoi = {t: i for i, t in enumerate(itos)}
    nlp = spacy.blank(config["tokenizer"]["language"])
    texts = ["the meal was good", "it was awful and sad", "lovely"]
    T = config["model"]["max_length"]
    rows = []
    for text in texts:
        text = text.lower() if config["tokenizer"]["lowercase"] else text
        tokens = [t.text for t in nlp.tokenizer(text) if not t.text.isspace()]
        rows.append([stoi["<cls>"]] + [stoi.get(t, stoi["<unk>"]) for t in tokens][: T - 1])
    width = max(map(len, rows))
    ids = np.array([row + [0] * (width - len(row)) for row in rows], dtype=np.int64)
    probabilities = ort.InferenceSession(str(folder / "model.onnx")).run(None, {"input_ids": ids})[0]

    answer = client.post(f"/jobs/{job_id}/predict", json={"texts": texts}).json()
    assert answer["checkpoint"] == best["name"]
    for row, expected in zip(probabilities, answer["data"], strict=True):
        assert dict(zip(labels, row.tolist(), strict=True)) == pytest.approx(
            expected["probabilities"], abs=1e-4
        )
    # the model learned something: the positive text is more positive than the negative one
    pos = labels.index("pos")
    assert probabilities[0][pos] > probabilities[1][pos]


def test_a_language_model_is_refused_at_the_format(client, settings, db_session):
    job_id = _run_like_a_worker(client, settings, db_session, _text_file(), _config("language_modeling"))
    name = client.get(f"/jobs/{job_id}/checkpoints").json()["data"][-1]["name"]
    r = client.get(f"/jobs/{job_id}/checkpoints/{name}", params={"format": "onnx"})
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem["code"] == "export_unsupported" and problem["errors"][0]["loc"] == ["query", "format"]
    assert "ONNX export supports classifiers; this checkpoint is language_modeling" in problem["detail"]
    assert "download it without ?format" in problem["detail"]
    r = client.get(f"/jobs/{job_id}/checkpoints/{name}", params={"format": "zip"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", "format"]
