"""The job store on PostgreSQL and SQLite: every transition of docs/design.md, "Job states", and the races."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.db import store
from core.db.models import Checkpoint, Event, Job, MetricPoint, utcnow
from core.ml.callbacks import CheckpointInfo
from core.ml.callbacks import MetricPoint as Point


def _dataset(s: Session) -> str:
    ds = store.create_dataset(
        s,
        owner=None,
        filename="tiny.csv",
        size_bytes=10,
        sha256="ab" * 32,
        path="datasets/ab/" + "ab" * 32,
        format={"kind": "csv", "delimiter": ",", "encoding": "utf-8", "header": True},
        rows=2,
        columns=["text", "label"],
        preview=[{"text": "hi", "label": "a"}],
    )
    return ds.id


def _job(s: Session, max_attempts: int = 3) -> str:
    job = store.create_job(
        s, dataset_id=_dataset(s), config={"task": "classification"}, owner="k1", max_attempts=max_attempts
    )
    s.commit()
    return job.id


def _events(s: Session, job_id: str) -> list[str]:
    return list(s.scalars(select(Event.kind).where(Event.job_id == job_id).order_by(Event.id)))


def _ckpt(step: int, *, best: bool, pruned: list[str] | None = None, loss: float = 1.0) -> CheckpointInfo:
    return CheckpointInfo(
        name=f"step-{step:08d}",
        path=f"/data/jobs/x/checkpoints/step-{step:08d}",
        step=step,
        epoch=0,
        metrics={"val_loss": loss, "val_f1_macro": 0.5},
        size_bytes=123,
        is_best=best,
        pruned=pruned or [],
    )


def test_create_job_is_queued_with_event(db_session: Session) -> None:
    job_id = _job(db_session)
    job = store.get_job(db_session, job_id)
    assert (job.status, job.attempts, job.max_attempts, job.owner) == ("queued", 0, 3, "k1")
    assert _events(db_session, job_id) == ["queued"]


def test_claim_then_second_claim_refused(db_session: Session) -> None:
    job_id = _job(db_session)
    job = store.claim_job(db_session, job_id, "host:1")
    db_session.commit()
    assert (job.status, job.attempts, job.worker) == ("running", 1, "host:1")
    assert job.started_at is not None and job.heartbeat_at is not None
    assert store.claim_job(db_session, job_id, "host:2") is None
    assert store.claim_job(db_session, "nope", "host:2") is None
    assert _events(db_session, job_id) == ["queued", "started"]


def test_claim_race_exactly_one_wins(db_sessionmaker: sessionmaker[Session]) -> None:
    with db_sessionmaker() as s:
        job_id = _job(s)
    barrier = threading.Barrier(4)
    winners: list[str] = []
    errors: list[BaseException] = []

    def race(name: str) -> None:
        try:
            with db_sessionmaker() as s:
                barrier.wait()
                if store.claim_job(s, job_id, name) is not None:
                    winners.append(name)
                s.commit()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=race, args=(f"host:{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(winners) == 1
    with db_sessionmaker() as s:
        job = store.get_job(s, job_id)
        assert (job.status, job.attempts, job.worker) == ("running", 1, winners[0])
        assert _events(s, job_id).count("started") == 1


def test_finish_exactly_once(db_session: Session) -> None:
    job_id = _job(db_session)
    store.claim_job(db_session, job_id, "host:1")
    result = {
        "status": "completed",
        "best": {"step": 5, "metric": "val_f1_macro", "value": 0.9, "checkpoint": "c"},
    }
    assert store.finish_job(db_session, job_id, "succeeded", result=result, worker="host:1") is True
    assert store.finish_job(db_session, job_id, "failed", error_code="x", error_message="y") is False
    db_session.commit()
    job = store.get_job(db_session, job_id)
    assert (job.status, job.error_code, job.best["value"]) == ("succeeded", None, 0.9)
    assert job.finished_at is not None
    assert _events(db_session, job_id) == ["queued", "started", "succeeded"]


def test_finish_refused_for_a_worker_that_lost_the_job(db_session: Session) -> None:
    job_id = _job(db_session)
    store.claim_job(db_session, job_id, "host:1")
    db_session.execute(update(Job).where(Job.id == job_id).values(worker="host:2"))
    assert store.finish_job(db_session, job_id, "succeeded", worker="host:1") is False
    assert store.heartbeat(db_session, job_id, "host:1") is None
    assert store.heartbeat(db_session, job_id, "host:2") == "running"


def test_finish_rejects_non_end_state(db_session: Session) -> None:
    job_id = _job(db_session)
    with pytest.raises(ValueError, match="'running' is not an end state"):
        store.finish_job(db_session, job_id, "running")


def test_failed_records_code_and_message(db_session: Session) -> None:
    job_id = _job(db_session)
    store.claim_job(db_session, job_id, "host:1")
    assert store.finish_job(
        db_session, job_id, "failed", error_code="diverged", error_message="loss NaN at step 7"
    )
    db_session.commit()
    job = store.get_job(db_session, job_id)
    assert (job.status, job.error_code, job.error_message) == ("failed", "diverged", "loss NaN at step 7")
    assert _events(db_session, job_id)[-2:] == ["error", "failed"]


def test_cancel_queued_is_immediate(db_session: Session) -> None:
    job_id = _job(db_session)
    job = store.request_cancel(db_session, job_id)
    db_session.commit()
    assert job.status == "cancelled" and job.finished_at is not None
    assert store.claim_job(db_session, job_id, "host:1") is None
    assert store.request_cancel(db_session, "missing") is None


def test_cancel_running_goes_cancelling_then_cancelled(db_session: Session) -> None:
    job_id = _job(db_session)
    store.claim_job(db_session, job_id, "host:1")
    assert store.request_cancel(db_session, job_id).status == "cancelling"
    assert store.heartbeat(db_session, job_id, "host:1") == "cancelling"
    # A second request changes nothing.
    assert store.request_cancel(db_session, job_id).status == "cancelling"
    assert store.finish_job(db_session, job_id, "cancelled", worker="host:1")
    db_session.commit()
    assert store.request_cancel(db_session, job_id).status == "cancelled"
    assert _events(db_session, job_id) == ["queued", "started", "cancelling", "cancelled"]


def test_release_hands_back_without_using_an_attempt(db_session: Session) -> None:
    job_id = _job(db_session)
    store.claim_job(db_session, job_id, "host:1")
    assert store.release_job(db_session, job_id, "worker shutting down", worker="host:2") is False
    assert store.release_job(db_session, job_id, "worker shutting down", worker="host:1") is True
    assert store.release_job(db_session, job_id, "again") is False
    db_session.commit()
    job = store.get_job(db_session, job_id)
    assert (job.status, job.attempts) == ("queued", 0)
    job = store.claim_job(db_session, job_id, "host:3")
    assert (job.status, job.attempts) == ("running", 1)


def test_progress_metrics_events(db_session: Session) -> None:
    job_id = _job(db_session)
    store.claim_job(db_session, job_id, "host:1")
    store.update_progress(db_session, job_id, {"step": 3, "total_steps": 10, "percent": 30.0})
    store.add_metrics(
        db_session, job_id, [Point(1, 0, "train", "loss", 2.5), Point(2, 0, "train", "loss", 2.0)]
    )
    store.add_metrics(db_session, job_id, [Point(2, 0, "val", "accuracy", 0.75)])
    store.add_event(db_session, job_id, "epoch_end", "Epoch 1 done.", {"epoch": 1})
    db_session.commit()
    job = store.get_job(db_session, job_id)
    assert job.progress == {"step": 3, "total_steps": 10, "percent": 30.0}
    assert job.metrics == {"train_loss": 2.0, "val_accuracy": 0.75}
    assert db_session.scalar(select(MetricPoint.value).where(MetricPoint.step == 1)) == 2.5
    assert _events(db_session, job_id)[-1] == "epoch_end"


def test_checkpoints_best_and_pruning(db_session: Session) -> None:
    job_id = _job(db_session)
    store.claim_job(db_session, job_id, "host:1")
    store.add_checkpoint(
        db_session, job_id, _ckpt(10, best=True, loss=1.0), "jobs/x/checkpoints/step-00000010"
    )
    store.add_checkpoint(
        db_session, job_id, _ckpt(20, best=False, loss=1.5), "jobs/x/checkpoints/step-00000020"
    )
    store.add_checkpoint(
        db_session, job_id, _ckpt(30, best=True, loss=0.5, pruned=["step-00000020"]), "jobs/x/checkpoints/s30"
    )
    db_session.commit()
    rows = db_session.execute(
        select(Checkpoint.name, Checkpoint.is_best)
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.step)
    ).all()
    assert [tuple(r) for r in rows] == [("step-00000010", False), ("step-00000030", True)]
    assert store.get_job(db_session, job_id).best == {
        "step": 30,
        "metric": "val_f1_macro",
        "value": 0.5,
        "checkpoint": "step-00000030",
    }
    assert store.latest_checkpoint_step(db_session, job_id) == 30
    events = db_session.execute(
        select(Event.message).where(Event.job_id == job_id, Event.kind == "checkpoint").order_by(Event.id)
    ).scalars()
    assert list(events) == [
        "checkpoint step-00000010 saved at step 10 (best so far)",
        "checkpoint step-00000020 saved at step 20",
        "checkpoint step-00000030 saved at step 30 (best so far)",
    ]


def _make_stale(s: Session, job_id: str) -> None:
    s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=120)))
    s.commit()


def test_a_frozen_transaction_does_not_hold_its_job_row_for_ever(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker frozen between two statements of a transaction (SIGSTOP in the middle of a flush) holds its
    job row's lock. PostgreSQL ends that session after a heartbeat timeout (at least 10 s) idle in the
    transaction, so the reaper's requeue of the stale job goes through, and the frozen session's next statement fails.

    Would catch: engines without the idle-in-transaction timeout (the reaper then waited on the lock for
    ever and no other worker could take the job over)."""
    from sqlalchemy.exc import DBAPIError

    from core.db.session import make_engine
    from core.settings import get_settings

    monkeypatch.setenv("JOBFORMER_HEARTBEAT_SECONDS", "0.5")
    monkeypatch.setenv("JOBFORMER_HEARTBEAT_TIMEOUT_SECONDS", "2")
    get_settings.cache_clear()
    engine = make_engine(pg_url)
    frozen = None
    try:
        sessions = sessionmaker(engine, expire_on_commit=False)
        with sessions() as s:
            job_id = _job(s)
            store.claim_job(s, job_id, "host:1")
            s.commit()
            _make_stale(s, job_id)
        frozen = sessions()
        frozen.execute(update(Job).where(Job.id == job_id).values(progress={"step": 1}))  # locked, not ended
        result: list = []

        def reap() -> None:
            with sessions() as s:
                result.append(store.requeue_stale_jobs(s, timeout_seconds=1))
                s.commit()

        reaper = threading.Thread(target=reap, daemon=True)
        reaper.start()
        reaper.join(timeout=30)
        assert result == [([job_id], [])], "the reaper still waits on the frozen session's lock"
        with sessions() as s:
            assert store.get_job(s, job_id).status == "queued"
        with pytest.raises(DBAPIError):
            frozen.execute(select(1))
    finally:
        if frozen is not None:
            frozen.close()
        engine.dispose()
        get_settings.cache_clear()


