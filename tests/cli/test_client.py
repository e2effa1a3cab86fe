"""The API client commands against a real server (uvicorn in a thread, real HTTP, SQLite, real Redis).

No worker runs: a thread plays the worker through core.db.store, so `submit --follow` sees a job move.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from cli.client import predict_remote
from cli.main import cli
from core.db import store
from core.db.models import Job
from core.db.session import session_scope
from core.ml.callbacks import MetricPoint

CONFIG = {"task": "classification", "model": {"d_model": 16, "n_heads": 2, "dim_feedforward": 32}}


@pytest.fixture
def db_url(sqlite_url: str) -> str:  # the client does not depend on the backend: SQLite only
    return sqlite_url


@pytest.fixture
def api_keys() -> str:
    return "cli-test-key"


def run(*args: str, key: str | None = "cli-test-key") -> object:
    env = {"JOBFORMER_API_KEY": key} if key else {}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_submit_status_logs_cancel(server, data_file, db_url):
    r = run("submit", str(data_file), "--config", json.dumps(CONFIG), "--url", server)
    assert r.exit_code == 0, r.output
    job_id = r.stdout.strip()
    assert len(job_id) == 32
    assert "no worker is online" in r.stderr

    r = run("status", job_id, "--url", server)
    assert r.exit_code == 0
    assert r.stdout.splitlines()[0] == f"job {job_id}: queued (attempt 0/3)"
    assert "  queue position 1" in r.stdout

    r = run("status", job_id, "--url", server, "--json")
    assert json.loads(r.stdout)["config"]["model"]["d_model"] == 16

    r = run("cancel", job_id, "--url", server)
    assert r.exit_code == 0 and r.stdout.strip() == f"job {job_id}: cancelled"

    r = run("logs", job_id, "--url", server)
    lines = r.stdout.splitlines()
    assert [line.split()[1] for line in lines] == ["queued", "cancelled"]


def test_api_problems_are_one_readable_error(server, data_file):
    r = run(
        "submit",
        str(data_file),
        "--config",
        '{"task": "classification", "text_column": "body"}',
        "--url",
        server,
    )
    assert r.exit_code == 2
    assert "HTTP 422: the config does not fit the dataset" in r.stderr
    assert "  config.text_column: column 'body' not found; the file has: label, text" in r.stderr

    r = run("status", "0" * 32, "--url", server, key=None)
    assert r.exit_code == 2
    assert "HTTP 401: this server needs an API key" in r.stderr

    r = run("status", "0" * 32, "--url", server)
    assert r.exit_code == 2 and f"HTTP 404: job {'0' * 32} not found" in r.stderr

    r = run("status", "x", "--url", "http://127.0.0.1:1")
    assert r.exit_code == 2 and "cannot reach the API at http://127.0.0.1:1" in r.stderr


def _play_worker(job_holder: dict, stop: threading.Event) -> None:
    """Wait for the submitted job, then run it through the store as a worker would, and succeed."""
    while not stop.is_set():
        with session_scope() as s:
            job_id = s.scalar(select(Job.id).limit(1))
        if job_id:
            break
        time.sleep(0.05)
    else:
        return
    job_holder["id"] = job_id
    with session_scope() as s:
        store.claim_job(s, job_id, "fake:1")
    for step in (5, 10):
        time.sleep(0.3)
        with session_scope() as s:
            progress = {
                "step": step,
                "total_steps": 10,
                "epoch": 0,
                "total_epochs": 1,
                "percent": step * 10.0,
                "eta_seconds": 1.0,
                "tokens_per_second": 100.0,
                "train_loss": 1.0 / step,
            }
            store.update_progress(s, job_id, progress)
            store.add_metrics(s, job_id, [MetricPoint(step, 0, "train", "loss", 1.0 / step)])
    with session_scope() as s:
        store.add_metrics(s, job_id, [MetricPoint(10, 0, "val", "loss", 0.25)])
        store.finish_job(s, job_id, "succeeded")


def test_submit_follow_draws_progress_until_the_job_ends(server, data_file):
    holder: dict = {}
    stop = threading.Event()
    worker = threading.Thread(target=_play_worker, args=(holder, stop), daemon=True)
    worker.start()
    try:
        r = run(
            "submit",
            str(data_file),
            "-c",
            json.dumps(CONFIG),
            "--follow",
            "--interval",
            "0.1",
            "--url",
            server,
        )
    finally:
        stop.set()
        worker.join(10)
    assert r.exit_code == 0, r.output
    job_id = holder["id"]
    lines = r.stdout.splitlines()
    assert lines[0] == job_id
    assert lines[1] == f"job {job_id}: succeeded (attempt 1/3)"
    assert "  step 10/10 (100.0%), epoch 0/1, eta 1s" in lines
    assert "  train_loss=0.1  val_loss=0.25" in lines
    # the bar (stderr) showed the loss, and the events were written as they came
    assert "10/10" in r.stderr and "loss=0.1000" in r.stderr
    assert "queued: Job queued." in r.stderr and "started: Started on fake:1" in r.stderr


def test_predict_remote_without_a_checkpoint_says_so(server, data_file):
    r = run("submit", str(data_file), "-c", json.dumps(CONFIG), "--url", server)
    job_id = r.stdout.strip()
    with pytest.raises(Exception) as info:
        predict_remote(job_id, ["hello"], server, api_key="cli-test-key")
    assert info.value.exit_code == 2
    assert info.value.message == (
        f"HTTP 409: job {job_id} (queued) has no checkpoint yet; predict after its first evaluation"
    )
    # through the `predict` command (cli/train.py) with the URL from the environment
    r = CliRunner().invoke(
        cli, ["predict", job_id, "hello"], env={"JOBFORMER_API_KEY": "cli-test-key", "JOBFORMER_URL": server}
    )
    assert r.exit_code == 2 and "has no checkpoint yet" in r.stderr
    # ... and with --url / --api-key given as flags
    r = CliRunner().invoke(cli, ["predict", job_id, "hello", "--url", server, "--api-key", "cli-test-key"])
    assert r.exit_code == 2 and "has no checkpoint yet" in r.stderr


def test_logs_follow_prints_events_and_points_as_they_come(server, data_file):
    r = run("submit", str(data_file), "--config", json.dumps(CONFIG), "--url", server)
    job_id = r.stdout.strip()
    holder: dict = {}
    stop = threading.Event()
    worker = threading.Thread(target=_play_worker, args=(holder, stop), daemon=True)
    worker.start()
    try:
        r = run("logs", job_id, "--follow", "--url", server)
    finally:
        stop.set()
        worker.join(10)
    assert r.exit_code == 0, r.output  # it succeeded
    lines = [line.split("  ", 1)[1] for line in r.stdout.splitlines()]  # without the times
    kinds = [line.split()[0] for line in lines]
    assert kinds[0] == "queued" and kinds[-1] == "succeeded"
    metric_lines = [line for line in lines if line.startswith("metric")]
    assert [" ".join(m.split()[1:]) for m in metric_lines] == [
        "step 5 train_loss=0.2",
        "step 10 train_loss=0.1",
        "step 10 val_loss=0.25",
    ]

    # An ended job: everything, at once; --json prints the rows; a failed job exits 1.
    r = run("logs", job_id, "-f", "--json", "--url", server)
    assert r.exit_code == 0
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [p["value"] for p in rows if "value" in p] == [0.2, 0.1, 0.25]
    assert [e["kind"] for e in rows if "kind" in e] == ["queued", "started", "succeeded"]
    r = run("logs", "0" * 32, "--follow", "--url", server)
    assert r.exit_code == 2 and f"HTTP 404: job {'0' * 32} not found" in r.stderr


def test_logs_follow_exits_1_when_the_job_fails(server, data_file):
    job_id = run("submit", str(data_file), "--config", json.dumps(CONFIG), "--url", server).stdout.strip()
    with session_scope() as s:
        store.claim_job(s, job_id, "fake:1")
        store.finish_job(s, job_id, "failed", error_code="diverged", error_message="loss is NaN")
    r = run("logs", job_id, "--follow", "--url", server)
    assert r.exit_code == 1
    assert r.stdout.splitlines()[-1].split("  ", 1)[1].startswith("failed")
