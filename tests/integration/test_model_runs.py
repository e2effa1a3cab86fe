"""Evaluations and batch predictions end to end: a real `jobformer serve` and `jobformer worker` against
PostgreSQL and Redis. Train a tiny classifier, refuse bad requests before anything is queued, evaluate it
on a test set it never saw (the report beats the majority class and matches `jobformer evaluate` run
locally on the same checkpoint), predict a whole dataset and download the CSV, cancel a queued run."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from api.model_runs import RUN_TASK_NAME
from tests.core.ml._tiny import write_sentiment_csv
from tests.integration.procs import CALM_HEARTBEATS, Service, start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY, OTHER_KEY = "runs-key-0123456789", "runs-other-0123456789"
CONFIG = {
    "task": "classification",
    "model": {"d_model": 64, "n_heads": 4, "n_layers": 1, "dim_feedforward": 32, "max_length": 16},
    "training": {"epochs": 6, "batch_size": 16, "warmup_steps": 5, "learning_rate": 2e-3, "seed": 0},
    "device": "cpu",
}


@pytest.fixture
def service_options() -> dict:
    """Two keys (two owners); a worker running two things at once: the runs queued together overlap."""
    return {
        "api_keys": (KEY, OTHER_KEY),
        "heartbeats": CALM_HEARTBEATS,
        "worker_args": ("--concurrency", "2"),
    }


def _upload(client: httpx.Client, path: Path) -> str:
    with path.open("rb") as f:
        r = client.post("/datasets", files={"file": (path.name, f, "text/csv")})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _until(client: httpx.Client, path: str, done: set[str], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(path).json()
        if body["status"] in done:
            return body
        time.sleep(0.2)
    raise AssertionError(f"{path} still {body['status']} after {timeout} s: {body}")


def test_evaluate_and_predict_a_finished_job(service: Service, tmp_path):
    client, other = service.client(KEY), service.client(OTHER_KEY)
    train_id = _upload(client, write_sentiment_csv(tmp_path / "train.csv"))
    test_csv = write_sentiment_csv(tmp_path / "test.csv", rows=120, seed=7)
    with open(test_csv, "a", encoding="utf-8") as f:
        f.write("the meal was so-so,meh\n")
    test_id = _upload(client, test_csv)
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("text,sentiment\n" + "".join(f"food {i},pos\n" for i in range(10)), encoding="utf-8")
    nolabel_id = _upload(client, nolabel)
    others_id = _upload(other, test_csv)

    r = client.post("/jobs", json={"dataset_id": train_id, "test_dataset_id": test_id, "config": CONFIG})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    # Refused before anything is queued: an unfinished job (409)...
    r = client.post(f"/jobs/{job_id}/evaluations", json={"dataset_id": test_id})
    if r.status_code != 202:  # (unless the tiny job already finished)
        assert r.status_code == 409 and r.json()["code"] == "job_not_finished", r.text
    job = _until(client, f"/jobs/{job_id}", {"succeeded", "failed", "cancelled"})
    assert job["status"] == "succeeded", job
    # the test set, evaluated by the worker once training ended: linked from the job
    deadline = time.monotonic() + 60
    while job["test_evaluation"] is None and time.monotonic() < deadline:
        time.sleep(0.5)
        job = client.get(f"/jobs/{job_id}").json()
    assert job["test_evaluation"] is not None, job
    # an evaluation and a batch prediction on the workers, queued now: they run while this test checks
    # refusals and runs the CLI (their answers are read below)
    r = client.post(f"/jobs/{job_id}/evaluations", json={"dataset_id": test_id})
    assert r.status_code == 202, r.text
    evaluation_id = r.json()["id"]
    r = client.post(f"/jobs/{job_id}/predictions", json={"dataset_id": test_id})
    assert r.status_code == 202 and r.headers["Location"] == f"/predictions/{r.json()['id']}"
    prediction_id = r.json()["id"]
    test_run = _until(client, job["test_evaluation"]["url"], {"succeeded", "failed", "cancelled"})
    assert test_run["status"] == "succeeded" and test_run["dataset_id"] == test_id, test_run
    summary = client.get(f"/jobs/{job_id}").json()["test_evaluation"]["summary"]
    assert {"accuracy", "f1_macro"} <= set(summary)
    assert summary == {k: test_run["report"][k] for k in summary}
    # ... another owner's dataset (404), a dataset without the label column (422 naming it)
    r = client.post(f"/jobs/{job_id}/evaluations", json={"dataset_id": others_id})
    assert r.status_code == 404 and r.json()["code"] == "dataset_not_found"
    r = client.post(f"/jobs/{job_id}/evaluations", json={"dataset_id": nolabel_id})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"] == ["body", "label_column"]
    assert "column 'label' not found; the file has: text, sentiment" in r.json()["detail"]
    r = client.post(f"/jobs/{job_id}/predictions", json={"dataset_id": test_id, "text_column": "body"})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "text_column"]
    assert other.get(f"/jobs/{job_id}/evaluations").status_code == 404

    # the evaluation
    run = _until(client, f"/evaluations/{evaluation_id}", {"succeeded", "failed", "cancelled"})
    assert run["status"] == "succeeded", run["error"]
    report = run["report"]
    majority = max(c["support"] for c in report["per_class"].values()) / report["scored_rows"]
    assert report["scored_rows"] == 120 and report["accuracy"] > majority + 0.2
    assert report["unseen_labels"] == {"meh": 1}
    assert run["progress"]["percent"] == 100.0
    listed = client.get(f"/jobs/{job_id}/evaluations").json()
    assert [e["id"] for e in listed["data"]] == [test_run["id"], run["id"]]
    # the same numbers as evaluating the downloaded checkpoint locally
    ckpt = run["checkpoint"]
    r = client.get(f"/jobs/{job_id}/checkpoints/{ckpt}")
    assert r.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        tar.extractall(tmp_path / "ckpt", filter="data")
    from core.ml.evaluation import evaluate_file
    from core.ml.predict import Predictor

    local = evaluate_file(Predictor.load(tmp_path / "ckpt" / ckpt), test_csv)
    assert local["accuracy"] == report["accuracy"] and local["confusion_matrix"] == report["confusion_matrix"]
    # the test evaluation ran on the best checkpoint: the same numbers as `jobformer evaluate --json`
    assert test_run["checkpoint"] == ckpt == job["best"]["checkpoint"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "evaluate",
            str(tmp_path / "ckpt" / ckpt),
            str(test_csv),
            "--json",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    cli_report = json.loads(out.stdout)
    for key in ("accuracy", "f1_macro", "confusion_matrix", "per_class", "unseen_labels", "scored_rows"):
        assert test_run["report"][key] == cli_report[key], key
    # `jobformer status` shows the report; `jobformer export JOB_ID` has the API export the best checkpoint
    base = ["--url", str(client.base_url), "--api-key", KEY]
    cli = [sys.executable, "-m", "cli.main"]
    status = subprocess.run([*cli, "status", job_id, *base], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert f"test set {test_id}: evaluation {test_run['id']} succeeded" in status.stdout
    assert (
        f"accuracy {test_run['report']['accuracy']:.4f}  macro-F1 {test_run['report']['f1_macro']:.4f}"
        in status.stdout
    )
    assert "confusion matrix (rows: true, columns: predicted)" in status.stdout
    out_dir = tmp_path / "onnx"
    export = subprocess.run(
        [*cli, "export", job_id, "--out", str(out_dir), *base], capture_output=True, text=True, timeout=300
    )
    assert export.returncode == 0, export.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "README.md",
        "config.json",
        "labels.json",
        "model.onnx",
        "vocab.json",
    ]

    # the batch prediction, downloaded as CSV
    pred = _until(client, f"/predictions/{prediction_id}", {"succeeded", "failed", "cancelled"})
    assert pred["status"] == "succeeded" and pred["rows"] == 121, pred
    r = client.get(pred["output_url"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 121 and set(rows[0]) == {"text", "label", "predicted_label", "prob_neg", "prob_pos"}
    right = sum(x["predicted_label"] == x["label"] for x in rows if x["label"] != "meh")
    assert right / 120 == pytest.approx(report["accuracy"])
    assert other.get(f"/predictions/{pred['id']}").status_code == 404


def test_the_task_names_agree():
    from worker.runs import RUN_TASK_NAME as WORKER_NAME

    assert RUN_TASK_NAME == WORKER_NAME


@pytest.fixture
def killable(tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    """A serve and one worker with short heartbeats (the reaper declares a run lost after 6 s); the test
    kills and starts workers itself (every one is stopped at the end)."""
    with start_service(tmp_path, pg_url, monkeypatch, api_keys=(KEY,)) as service:
        yield service


def test_a_run_whose_worker_dies_is_finished_by_another(killable: Service, tmp_path):
    """SIGKILL the worker (main process and child) mid-prediction: the run stays `running` until a new
    worker's reaper sees its heartbeat stale, requeues it, and the new worker runs it again to the end
    (the whole file, once). A run queued meanwhile whose broker message is lost is re-sent."""
    client = killable.client()
    train_id = _upload(client, write_sentiment_csv(tmp_path / "train.csv"))
    small = write_sentiment_csv(tmp_path / "small.csv", rows=40, seed=3)
    big = tmp_path / "big.csv"
    lines = small.read_text(encoding="utf-8").splitlines()
    rows = 20_000
    big.write_text("\n".join([lines[0], *(lines[1 + i % 40] for i in range(rows))]) + "\n", encoding="utf-8")
    big_id, small_id = _upload(client, big), _upload(client, small)
    r = client.post(
        "/jobs",
        json={"dataset_id": train_id, "config": {**CONFIG, "training": {**CONFIG["training"], "epochs": 2}}},
    )
    job_id = r.json()["id"]
    assert _until(client, f"/jobs/{job_id}", {"succeeded", "failed", "cancelled"})["status"] == "succeeded"

    run_id = client.post(f"/jobs/{job_id}/predictions", json={"dataset_id": big_id}).json()["id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run = client.get(f"/predictions/{run_id}").json()
        if run["status"] == "running" and (run["progress"] or {}).get("done", 0) > 0:
            break
        assert run["status"] in ("queued", "running"), run
        time.sleep(0.1)
    assert run["progress"]["done"] < rows, (
        "the run ended before the worker could be killed: make the file larger"
    )
    killable.workers[0].signal(signal.SIGKILL, group=True)
    killable.workers[0].wait(30)
    time.sleep(1)
    assert client.get(f"/predictions/{run_id}").json()["status"] == "running"

    # queued while no worker lives, and its message lost: the reaper re-sends it
    lost_id = client.post(f"/jobs/{job_id}/predictions", json={"dataset_id": small_id}).json()["id"]
    broker_redis = redis.Redis.from_url(killable.env["JOBFORMER_BROKER_URL"])
    assert broker_redis.delete(killable.env["JOBFORMER_QUEUE_NAME"]) == 1
    broker_redis.close()

    second = killable.start_worker("worker-2")
    run = _until(client, f"/predictions/{run_id}", {"succeeded", "failed", "cancelled"}, timeout=300)
    assert run["status"] == "succeeded" and run["rows"] == rows, run
    out = list(csv.DictReader(io.StringIO(client.get(run["output_url"]).text)))
    assert len(out) == rows and all(row["predicted_label"] in ("pos", "neg") for row in out)
    lost = _until(client, f"/predictions/{lost_id}", {"succeeded", "failed", "cancelled"}, timeout=120)
    assert lost["status"] == "succeeded" and lost["rows"] == 40, lost
    log = second.log_tail(200_000)
    assert f"run {run_id} requeued: its worker was lost" in log
    assert f"run {lost_id} is queued but its message is gone" in log