def test_requeue_stale_jobs_both_branches(db_session: Session) -> None:
    fresh, lost, exhausted, stopping = (_job(db_session, max_attempts=2) for _ in range(4))
    for job_id in (fresh, lost, exhausted, stopping):
        store.claim_job(db_session, job_id, "host:1")
    db_session.execute(update(Job).where(Job.id == exhausted).values(attempts=2))
    store.request_cancel(db_session, stopping)
    db_session.commit()
    for job_id in (lost, exhausted, stopping):
        _make_stale(db_session, job_id)

    requeued, ended = store.requeue_stale_jobs(db_session, timeout_seconds=60)
    db_session.commit()
    assert requeued == [lost]
    assert sorted(ended) == sorted([exhausted, stopping])
    assert store.get_job(db_session, fresh).status == "running"
    lost_job = store.get_job(db_session, lost)
    assert (lost_job.status, lost_job.attempts) == ("queued", 1)
    failed = store.get_job(db_session, exhausted)
    assert (failed.status, failed.error_code) == ("failed", "worker_lost")
    assert "max_attempts=2" in failed.error_message
    assert store.get_job(db_session, stopping).status == "cancelled"
    # Nothing left to do: a second pass changes nothing.
    assert store.requeue_stale_jobs(db_session, timeout_seconds=60) == ([], [])

    # The requeued job is claimed again (attempt 2); lost once more it has used its attempts.
    assert store.claim_job(db_session, lost, "host:2").attempts == 2
    db_session.commit()
    _make_stale(db_session, lost)
    assert store.requeue_stale_jobs(db_session, timeout_seconds=60) == ([], [lost])
    assert store.get_job(db_session, lost).error_code == "worker_lost"


