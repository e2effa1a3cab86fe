"""A real `jobformer worker` subprocess, real Redis, real PostgreSQL/SQLite: the job lifecycle end to end,
cancel, SIGKILL (lost worker -> requeued -> resumed from its checkpoint) and SIGTERM (hand-off).

No eager mode and no mocked broker: jobs go through Redis to a prefork worker exactly as in production.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

import broker as queue
from core.db import store
from core.db.models import Event
from core.db.session import session_scope
from core.ml.checkpoint import list_checkpoints
from tests.integration.procs import (
    create_job,
    empty_database,
    job_checkpoints,
    job_curves,
    job_row,
    job_step,
    service_environment,
    start_worker,
    tiny_config,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The test's settings in os.environ (the worker subprocesses inherit them). PostgreSQL by default;
    parametrize indirectly with "sqlite" for the embedded backend."""
    backend = getattr(request, "param", "postgresql")
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "db_url_pg")
    with service_environment(tmp_path, url, monkeypatch) as values:
        yield values


@pytest.fixture
def db_url_pg(pg_url: str) -> str:
    """The session's PostgreSQL database, emptied: a worker's reaper looks at every job in it."""
    empty_database(pg_url)
    return pg_url


def _status(job_id: str) -> str:
    return job_row(job_id).status


def _events(job_id: str) -> list[tuple[str, dict | None]]:
    with session_scope() as s:
        return [
            (r.kind, r.data)
            for r in s.execute(select(Event).where(Event.job_id == job_id).order_by(Event.id)).scalars()
        ]


@pytest.mark.parametrize("env", ["sqlite", "postgresql"], indirect=True)
def test_job_runs_to_succeeded(env: dict[str, str], tmp_path: Path) -> None:
    data_dir = Path(env["JOBFORMER_DATA_DIR"])
    job_id = create_job(data_dir, tiny_config(max_steps=120, eval_every=40))
    worker = start_worker(tmp_path)
    try:
        queue.enqueue_job(job_id)
        wait_for(lambda: _status(job_id) in {"succeeded", "failed"}, "the job to end", procs=(worker,))
        job = job_row(job_id)
        assert (job.status, job.error_code, job.error_message, job.attempts) == ("succeeded", None, None, 1)
        assert job.worker.rsplit(":", 1)[1].isdigit()
        assert job.result["status"] == "completed" and job.result["steps"] == 120
        assert job.progress["step"] == 120 and job.progress["total_steps"] == 120
        assert job.best["metric"] == "val_f1_macro" and job.best["checkpoint"].startswith("step-")
        assert set(job.metrics) >= {"train_loss", "val_loss", "val_accuracy", "val_f1_macro"}
        curves = job_curves(job_id)
        assert curves["train_loss"] == list(range(10, 121, 10))
        assert curves["val_loss"] == [40, 80, 100, 120]  # and each epoch end (100 steps)
        kinds = [k for k, _ in _events(job_id)]
        assert kinds[:2] == ["queued", "started"] and kinds[-1] == "succeeded"
        assert "data_loaded" in kinds and kinds.count("evaluation") == 4
        checkpoints = job_checkpoints(job_id)
        assert checkpoints, "no checkpoint rows"
        assert [c for c in checkpoints if c[2]] and checkpoints[-1][1] == 120
        for _name, _step, _best, rel in checkpoints:
            assert (data_dir / rel / "model.safetensors").is_file(), rel
        # Delivering the same job again (Redis may) runs nothing: the claim refuses it.
        queue.enqueue_job(job_id)
        wait_for(
            lambda: "not claimed" in worker.log_tail(20000), "the duplicate to be refused", procs=(worker,)
        )
        assert [k for k, _ in _events(job_id)].count("started") == 1
    finally:
        worker.stop()


