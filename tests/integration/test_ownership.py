"""One owner per job under pause and partition (issue 8, part 1), with real processes.

A worker that is frozen (SIGSTOP, as a paused VM or a long stall) or cut off from the database past the
heartbeat timeout loses its job: the reaper requeues it and a second worker resumes it under a new lease
epoch. When the first comes back it must stop without a single write: no metric point, event, checkpoint
row, progress or end state in the database, no checkpoint directory on disk, no pruning of the new
owner's checkpoints. Real `jobformer worker` subprocesses, real Redis, real PostgreSQL, and for the
partition the test's own TCP proxy in front of PostgreSQL for one worker only.

Both jobs are endless (they cannot finish before the interruption however fast the machine); once the new
owner has trained well past the old one's wake-up, the job is cancelled and its records are checked.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

import broker as queue
from core.db import store
from core.db.session import session_scope
from core.ml.checkpoint import list_checkpoints
from tests.integration.procs import (
    Proc,
    TcpProxy,
    create_job,
    descendants,
    job_checkpoints,
    job_curves,
    job_events,
    job_row,
    job_step,
    start_worker,
    tiny_config,
    wait_for,
)

pytestmark = pytest.mark.integration

LOST = "lost its lease"


def _online(n: int) -> bool:
    queue._workers_cache.clear()
    return queue.workers_online() == n


def _runner(job_id: str, workers: tuple[Proc, ...]) -> tuple[Proc, Proc]:
    """(the worker running the job, the other one)."""
    pid = int(job_row(job_id).worker.rsplit(":", 1)[1])
    first, second = workers
    return (first, second) if pid in descendants(first.pid) else (second, first)


def _train_on(job_id: str, steps: int, worker: Proc) -> None:
    start = job_step(job_id)
    wait_for(lambda: job_step(job_id) >= start + steps, f"{steps} more steps", procs=(worker,))


def _records(job_id: str) -> tuple[int, list, list, dict]:
    """Everything a worker writes about a job, to compare before and after the old owner wakes up."""
    job = job_row(job_id)
    return job.epoch, job_events(job_id), job_checkpoints(job_id), job_curves(job_id)


def _check_the_job(job_id: str, data_dir: Path, old: Proc) -> None:
    """Cancel the endless job, then: one continuous curve (every step once), one start, one resume per
    takeover, every checkpoint row loadable, nothing on disk without a row, no write by the old owner."""
    with session_scope() as s:
        assert store.request_cancel(s, job_id).status == "cancelling"
    wait_for(lambda: job_row(job_id).status == "cancelled", "the job to be cancelled")
    job = job_row(job_id)
    assert (job.status, job.attempts, job.epoch) == ("cancelled", 2, 2)
    curves = job_curves(job_id)
    last = curves["train_loss"][-1]
    assert curves["train_loss"] == list(range(10, last + 1, 10)), "a step recorded twice, or missing"
    assert curves["val_loss"] == list(range(50, curves["val_loss"][-1] + 1, 50))
    kinds = [kind for kind, _, _ in job_events(job_id)]
    assert (kinds.count("started"), kinds.count("requeued"), kinds.count("cancelled")) == (1, 1, 1), kinds
    resumes = [d for k, _, d in job_events(job_id) if k == "resumed" and "attempt" in d]
    assert [d["attempt"] for d in resumes] == [2]
    rows = job_checkpoints(job_id)
    # The old owner's checkpoints that remain (the best one, kept) are from before the takeover.
    assert rows and all(name.endswith("-e2") or step <= resumes[0]["step"] for name, step, _, _ in rows), rows
    assert rows[-1][0].endswith("-e2"), rows
    for name, step, _best, rel in rows:
        state = torch.load(data_dir / rel / "trainer_state.pt", weights_only=True)
        assert state["step"] == step, name
    on_disk = {c["name"] for c in list_checkpoints(data_dir / "jobs" / job_id)}
    assert on_disk == {name for name, _, _, _ in rows}
    assert not [p for p in (data_dir / "jobs" / job_id / "checkpoints").iterdir() if p.name.startswith(".")]
    assert "Traceback" not in old.log_tail(500_000)


def test_paused_worker_wakes_up_after_takeover_and_writes_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    """SIGSTOP the worker running a job (its whole process group: a frozen machine) past the heartbeat
    timeout; the other worker's reaper requeues the job and that worker resumes it. SIGCONT the first.

    Would catch: an old owner whose writes are not conditional on its lease epoch (its buffered metric
    points, progress or checkpoint rows land after the takeover: steps twice, a checkpoint row of epoch 1),
    one that saves a checkpoint or prunes the new owner's on waking up, or one that keeps training."""
    data_dir = Path(env["JOBFORMER_DATA_DIR"])
    job_id = create_job(data_dir, tiny_config(max_steps=100_000, eval_every=50))
    workers = (start_worker(tmp_path, "a"), start_worker(tmp_path, "b"))
    old = workers[0]
    try:
        wait_for(lambda: _online(2), "both workers", procs=workers)
        queue.enqueue_job(job_id)
        wait_for(
            lambda: job_checkpoints(job_id) and job_step(job_id) >= job_checkpoints(job_id)[-1][1] + 20,
            "a checkpoint and some steps after it",
            procs=workers,
        )
        old, new = _runner(job_id, workers)
        old.signal(signal.SIGSTOP, group=True)
        wait_for(lambda: job_row(job_id).epoch == 2, "the other worker to take the job over", procs=(new,))
        _train_on(job_id, 60, new)

        old.signal(signal.SIGCONT, group=True)
        wait_for(lambda: LOST in old.log_tail(500_000), "the old owner to notice", timeout=30, procs=(old,))
        epoch, events, _, _ = _records(job_id)
        _train_on(job_id, 60, new)  # both awake now
        assert job_row(job_id).epoch == epoch == 2
        assert not [
            e for e in job_events(job_id)[len(events) :] if e[0] in ("started", "resumed", "requeued")
        ]
        _check_the_job(job_id, data_dir, old)
    finally:
        old.signal(signal.SIGCONT, group=True)
        for w in workers:
            w.stop(10)