def test_resume_prunes_metric_points_after_latest_checkpoint(db_session: Session) -> None:
    job_id = _job(db_session)
    store.claim_job(db_session, job_id, "host:1")
    store.add_metrics(
        db_session, job_id, [Point(step, 0, "train", "loss", 3.0 - step / 10) for step in range(1, 16)]
    )
    store.add_checkpoint(db_session, job_id, _ckpt(10, best=True), "jobs/x/checkpoints/step-00000010")
    db_session.commit()
    _make_stale(db_session, job_id)
    assert store.requeue_stale_jobs(db_session, timeout_seconds=60) == ([job_id], [])

    job = store.claim_job(db_session, job_id, "host:2")
    db_session.commit()
    assert job.attempts == 2
    steps = list(
        db_session.scalars(
            select(MetricPoint.step).where(MetricPoint.job_id == job_id).order_by(MetricPoint.step)
        )
    )
    assert steps == list(range(1, 11))
    resumed = db_session.execute(
        select(Event.data).where(Event.job_id == job_id, Event.kind == "resumed")
    ).scalar_one()
    assert resumed == {"attempt": 2, "step": 10, "pruned_metric_points": 5}


def test_resume_from_a_checkpoint_on_disk_ahead_of_the_rows(db_session: Session) -> None:
    # The first worker wrote step 12 to disk and died before recording its row: the loop will resume from
    # 12, so the claim keeps the points up to 12 (cutting back to the row's 10 would leave a gap).
    job_id = _job(db_session)
    store.claim_job(db_session, job_id, "host:1")
    store.add_metrics(db_session, job_id, [Point(step, 0, "train", "loss", 1.0) for step in range(1, 16)])
    store.add_checkpoint(db_session, job_id, _ckpt(10, best=True), "jobs/x/checkpoints/step-00000010")
    db_session.commit()
    _make_stale(db_session, job_id)
    store.requeue_stale_jobs(db_session, timeout_seconds=60)
    store.claim_job(db_session, job_id, "host:2", resume_step=12)
    db_session.commit()
    steps = db_session.scalars(select(MetricPoint.step).where(MetricPoint.job_id == job_id)).all()
    assert sorted(steps) == list(range(1, 13))


