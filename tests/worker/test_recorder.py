"""The worker's store recorder and heartbeat against a real database (both backends): throttling,
batching, ordering with checkpoints, pruning on resume, retries on database blips, stop reasons."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from core.db import store
from core.db.models import Checkpoint, Event, Job, MetricPoint
from core.db.session import session_scope
from core.ml.callbacks import CheckpointInfo, Progress
from core.ml.callbacks import MetricPoint as Point
from core.settings import get_settings
from tests.worker._rows import placeholder_dataset
from worker.recorder import Heartbeat, StopReason, StoreRecorder, write_with_retry

WORKER = "host:1"


@pytest.fixture
def job_id(db_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("JOBFORMER_DATABASE_URL", db_url)
    monkeypatch.setenv("JOBFORMER_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    with session_scope() as s:
        job = store.create_job(s, dataset_id=placeholder_dataset(s), config={}, owner=None, max_attempts=3)
        store.claim_job(s, job.id, WORKER)
    yield job.id
    get_settings.cache_clear()


def _progress(step: int) -> Progress:
    return Progress(step, 100, 1, 1, float(step), 1.0, 10.0, 0.5)


def _steps(job_id: str) -> list[int]:
    with session_scope() as s:
        return list(
            s.scalars(select(MetricPoint.step).where(MetricPoint.job_id == job_id).order_by(MetricPoint.id))
        )


def _job(job_id: str):  # type: ignore[no-untyped-def]
    with session_scope() as s:
        return store.get_job(s, job_id)


def test_progress_is_throttled(job_id: str, tmp_path) -> None:
    rec = StoreRecorder(job_id, WORKER, data_dir=tmp_path, progress_every=3600)
    for step in range(1, 51):
        rec.on_progress(_progress(step))
    assert _job(job_id).progress["step"] == 1  # the first goes out at once, the rest wait
    rec.flush()
    assert _job(job_id).progress["step"] == 50


def test_train_metrics_are_batched_and_evaluations_written_at_once(job_id: str, tmp_path) -> None:
    rec = StoreRecorder(job_id, WORKER, data_dir=tmp_path, metrics_every=3600, max_buffered=5)
    rec.on_metrics([Point(10, 1, "train", "loss", 2.0)])
    rec.on_metrics([Point(20, 1, "train", "loss", 1.5)])
    assert _steps(job_id) == []
    rec.on_metrics([Point(20, 1, "val", "loss", 1.7)])
    assert _steps(job_id) == [10, 20, 20]
    for step in range(30, 80, 10):
        rec.on_metrics([Point(step, 1, "train", "loss", 1.0)])
    assert _steps(job_id)[-1] == 70  # the fifth buffered point flushed the batch
    assert _job(job_id).metrics == {"train_loss": 1.0, "val_loss": 1.7}


def test_checkpoint_row_comes_after_the_points_before_it(job_id: str, tmp_path) -> None:
    rec = StoreRecorder(job_id, WORKER, data_dir=tmp_path, metrics_every=3600)
    rec.on_metrics([Point(10, 1, "train", "loss", 2.0)])
    info = CheckpointInfo(
        name="step-00000010",
        path=str(tmp_path / "jobs" / job_id / "checkpoints" / "step-00000010"),
        step=10,
        epoch=1,
        metrics={"val_loss": 1.0},
        size_bytes=5,
        is_best=True,
    )
    rec.on_checkpoint(info)
    assert _steps(job_id) == [10]
    with session_scope() as s:
        row = s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)).one()
    assert row.path == f"jobs/{job_id}/checkpoints/step-00000010"  # relative to the data directory
    assert _job(job_id).best == {
        "step": 10,
        "metric": "val_loss",
        "value": 1.0,
        "checkpoint": "step-00000010",
    }


def test_resumed_event_prunes_points_after_the_resumed_step(job_id: str, tmp_path) -> None:
    rec = StoreRecorder(job_id, WORKER, data_dir=tmp_path)
    rec.on_metrics([Point(step, 1, "train", "loss", 1.0) for step in (10, 20, 30)])
    rec.flush()
    rec.on_event("resumed", "resumed from step-00000020 at step 20", {"step": 20})
    assert _steps(job_id) == [10, 20]
    with session_scope() as s:
        assert (
            s.scalars(select(Event.kind).where(Event.job_id == job_id).order_by(Event.id)).all()[-1]
            == "resumed"
        )


def test_write_with_retry_survives_blips_and_reraises_bugs(job_id: str) -> None:
    calls: list[int] = []

    def flaky(s) -> None:  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("UPDATE jobs", {}, Exception("server closed the connection unexpectedly"))
        store.add_event(s, job_id, "warning", "written on the third try")

    assert write_with_retry(flaky, what="test", job_id=job_id, attempts=4) is True
    assert len(calls) == 3

    def always_down(s) -> None:  # type: ignore[no-untyped-def]
        raise OperationalError("UPDATE jobs", {}, Exception("database is locked"))

    assert write_with_retry(always_down, what="test", job_id=job_id, attempts=2) is False

    def bug(s) -> None:  # type: ignore[no-untyped-def]
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):
        write_with_retry(bug, what="test", job_id=job_id)


def test_unwritten_points_stay_buffered_until_the_database_is_back(
    job_id: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.recorder as recorder_module

    rec = StoreRecorder(job_id, WORKER, data_dir=tmp_path)
    rec.on_metrics([Point(10, 1, "train", "loss", 2.0)])
    rec.flush()
    real = recorder_module.write_with_retry
    monkeypatch.setattr(recorder_module, "write_with_retry", lambda fn, **kw: False)  # the database is down
    rec.on_metrics([Point(20, 1, "val", "loss", 1.0)])
    assert _steps(job_id) == [10]
    monkeypatch.setattr(recorder_module, "write_with_retry", real)
    assert rec.flush() is True
    assert _steps(job_id) == [10, 20]


def test_heartbeat_sees_cancel_and_takeover(job_id: str, tmp_path) -> None:
    beat = Heartbeat(job_id, WORKER, interval=0.2, poll=0.05)
    shutdown = {"flag": False}
    rec = StoreRecorder(
        job_id, WORKER, data_dir=tmp_path, heartbeat=beat, shutdown_requested=lambda: shutdown["flag"]
    )
    before = _job(job_id).heartbeat_at
    beat.start()
    try:
        assert rec.stop_reason() is None
        shutdown["flag"] = True
        assert rec.stop_reason() == StopReason.SHUTDOWN
        with session_scope() as s:
            store.request_cancel(s, job_id)
        deadline = time.monotonic() + 30
        while rec.stop_reason() != StopReason.CANCEL and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rec.stop_reason() == StopReason.CANCEL  # a cancel wins over a shutdown
        while _job(job_id).heartbeat_at == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _job(job_id).heartbeat_at > before  # it beats while cancelling, too
        with session_scope() as s:
            store.finish_job(s, job_id, "cancelled")
        while rec.stop_reason() != StopReason.LOST and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rec.stop_reason() == StopReason.LOST
    finally:
        beat.stop()
    assert not beat.is_alive()


def _epoch(job_id: str) -> int:
    return _job(job_id).epoch


def _counts(job_id: str) -> tuple[int, int, object]:
    with session_scope() as s:
        events = len(s.scalars(select(Event.id).where(Event.job_id == job_id)).all())
    return len(_steps(job_id)), events, _job(job_id).progress


def test_a_lease_not_renewed_in_time_stops_every_write(job_id: str, tmp_path) -> None:
    """The database answers, but this worker's renewals stopped (a stall): once lease_seconds have passed
    since the last renewal was sent, may_write() is False for good and nothing more is written."""
    renewed = (time.monotonic() - 10, time.time() - 10)  # the last renewal went out 10 s ago
    beat = Heartbeat(job_id, WORKER, interval=0.2, epoch=_epoch(job_id), lease_seconds=5, renewed_at=renewed)
    rec = StoreRecorder(job_id, WORKER, data_dir=tmp_path, heartbeat=beat, epoch=_epoch(job_id))
    before = _counts(job_id)
    assert rec.may_write() is False
    assert rec.stop_reason() == StopReason.LOST
    rec.on_metrics([Point(10, 1, "val", "loss", 1.0)])  # would flush at once
    rec.on_event("warning", "late")
    rec.on_progress(_progress(10))
    assert rec.flush() is False
    assert _counts(job_id) == before
    beat.start()  # a heartbeat thread started now does not renew a lost lease either
    time.sleep(0.5)
    beat.stop()
    assert rec.may_write() is False


def test_a_refused_write_means_the_job_is_lost(job_id: str, tmp_path) -> None:
    """Another worker took the job over (a new epoch): the recorder's next write is refused by the store,
    and from then on it writes nothing, even if it is asked to flush again."""
    epoch = _epoch(job_id)
    rec = StoreRecorder(job_id, WORKER, data_dir=tmp_path, epoch=epoch)
    rec.on_metrics([Point(10, 1, "val", "loss", 1.0)])
    assert _steps(job_id) == [10]
    with session_scope() as s:  # lost and taken over
        s.execute(update(Job).where(Job.id == job_id).values(status="queued"))
        store.claim_job(s, job_id, "host:2")  # no checkpoint: it starts over, the curve cut to step 0
    before = _counts(job_id)
    rec.on_metrics([Point(20, 1, "val", "loss", 0.9)])
    assert rec.may_write() is False and rec.stop_reason() == StopReason.LOST
    rec.on_event("warning", "late")
    assert _counts(job_id) == before
    assert _job(job_id).epoch == epoch + 1


def test_heartbeat_renews_the_lease_and_notices_a_takeover(job_id: str, tmp_path) -> None:
    beat = Heartbeat(job_id, WORKER, interval=0.1, poll=0.05, epoch=_epoch(job_id), lease_seconds=1.0)
    beat.start()
    try:
        time.sleep(1.5)  # longer than the lease: only the renewals keep it
        assert beat.lease_held()
        with session_scope() as s:
            s.execute(update(Job).where(Job.id == job_id).values(status="queued"))
            store.claim_job(s, job_id, "host:2")
        deadline = time.monotonic() + 30
        while beat.lease_held() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not beat.lease_held()
    finally:
        beat.stop()
    assert not beat.is_alive()


def test_a_claim_forgets_recorded_checkpoints_whose_files_are_gone(job_id: str, tmp_path) -> None:
    """The owner saved step 200, pruning step 150 on disk, and was stopped (killed, or paused and fenced
    off) before its save's row recorded the pruning. The next claim adopts step 200 (the previous epoch's
    newest on disk) and drops the row of 150: every listed checkpoint loads.

    Would catch: rows left for deleted checkpoints (the ownership integration test saw a listed
    checkpoint without files after a takeover)."""
    from datetime import timedelta

    from core.db.models import utcnow
    from tests.core.ml.test_checkpoint import _save_as as save_as
    from worker.tasks import _claim

    settings = get_settings()
    out_dir = settings.jobs_dir / job_id

    def save(step: int) -> CheckpointInfo:
        return save_as(out_dir, step, 1)  # a save at lease epoch 1, pruning the others of its epoch

    for step in (100, 150):
        info = save(step)
        with session_scope() as s:
            store.add_checkpoint(s, job_id, info, f"jobs/{job_id}/checkpoints/{info.name}", epoch=1)
    assert save(200).pruned == ["step-00000150-e1"]  # its row, which would drop 150's: never written
    with session_scope() as s:  # its heartbeat stops: the reaper requeues the job
        s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(hours=1)))
        assert store.requeue_stale_jobs(s, timeout_seconds=60) == ([job_id], [])

    with session_scope() as s:
        assert store.checkpoint_names(s, job_id) == {"step-00000150-e1"}
    claimed = _claim(job_id, "host:2", settings)
    assert claimed is not None and claimed["epoch"] == 2
    assert claimed["resume_dir"].endswith("step-00000200-e1")
    with session_scope() as s:
        assert store.checkpoint_names(s, job_id) == {"step-00000200-e1"}