def test_worker_cut_off_from_the_database_stops_before_the_takeover(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Worker a reaches PostgreSQL through a TCP proxy that the test cuts while a's job trains; worker b
    reaches it directly. a cannot renew its lease, so it stops training by itself after
    JOBFORMER_LEASE_SECONDS, before b's reaper may requeue the job (the heartbeat timeout); b resumes it.
    The proxy is restored after the takeover: a writes nothing then either.

    Would catch: a worker that trains on (and writes checkpoints into the shared directory) while it cannot
    reach the database, overlapping with the job's next owner; one that flushes its buffered points or its
    end state once the database is back."""
    direct = env["JOBFORMER_DATABASE_URL"]
    assert "@127.0.0.1:5432/" in direct
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    data_dir = Path(env["JOBFORMER_DATA_DIR"])
    job_id = create_job(data_dir, tiny_config(max_steps=100_000, eval_every=50))
    cut_off = {**os.environ, "JOBFORMER_DATABASE_URL": direct.replace(":5432/", f":{proxy.port}/")}
    a = start_worker(tmp_path, "a", env=cut_off)
    b = None
    try:
        wait_for(lambda: _online(1), "worker a", procs=(a,))
        queue.enqueue_job(job_id)
        wait_for(
            lambda: job_checkpoints(job_id) and job_step(job_id) >= job_checkpoints(job_id)[-1][1] + 20,
            "a checkpoint and some steps after it",
            procs=(a,),
        )
        b = start_worker(tmp_path, "b")
        wait_for(lambda: _online(2), "worker b", procs=(b,))
        proxy.cut()
        cut_at = time.monotonic()
        # Poll the requeue closely: the moment b's reaper takes the job from a, a must have stopped.
        while job_row(job_id).status == "running":
            assert time.monotonic() - cut_at < 120, b.log_tail()
            time.sleep(0.05)
        assert LOST in a.log_tail(500_000), a.log_tail()
        assert "lease was not renewed" in a.log_tail(500_000)
        time.sleep(1)
        proxy.restore()  # whichever worker takes the message now resumes the job under epoch 2
        wait_for(lambda: job_row(job_id).epoch == 2, "the job to be resumed", procs=(a, b))
        new = a if f"claimed by {job_row(job_id).worker} " in a.log_tail(500_000) else b
        _train_on(job_id, 80, new)
        _check_the_job(job_id, data_dir, a)
    finally:
        a.stop(10)
        if b is not None:
            b.stop(10)
        proxy.stop()