def test_resume_without_checkpoint_starts_over(db_session: Session) -> None:
    job_id = _job(db_session)
    store.claim_job(db_session, job_id, "host:1")
    store.add_metrics(db_session, job_id, [Point(1, 0, "train", "loss", 3.0)])
    db_session.commit()
    _make_stale(db_session, job_id)
    store.requeue_stale_jobs(db_session, timeout_seconds=60)
    store.claim_job(db_session, job_id, "host:2")
    db_session.commit()
    assert db_session.scalars(select(MetricPoint).where(MetricPoint.job_id == job_id)).all() == []


def test_queued_jobs_older_than(db_session: Session) -> None:
    old, _new = _job(db_session), _job(db_session)
    db_session.execute(update(Job).where(Job.id == old).values(created_at=utcnow() - timedelta(seconds=100)))
    db_session.commit()
    assert store.queued_jobs_older_than(db_session, 50) == [old]


# ------------------------------------------------------------------------------ one owner per job (fencing)


def _stale_and_reclaimed(s: Session, job_id: str) -> tuple[int, int]:
    """Claim as host:1, lose it (stale heartbeat, requeued), claim as host:2: the two lease epochs."""
    first = store.claim_job(s, job_id, "host:1").epoch
    s.commit()
    _make_stale(s, job_id)
    assert store.requeue_stale_jobs(s, timeout_seconds=60)[0] == [job_id]
    second = store.claim_job(s, job_id, "host:2").epoch
    s.commit()
    return first, second