def test_cancel_running_job(env: dict[str, str], tmp_path: Path) -> None:
    data_dir = Path(env["JOBFORMER_DATA_DIR"])
    job_id = create_job(data_dir, tiny_config(max_steps=100_000, eval_every=100_000))
    worker = start_worker(tmp_path)
    try:
        queue.enqueue_job(job_id)
        wait_for(lambda: job_step(job_id) >= 20, "the job to train a few steps", procs=(worker,))
        with session_scope() as s:
            assert store.request_cancel(s, job_id).status == "cancelling"
        wait_for(lambda: _status(job_id) == "cancelled", "the job to be cancelled", procs=(worker,))
        job = job_row(job_id)
        assert job.error_code is None and job.finished_at is not None
        checkpoints = job_checkpoints(job_id)
        # The last checkpoint is the one the cancel saved (an epoch end may have written one before it).
        assert checkpoints and checkpoints[-1][1] >= 20 and checkpoints[-1][1] % 5 == 0
        assert (data_dir / checkpoints[0][3] / "trainer_state.pt").is_file()
        kinds = [k for k, _ in _events(job_id)]
        assert kinds[-2:] == ["cancelling", "cancelled"] or kinds[-1] == "cancelled"
        assert "cancelling" in kinds
    finally:
        worker.stop()


def test_killed_worker_job_resumes_from_checkpoint(env: dict[str, str], tmp_path: Path) -> None:
    # The job is endless (it never finishes before the kill, however fast the machine): once it is seen
    # training again after the resume, it is cancelled, and its curve is checked across both runs.
    data_dir = Path(env["JOBFORMER_DATA_DIR"])
    job_id = create_job(data_dir, tiny_config(max_steps=100_000, eval_every=50))
    first = start_worker(tmp_path, "first")
    second = None
    try:
        queue.enqueue_job(job_id)
        wait_for(
            lambda: job_checkpoints(job_id) and job_step(job_id) >= job_checkpoints(job_id)[-1][1] + 20,
            "a checkpoint and some steps after it",
            procs=(first,),
        )
        first.signal(signal.SIGKILL, group=True)  # the machine dies: no hand-off, no last write
        first.wait(30)
        killed_at = job_row(job_id)
        assert (killed_at.status, killed_at.attempts) == ("running", 1)
        # The loop resumes from the latest checkpoint on disk; it can be a step ahead of the rows (killed
        # between writing it and recording it), and the claim must cut the curve back to it, not further.
        resume_step = list_checkpoints(data_dir / "jobs" / job_id)[-1]["step"]
        assert resume_step >= job_checkpoints(job_id)[-1][1]

        second = start_worker(tmp_path, "second")  # its reaper sees the stale heartbeat
        wait_for(
            lambda: job_row(job_id).attempts == 2 and job_step(job_id) >= resume_step + 120,
            "the job to be resumed and train on",
            procs=(second,),
        )
        with session_scope() as s:
            assert store.request_cancel(s, job_id).status == "cancelling"
        wait_for(lambda: _status(job_id) == "cancelled", "the resumed job to be cancelled", procs=(second,))
        job = job_row(job_id)
        assert (job.status, job.attempts, job.error_code) == ("cancelled", 2, None)
        events = _events(job_id)
        kinds = [k for k, _ in events]
        assert kinds.count("started") == 1 and "requeued" in kinds
        resumed = [d for k, d in events if k == "resumed"]
        assert resumed[0]["attempt"] == 2 and resumed[0]["step"] == resume_step
        assert resumed[1] == {"step": resume_step}  # the loop's own event: it loaded that checkpoint
        # One continuous loss curve: every step once, in order, across both runs, well past the resume.
        curves = job_curves(job_id)
        last = curves["train_loss"][-1]
        assert last >= resume_step + 120
        assert curves["train_loss"] == list(range(10, last + 1, 10))
        # evaluations every 50 steps (epoch ends, every 100, fall on them too)
        assert curves["val_loss"] == list(range(50, curves["val_loss"][-1] + 1, 50))
    finally:
        first.stop(5)
        if second is not None:
            second.stop()


