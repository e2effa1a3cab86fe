"""A sweep survives a crash of its worker and of the API (issue 11: "the search survives an API or worker
restart: nothing is lost, no trial runs twice").

Real processes: `jobformer serve` and a `jobformer worker` (two trials at once) on PostgreSQL and Redis.
Mid-sweep, while two trials train, both are SIGKILLed (the worker with its children: no hand-off, no last
write); the API comes back on the same port and a new worker starts. Its reaper finds the trials' stale
heartbeats, queues them again to resume from their checkpoints, and drives the search on from the
database alone (docs/design.md, "Sweeps" and "One owner per job"). The sweep ends with every trial once,
each trained to its last step, each step's point written once, and no job claimed while another worker
still held it.

It would catch: a search kept in a process's memory (the sweep stalls or starts over after the restart),
a trial created twice by two drivers (two jobs with one number, or more than max_jobs), a trial lost with
its worker (the sweep never ends), a job claimed again without being queued again first (two owners at
once), a resume that repeats or drops points.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from core.db.models import Job
from core.db.session import session_scope
from tests.integration.procs import (
    Service,
    job_checkpoints,
    job_curves,
    job_events,
    start_service,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_STEPS = 150  # under one epoch of the SMS file (156 steps): evaluations at every 30 steps only
SWEEP = {
    "config": {
        "task": "classification",
        "text_column": 1,
        "label_column": 0,
        "tokenizer": {"kind": "char"},
        "model": {"d_model": 32, "n_heads": 2, "n_layers": 1, "dim_feedforward": 64, "max_length": 64},
        "training": {
            "max_steps": MAX_STEPS,
            "batch_size": 32,
            "warmup_steps": 5,
            "eval_every": 30,
            "seed": 0,
        },
        "device": "cpu",
    },
    "parameters": {"training.learning_rate": {"distribution": "log_uniform", "min": 1e-3, "max": 1e-2}},
    "method": "random",
    "max_jobs": 5,
    "max_parallel": 2,
    "seed": 3,
}
ACTIVE = ("queued", "running", "cancelling")
CONCURRENCY = ("--concurrency", "2")


@pytest.fixture
def service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pg_url: str) -> Iterator[Service]:
    """The API on a port it can come back on and a worker running two jobs at once (the sweep's
    max_parallel)."""
    with start_service(tmp_path, pg_url, monkeypatch, worker_args=CONCURRENCY) as svc:
        yield svc


def sweep_jobs(sweep_id: str) -> list[Job]:
    with session_scope() as s:
        jobs = list(s.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.trial_number)))
        for job in jobs:
            s.expunge(job)
        return jobs


def claims_each_after_a_requeue(job_id: str) -> list[str]:
    """The job's claims in order (``started``/``resumed`` events with an attempt: the store's, not the
    loop's own ``resumed``), each after the last one was given back; fails on a claim of a job that
    another worker still held (a second claim with no ``requeued`` since the first)."""
    claims: list[str] = []
    held = False
    for kind, message, data in job_events(job_id):
        if kind in ("started", "resumed") and data and "attempt" in data:
            assert not held, f"job {job_id} claimed while held: {message}"
            held = True
            claims.append(kind)
        elif kind in ("requeued", "succeeded", "failed", "cancelled"):
            held = False
    return claims


def test_a_sweep_survives_killing_its_worker_and_the_api(service: Service, shared_data: Path) -> None:
    [first] = service.workers
    client = httpx.Client(base_url=service.url, timeout=30)
    data = (shared_data / "sms_spam" / "SMSSpamCollection.tsv").read_bytes()
    dataset = client.post("/datasets", files={"file": ("sms.tsv", data, "text/tab-separated-values")})
    assert dataset.status_code == 201, dataset.text
    r = client.post("/sweeps", json={"dataset_id": dataset.json()["id"], **SWEEP})
    assert r.status_code == 202, r.text
    sweep_id = r.json()["id"]

    # Two trials training on the first worker, each with a checkpoint to resume from: then the crash. (On a
    # quiet machine a trial lasts a few seconds: wait for no more than that.)
    def two_trials_with_a_checkpoint() -> list[str]:
        running = [j.id for j in sweep_jobs(sweep_id) if j.status == "running"]
        ready = [j for j in running if job_checkpoints(j)]
        return running if len(running) == 2 and len(ready) == 2 else []

    killed = wait_for(two_trials_with_a_checkpoint, "two trials with a checkpoint", 120, (first,), 0.1)
    first.signal(signal.SIGKILL, group=True)
    first.wait(30)
    assert service.api is not None
    service.api.signal(signal.SIGKILL, group=True)
    service.api.wait(30)
    client.close()
    at_crash = {j.id: (j.status, j.trial_number) for j in sweep_jobs(sweep_id)}
    assert all(at_crash[j][0] == "running" for j in killed), at_crash
    assert len(at_crash) < SWEEP["max_jobs"], "the crash came too late: every trial had been created"

    # The API back on its port, a new worker: the search goes on from the database.
    service.start_api()
    second = service.start_worker("second", CONCURRENCY)
    procs = (second, service.api)
    client = httpx.Client(base_url=service.url, timeout=30)

    def ended() -> dict | None:
        sweep = client.get(f"/sweeps/{sweep_id}").json()
        return sweep if sweep["status"] != "running" else None

    sweep = wait_for(ended, "the sweep to end after the restart", timeout=240, procs=procs, interval=0.5)
    client.close()

    # Nothing lost: max_jobs trials, numbers 0..n-1 once each, all trained to the end and ranked.
    assert sweep["status"] == "succeeded", sweep
    board = sweep["leaderboard"]
    assert sorted(t["number"] for t in board) == list(range(SWEEP["max_jobs"]))
    assert sweep["counts"] == {"succeeded": SWEEP["max_jobs"]}
    assert all(t["metric"] is not None and t["steps"] == MAX_STEPS for t in board), board
    values = [t["metric"] for t in board]
    assert values == sorted(values, reverse=True) and sweep["best"] == board[0]
    jobs = sweep_jobs(sweep_id)
    assert [j.trial_number for j in jobs] == list(range(SWEEP["max_jobs"]))  # one job per number
    assert {t["job_id"] for t in board} == {j.id for j in jobs}
    for trial_id, (_, number) in at_crash.items():  # the trials made before the crash kept their number
        assert next(j.id for j in jobs if j.trial_number == number) == trial_id

    # No trial ran twice: a killed trial was queued again, then resumed once by the new worker; every
    # other trial was claimed once. Each step's loss was written once, in order, to the last step.
    for job in jobs:
        claims = claims_each_after_a_requeue(job.id)
        kinds = [kind for kind, _, _ in job_events(job.id)]
        assert kinds.count("succeeded") == 1, kinds
        if job.id in killed:
            assert claims == ["started", "resumed"], kinds
            assert (job.attempts, job.epoch) == (2, 2)
            assert kinds.count("requeued") == 1
        else:
            assert claims == ["started"] and (job.attempts, job.epoch) == (1, 1), kinds
        assert job_curves(job.id)["train_loss"] == list(range(10, MAX_STEPS + 1, 10)), job.id
        assert job_curves(job.id)["val_loss"] == list(range(30, MAX_STEPS + 1, 30)), job.id