def test_every_claim_takes_a_higher_epoch_even_after_a_hand_off(db_session: Session) -> None:
    job_id = _job(db_session)
    epochs = []
    for worker in ("host:1", "host:2", "host:3"):
        epochs.append(store.claim_job(db_session, job_id, worker).epoch)
        assert store.release_job(db_session, job_id, "shutting down", epoch=epochs[-1])
    assert epochs == [1, 2, 3]
    assert store.get_job(db_session, job_id).attempts == 0  # hand-offs use no attempt; epochs still grow
    assert store.claim_job(db_session, job_id, "host:4", expected_epoch=2) is None  # read epoch 2, it is 3


def test_writes_of_an_old_epoch_are_refused_and_change_nothing(db_session: Session) -> None:
    job_id = _job(db_session)
    old, new = _stale_and_reclaimed(db_session, job_id)
    assert (old, new) == (1, 2)
    before = store.get_job(db_session, job_id)
    progress, metrics = before.progress, before.metrics
    writes = [
        lambda: store.update_progress(db_session, job_id, {"step": 99}, epoch=old),
        lambda: store.add_metrics(db_session, job_id, [Point(99, 1, "train", "loss", 0.1)], epoch=old),
        lambda: store.add_event(db_session, job_id, "warning", "from the past", epoch=old),
        lambda: store.add_checkpoint(db_session, job_id, _ckpt(99, best=True), "jobs/x/step-99", epoch=old),
        lambda: store.prune_metrics(db_session, job_id, after_step=0, epoch=old),
    ]
    for write in writes:
        with pytest.raises(store.LeaseLost):
            write()
        db_session.rollback()
    assert store.finish_job(db_session, job_id, "succeeded", epoch=old) is False
    assert store.release_job(db_session, job_id, "shutting down", epoch=old) is False
    assert store.heartbeat(db_session, job_id, "host:1", epoch=old) is None
    db_session.commit()
    job = store.get_job(db_session, job_id)
    assert (job.status, job.epoch, job.progress, job.metrics) == ("running", new, progress, metrics)
    assert db_session.scalar(select(func.count()).select_from(MetricPoint)) == 0
    assert db_session.scalar(select(func.count()).select_from(Checkpoint)) == 0
    assert "warning" not in _events(db_session, job_id)
    # The new owner's writes go through.
    store.update_progress(db_session, job_id, {"step": 7}, epoch=new)
    store.add_metrics(db_session, job_id, [Point(10, 1, "train", "loss", 0.5)], epoch=new)
    assert store.heartbeat(db_session, job_id, "host:2", epoch=new) == "running"
    assert store.finish_job(db_session, job_id, "succeeded", epoch=new) is True
    # An ended job takes no more writes, even of its last owner.
    with pytest.raises(store.LeaseLost):
        store.add_event(db_session, job_id, "warning", "after the end", epoch=new)


def test_a_fenced_write_and_a_takeover_never_interleave(db_sessionmaker: sessionmaker[Session]) -> None:
    """The fencing UPDATE locks the job row (the database, on SQLite) until the write commits: a requeue
    that starts meanwhile waits, and then the write is in, whole, before the new owner's claim."""
    with db_sessionmaker() as s:
        job_id = _job(s)
        epoch = store.claim_job(s, job_id, "host:1").epoch
        s.commit()
    writer = db_sessionmaker()
    store.add_metrics(writer, job_id, [Point(10, 1, "train", "loss", 0.5)], epoch=epoch)  # holds the lock
    outcome: list[object] = []

    def take_over() -> None:
        with db_sessionmaker() as s:
            s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(hours=1)))
            outcome.append(store.requeue_stale_jobs(s, timeout_seconds=60))
            s.commit()

    thread = threading.Thread(target=take_over)
    thread.start()
    thread.join(1.0)
    assert thread.is_alive() and not outcome  # waiting for the writer's transaction
    writer.commit()
    writer.close()
    thread.join(30)
    assert outcome == [([job_id], [])]
    with db_sessionmaker() as s:
        assert [p.step for p in s.scalars(select(MetricPoint).where(MetricPoint.job_id == job_id))] == [10]
        with pytest.raises(store.LeaseLost):  # and after the takeover the old epoch writes nothing
            store.add_metrics(s, job_id, [Point(20, 1, "train", "loss", 0.4)], epoch=epoch)
