"""What a running job records: its progress, metric points, events and checkpoints.

Every write here passes the ``epoch`` its worker claimed and starts with the fencing UPDATE of
``core.db.store.transitions`` (docs/design.md, "One owner per job"): a worker that lost its job writes
nothing. Like every store function, each takes a ``Session`` first and only flushes.
"""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from core.db.models import Checkpoint, Job, MetricPoint, utcnow
from core.db.store.transitions import _LIVE, _event, _fence, _update_job
from core.ml.callbacks import CheckpointInfo
from core.ml.callbacks import MetricPoint as MetricPointData


def update_progress(s: Session, job_id: str, progress: dict, *, epoch: int | None = None) -> None:
    """The latest ``core.ml.callbacks.Progress`` (as a dict) of a running job."""
    _fence(s, job_id, epoch)
    _update_job(s, job_id, [Job.status.in_(_LIVE)], progress=progress)


def add_metrics(s: Session, job_id: str, points: list[MetricPointData], *, epoch: int | None = None) -> None:
    """Append metric points and fold the newest value of each key into ``jobs.metrics``."""
    if not points:
        return
    _fence(s, job_id, epoch)
    now = utcnow()
    s.add_all(
        MetricPoint(
            job_id=job_id,
            step=p.step,
            epoch=p.epoch,
            split=p.split,
            name=p.name,
            value=float(p.value),
            time=now,
        )
        for p in points
    )
    latest = dict(s.scalar(select(Job.metrics).where(Job.id == job_id)) or {})
    for p in sorted(points, key=lambda p: p.step):
        latest[p.key] = float(p.value)
    _update_job(s, job_id, [], metrics=latest)
    s.flush()


def add_event(
    s: Session, job_id: str, kind: str, message: str, data: dict | None = None, *, epoch: int | None = None
) -> None:
    """Something a person wants in the job's log."""
    _fence(s, job_id, epoch)
    _event(s, job_id, kind, message, data)
    s.flush()


def add_checkpoint(
    s: Session,
    job_id: str,
    info: CheckpointInfo,
    rel_path: str,
    *,
    metric: str | None = None,
    epoch: int | None = None,
    event: bool = True,
) -> None:
    """Record a checkpoint written (atomically) at ``rel_path`` (relative to the data directory).
    Drops the rows of the checkpoints that save pruned; when it is the best so far, moves the best flag
    to it and updates ``jobs.best`` (``metric``: the name the best was chosen by, when known)."""
    _fence(s, job_id, epoch)
    if info.pruned:
        s.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name.in_(info.pruned)))
    # A resumed run can write a checkpoint under a name that exists already: the new one replaces it.
    s.execute(delete(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.name == info.name))
    if info.is_best:
        s.execute(
            update(Checkpoint)
            .where(Checkpoint.job_id == job_id, Checkpoint.is_best.is_(True))
            .values(is_best=False)
            .execution_options(synchronize_session=False)
        )
    s.add(
        Checkpoint(
            job_id=job_id,
            name=info.name,
            step=info.step,
            metrics={k: float(v) for k, v in info.metrics.items()},
            size_bytes=info.size_bytes,
            is_best=info.is_best,
            path=rel_path,
            created_at=utcnow(),
        )
    )
    if info.is_best:
        metric = metric or _best_metric_name(info.metrics)
        best = {
            "step": info.step,
            "metric": metric,
            "value": float(info.metrics[metric]) if metric in info.metrics else None,
            "checkpoint": info.name,
        }
        _update_job(s, job_id, [], best=best)
    if event:
        add_event(
            s,
            job_id,
            "checkpoint",
            f"checkpoint {info.name} saved at step {info.step}" + (" (best so far)" if info.is_best else ""),
            {"name": info.name, "step": info.step, "is_best": info.is_best, "size_bytes": info.size_bytes},
        )
    s.flush()


def _best_metric_name(metrics: dict[str, float]) -> str | None:
    for name in ("val_f1_macro", "val_accuracy", "val_loss", "val_perplexity", "train_loss"):
        if name in metrics:
            return name
    return next(iter(metrics), None)


def forget_checkpoints(s: Session, job_id: str, names: set[str], *, epoch: int | None = None) -> int:
    """Drop the rows of the job's checkpoints named ``names``, whose files are gone: an owner pruned them
    and was stopped (killed, paused and fenced off) before its save's row recorded the pruning. The next
    claim finds them (worker/tasks.py). Fenced like every worker write. Returns how many rows went."""
    _fence(s, job_id, epoch)
    if not names:
        return 0
    result = s.execute(
        delete(Checkpoint)
        .where(Checkpoint.job_id == job_id, Checkpoint.name.in_(sorted(names)))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)


def checkpoint_names(s: Session, job_id: str) -> set[str]:
    """Names of the job's recorded checkpoints."""
    return set(s.scalars(select(Checkpoint.name).where(Checkpoint.job_id == job_id)))