def test_sigterm_hands_job_back_and_another_worker_finishes_it(env: dict[str, str], tmp_path: Path) -> None:
    data_dir = Path(env["JOBFORMER_DATA_DIR"])
    job_id = create_job(data_dir, tiny_config(max_steps=1500, eval_every=10_000))
    first = start_worker(tmp_path, "first")
    second = None
    try:
        queue.enqueue_job(job_id)
        wait_for(lambda: job_step(job_id) >= 30, "the job to train a few steps", procs=(first,))
        first.signal(signal.SIGTERM)  # the main process only, as `docker stop` or systemd would
        assert first.wait(120) == 0, first.log_tail()
        job = job_row(job_id)
        assert (job.status, job.attempts) == ("queued", 0), first.log_tail()
        stopped_at = job_checkpoints(job_id)[-1][1]
        assert stopped_at >= 30 and stopped_at % 5 == 0
        assert [k for k, _ in _events(job_id)][-1] == "requeued"
        assert queue.queue_position(job_id) == 1  # re-sent: waiting for the next worker

        second = start_worker(tmp_path, "second")
        wait_for(lambda: _status(job_id) in {"succeeded", "failed"}, "the job to end", procs=(second,))
        job = job_row(job_id)
        assert (job.status, job.attempts) == ("succeeded", 1)
        resumed = [d for k, d in _events(job_id) if k == "resumed"]
        assert resumed[0]["step"] == stopped_at
        assert job_curves(job_id)["train_loss"] == list(range(10, 1501, 10))
    finally:
        first.stop(5)
        if second is not None:
            second.stop()


def test_lost_message_is_resent_and_workers_online(env: dict[str, str], tmp_path: Path) -> None:
    # A job committed but never sent (the broker was down when the API enqueued it, or Redis lost its
    # data): a worker's reaper finds it queued without a message and sends it again.
    job_id = create_job(Path(env["JOBFORMER_DATA_DIR"]), tiny_config(max_steps=20, eval_every=20))
    queue._workers_cache.clear()
    assert queue.workers_online() == 0
    worker = start_worker(tmp_path)
    try:
        wait_for(lambda: _status(job_id) == "succeeded", "the unsent job to run", procs=(worker,))
        assert "its message is gone: sending it again" in worker.log_tail(50000)
        queue._workers_cache.clear()
        assert queue.workers_online() == 1
    finally:
        worker.stop()
    queue._workers_cache.clear()
    assert queue.workers_online() == 0  # a clean stop removes the mark


def test_job_time_limit_covers_every_attempt_and_fails_the_job(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JOBFORMER_JOB_TIME_LIMIT_SECONDS counts from the job's first start, across attempts: a job whose
    worker is lost resumes with what is left of it, and when it is spent the job ends ``failed`` with code
    ``time_limit``, its checkpoints kept. Would catch: a limit that restarts with each attempt (the resumed
    run trains for the whole limit again and the job ends ``succeeded``)."""
    monkeypatch.setenv("JOBFORMER_JOB_TIME_LIMIT_SECONDS", "12")  # the workers inherit it
    data_dir = Path(env["JOBFORMER_DATA_DIR"])
    job_id = create_job(data_dir, tiny_config(max_steps=1_000_000, eval_every=20))
    first = start_worker(tmp_path, "first")
    second = None
    try:
        queue.enqueue_job(job_id)
        wait_for(lambda: job_checkpoints(job_id), "a checkpoint", procs=(first,))
        first.signal(signal.SIGKILL, group=True)
        first.wait(30)
        second = start_worker(tmp_path, "second")  # resumes it once the heartbeat is stale (6 s)
        wait_for(lambda: _status(job_id) in {"succeeded", "failed"}, "the job to end", procs=(second,))
        job = job_row(job_id)
        assert (job.status, job.error_code, job.attempts) == ("failed", "time_limit", 2), job.error_message
        assert "JOBFORMER_JOB_TIME_LIMIT_SECONDS=12" in job.error_message
        assert "resumed" in [k for k, _ in _events(job_id)]
        rows = job_checkpoints(job_id)
        assert rows and all((data_dir / rel / "model.safetensors").is_file() for _, _, _, rel in rows)
    finally:
        first.stop(5)
        if second is not None:
            second.stop()
