"""A sweep across the worker pool (issue 11): two real `jobformer worker` processes, the API in-process, a
real PostgreSQL database and Redis, the SMS spam file. Six trials over the learning rate, two at a time;
ASHA stops the ones that fall behind (cancelled with a checkpoint, their error saying why); the best
trial leads the leaderboard and beats the majority class; the same seed draws the same trials. The
workers' reapers drive the search (docs/design.md, "Sweeps"): the test only watches."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.main import create_app
from core.db.models import Job
from core.db.session import session_scope
from core.settings import get_settings
from tests.integration.procs import (
    empty_database,
    job_checkpoints,
    job_events,
    service_environment,
    start_worker,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A tiny character-level classifier: a few seconds per trial on a busy 2-core machine.
STEPS = 160
CONFIG = {
    "task": "classification",
    "text_column": 1,
    "label_column": 0,
    "tokenizer": {"kind": "char"},
    "model": {
        "d_model": 32,
        "n_heads": 2,
        "n_layers": 1,
        "dim_feedforward": 64,
        "dropout": 0.0,
        "max_length": 64,
    },
    # Long enough after the first rungs (20, 40) that a prune lands before the trial ends on a fast machine.
    "training": {"max_steps": STEPS, "batch_size": 32, "warmup_steps": 5, "eval_every": 20, "seed": 0},
    "device": "cpu",
}
SWEEP = {
    "config": CONFIG,
    "parameters": {"training.learning_rate": {"distribution": "log_uniform", "min": 1e-5, "max": 1e-2}},
    "method": "random",
    "max_jobs": 6,
    "max_parallel": 2,
    "seed": 7,
    "early_stopping": {"type": "asha", "min_steps": 20, "reduction_factor": 2},
    # The validation loss ranks: the slow learning rates all sit at the majority class's macro-F1 for
    # a while, and ASHA promotes ties, so whether one is pruned would depend on which trial reached a rung
    # first; their losses differ.
    "metric": "val_loss",
}
# Predicting "ham" for every message: macro-F1 of the majority class (86.6% of the file).
MAJORITY_F1 = 0.464


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str) -> Iterator[TestClient]:
    empty_database(pg_url)
    with service_environment(tmp_path, pg_url, monkeypatch):
        workers = [start_worker(tmp_path, f"worker-{i}") for i in range(2)]
        try:
            with TestClient(create_app(get_settings())) as api:
                api.workers = workers  # type: ignore[attr-defined]
                yield api
        finally:
            for w in workers:
                w.stop()


def trial_intervals(sweep_id: str) -> list[tuple]:
    with session_scope() as s:
        rows = s.execute(select(Job.started_at, Job.finished_at).where(Job.sweep_id == sweep_id)).all()
    return [tuple(r) for r in rows]


def most_at_once(intervals: list[tuple]) -> int:
    """The most trials that were running at the same moment (from their start and end times)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = best = 0
    for _, delta in edges:
        running += delta
        best = max(best, running)
    return best


def test_a_sweep_runs_on_two_workers_prunes_and_ranks(service: TestClient, shared_data: Path) -> None:
    api, procs = service, tuple(service.workers)  # type: ignore[attr-defined]
    data = (shared_data / "sms_spam" / "SMSSpamCollection.tsv").read_bytes()
    dataset = api.post("/datasets", files={"file": ("sms.tsv", data, "text/tab-separated-values")}).json()
    r = api.post("/sweeps", json={"dataset_id": dataset["id"], **SWEEP})
    assert r.status_code == 202, r.text
    sweep_id = r.json()["id"]

    active_seen = []

    def ended() -> dict | None:
        sweep = api.get(f"/sweeps/{sweep_id}").json()
        active_seen.append(sum(sweep["counts"].get(k, 0) for k in ("queued", "running", "cancelling")))
        return sweep if sweep["status"] != "running" else None

    sweep = wait_for(ended, "the sweep to end", timeout=240, procs=procs, interval=0.5)
    assert sweep["status"] == "succeeded", sweep
    board = sweep["leaderboard"]
    assert sorted(t["number"] for t in board) == list(range(6))
    assert max(active_seen) <= 2
    intervals = trial_intervals(sweep_id)
    assert all(start is not None and end is not None for start, end in intervals)
    assert most_at_once(intervals) == 2  # two trials trained at the same time, never three

    # ASHA stopped some: cancelled with a checkpoint, their error and an event saying why.
    pruned = [t for t in board if t["state"] == "pruned"]
    assert pruned, board
    assert sweep["counts"]["pruned"] == len(pruned)
    for t in pruned:
        job = api.get(f"/jobs/{t['job_id']}").json()
        assert job["status"] == "cancelled" and job["error"]["code"] == "pruned"
        assert job["error"]["message"].startswith("Pruned by ASHA at rung ") and job["trial"]["pruned"]
        assert t["steps"] < STEPS
        assert "pruned" in [kind for kind, _, _ in job_events(t["job_id"])]
        assert job_checkpoints(t["job_id"]), "a pruned trial keeps its checkpoint"

    # The best trial leads, and learned: its own best macro-F1 is well above the majority class's.
    values = [t["metric"] for t in board if t["metric"] is not None]
    best = sweep["best"]
    assert best == board[0] and best["metric"] == min(values)
    assert best["state"] == "succeeded" and best["steps"] == STEPS
    job = api.get(f"/jobs/{best['job_id']}").json()
    assert job["best"]["metric"] == "val_f1_macro" and job["best"]["value"] > MAJORITY_F1 + 0.2
    assert job["config"]["training"]["learning_rate"] == best["params"]["training.learning_rate"]

    # The same seed draws the same trials (and another seed others); stopped at once.
    again = api.post("/sweeps", json={"dataset_id": dataset["id"], **SWEEP, "max_parallel": 6}).json()
    api.post(f"/sweeps/{again['id']}/cancel")
    drawn = {t["number"]: t["params"] for t in board}
    assert {t["number"]: t["params"] for t in again["leaderboard"]} == drawn
    other = api.post(
        "/sweeps", json={"dataset_id": dataset["id"], **SWEEP, "seed": 8, "max_parallel": 1}
    ).json()
    api.post(f"/sweeps/{other['id']}/cancel")
    assert other["leaderboard"][0]["params"] != drawn[0]

    def all_ended() -> bool:
        return all(
            t["state"] not in ("queued", "running", "cancelling")
            for t in api.get(f"/sweeps/{again['id']}").json()["leaderboard"]
        )

    wait_for(all_ended, "the second sweep's trials to stop", timeout=60, procs=procs)
