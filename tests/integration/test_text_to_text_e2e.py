"""Text to text end to end (issue 13): a real `jobformer serve` and a real `jobformer worker` against
PostgreSQL and Redis. Upload a slice of the English-French pairs, train a tiny encoder-decoder to
`succeeded`, read its BLEU/chrF, predict greedily and with beam search, download the best checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.integration.procs import CALM_HEARTBEATS, Service, wait_for
from tests.integration.test_api_e2e import _job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "t2t-e2e-key-0123456789"

T2T_CONFIG = {
    "task": "text_to_text",
    "source_column": "en",
    "target_column": "fr",
    "target_tokenizer": {"language": "fr"},
    "model": {"d_model": 64, "n_heads": 2, "n_layers": 1, "dim_feedforward": 128, "max_length": 12},
    "training": {
        "max_steps": 200,
        "batch_size": 32,
        "learning_rate": 0.005,
        "warmup_steps": 10,
        "eval_every": 50,
        "val_fraction": 0.1,
        "seed": 0,
    },
    "device": "cpu",
}


@pytest.fixture
def service_options() -> dict:
    """A worker running two things at once: the runs queued together overlap."""
    return {"api_keys": (API_KEY,), "heartbeats": CALM_HEARTBEATS, "worker_args": ("--concurrency", "2")}


def write_pairs(shared_data: Path, path: Path, n: int, skip: int = 0) -> Path:
    """The first ``n`` pairs of the shared file (short sentences), less the first ``skip``, with an
    ``en<TAB>fr`` header."""
    with (shared_data / "translation" / "eng_fra.tsv").open(encoding="utf-8") as f:
        lines = [next(f).rstrip("\n") for _ in range(n)][skip:]
    path.write_text("en\tfr\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_text_to_text_job_trains_predicts_and_hands_out_checkpoints(
    service: Service, shared_data, tmp_path
):
    client, procs = service.client(), service.procs
    pairs = write_pairs(shared_data, tmp_path / "pairs.tsv", 400)
    with pairs.open("rb") as f:
        r = client.post("/datasets", files={"file": (pairs.name, f, "text/tab-separated-values")})
    assert r.status_code == 201, r.text
    dataset = r.json()
    assert dataset["rows"] == 400 and dataset["columns"] == ["en", "fr"]

    # a test set of pairs it never trains on, evaluated by the worker once training succeeds
    test_set = write_pairs(shared_data, tmp_path / "test-set.tsv", 500, skip=400)
    with test_set.open("rb") as f:
        r = client.post("/datasets", files={"file": (test_set.name, f, "text/tab-separated-values")})
    assert r.status_code == 201, r.text
    test_set_id = r.json()["id"]
    body = {"dataset_id": dataset["id"], "test_dataset_id": test_set_id, "config": T2T_CONFIG}
    r = client.post("/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    job = wait_for(
        lambda: (j := _job(client, job_id))["status"] in ("succeeded", "failed", "cancelled") and j,
        "the text-to-text job to end",
        procs=tuple(procs),
    )
    assert job["status"] == "succeeded", job
    assert job["progress"]["step"] == job["progress"]["total_steps"] == 200
    assert set(job["metrics"]) >= {"train_loss", "val_loss", "val_bleu", "val_chrf"}
    assert 0 <= job["metrics"]["val_bleu"] <= 100 and 0 < job["metrics"]["val_chrf"] <= 100
    assert job["best"]["metric"] == "val_bleu"
    metrics = client.get(f"/jobs/{job_id}/metrics").json()["data"]
    val_steps = sorted({p["step"] for p in metrics if p["split"] == "val" and p["name"] == "bleu"})
    assert {50, 100, 150, 200} <= set(val_steps)  # every eval_every steps (and at epoch ends)
    # It learned something: the validation loss fell and chrF rose from the first evaluation to the last,
    # and the best checkpoint's BLEU is above the untrained model's 0.
    val = {(p["name"], p["step"]): p["value"] for p in metrics if p["split"] == "val"}
    first = min(val_steps)
    assert val["loss", 200] < val["loss", first] - 1.0 and val["chrf", 200] > val["chrf", first] + 5, val
    assert job["best"]["value"] > 0, job["best"]

    # An evaluation and batch predictions on the workers, on pairs the model never saw whose columns are
    # named otherwise: text_column names the source column, label_column the target column. Queued now
    # (after the test set's evaluation), they run while the test reads the job; their answers come below.
    test = tmp_path / "test.tsv"
    with (shared_data / "translation" / "eng_fra.tsv").open(encoding="utf-8") as f:
        lines = [line for _, line in zip(range(500), f, strict=False)][400:]
    test.write_text("english\tfrench\n" + "".join(lines), encoding="utf-8")
    with test.open("rb") as f:
        r = client.post("/datasets", files={"file": (test.name, f, "text/tab-separated-values")})
    assert r.status_code == 201, r.text
    test_id = r.json()["id"]
    r = client.post(f"/jobs/{job_id}/evaluations", json={"dataset_id": test_id, "text_column": "english"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "label_column"], r.text
    assert "column 'fr' not found; the file has: english, french" in r.json()["detail"]
    body = {"dataset_id": test_id, "text_column": "english", "label_column": "french"}
    r = client.post(f"/jobs/{job_id}/evaluations", json=body)
    assert r.status_code == 202, r.text
    evaluation_id = r.json()["id"]
    r = client.post(f"/jobs/{job_id}/predictions", json={"dataset_id": test_id, "text_column": "english"})
    assert r.status_code == 202, r.text
    prediction_id = r.json()["id"]

    sources = ["Go.", "I am cold.", "Thank you."]
    greedy = client.post(f"/jobs/{job_id}/predict", json={"texts": sources})
    assert greedy.status_code == 200, greedy.text
    texts = [p["text"] for p in greedy.json()["data"]]
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts) and any(texts)
    assert greedy.json()["checkpoint"] == job["best"]["checkpoint"]
    beam = client.post(f"/jobs/{job_id}/predict", json={"texts": sources, "beam_size": 2})
    assert beam.status_code == 200, beam.text
    assert len(beam.json()["data"]) == 3 and all("text" in p for p in beam.json()["data"])
    # beam options on a bad value are the caller's error, named
    r = client.post(f"/jobs/{job_id}/predict", json={"texts": sources, "beam_size": 0})
    assert r.status_code == 422 and "beam_size" in r.text

    checkpoints = client.get(f"/jobs/{job_id}/checkpoints").json()["data"]
    best = next(c for c in checkpoints if c["is_best"])
    r = client.get(f"/jobs/{job_id}/checkpoints/{best['name']}")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames()}
        assert {"model.safetensors", "vocab.json", "config.json", "meta.json"} <= names
        config = json.loads(tar.extractfile(f"{best['name']}/config.json").read())
        assert config["task"] == "text_to_text" and config["target_column"] == "fr"
        vocab = json.loads(tar.extractfile(f"{best['name']}/vocab.json").read())
        assert "target_tokens" in vocab

    # the test set's evaluation, summed up on the job
    job = wait_for(
        lambda: (
            (j := _job(client, job_id))["test_evaluation"]
            and j["test_evaluation"]["status"] in ("succeeded", "failed", "cancelled")
            and j
        ),
        "the test set's evaluation",
        procs=tuple(procs),
    )
    assert job["test_evaluation"]["status"] == "succeeded", job["test_evaluation"]
    assert {"loss", "bleu", "chrf"} <= set(job["test_evaluation"]["summary"])

    # the evaluation
    run = wait_for(
        lambda: (
            (x := client.get(f"/evaluations/{evaluation_id}").json())["status"]
            in ("succeeded", "failed", "cancelled")
            and x
        ),
        "the evaluation to end",
        procs=tuple(procs),
    )
    assert run["status"] == "succeeded", run["error"]
    report = run["report"]
    assert report["task"] == "text_to_text" and report["rows"] == 100
    assert report["loss"] > 0 and 0 <= report["bleu"] <= 100 and 0 < report["chrf"] <= 100
    assert len(report["examples"]) == 10 and report["examples"][0]["source"] == lines[0].split("\t")[0]

    # the batch predictions
    run = wait_for(
        lambda: (
            (x := client.get(f"/predictions/{prediction_id}").json())["status"]
            in ("succeeded", "failed", "cancelled")
            and x
        ),
        "the predictions to end",
        procs=tuple(procs),
    )
    assert run["status"] == "succeeded" and run["rows"] == 100, run
    out = client.get(run["output_url"])
    assert out.status_code == 200, out.text
    rows = list(csv.DictReader(io.StringIO(out.text)))
    assert len(rows) == 100 and list(rows[0]) == ["english", "french", "generated_text"]
    first = [row["english"] for row in rows[:3]]
    answer = client.post(f"/jobs/{job_id}/predict", json={"texts": first}).json()["data"]
    assert [row["generated_text"] for row in rows[:3]] == [p["text"] for p in answer]
