"""How a running job reports to the database: the core callbacks, throttled, and the heartbeat thread.

Writes are short transactions. Progress goes out at most once a second; metric points are batched;
events and checkpoints are written when they happen (after the pending metrics, so a checkpoint row never
exists without the points before it: a resumed run prunes only what comes after its checkpoint).
A write that fails on a database blip (``OperationalError``: PostgreSQL restarting, SQLite busy) is retried
with backoff; metric points and events that still could not be written stay buffered for the next flush,
so the curve ends complete once the database is back. No callback ever raises into the training loop.

One owner per job (docs/design.md, "One owner per job"): every write carries the lease epoch of the claim
and is fenced by it in the store. The heartbeat renews the lease; a worker that could not renew it for
``lease_seconds`` (shorter than the reaper's timeout), or whose write was refused (``store.LeaseLost``),
has lost the job: ``may_write()`` turns False for good, the loop stops at its next step without saving,
and nothing more is written, to the database or to disk.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from core.db import store
from core.db.models import JobStatus
from core.db.session import session_scope
from core.ml.callbacks import Callbacks, CheckpointInfo, MetricPoint, Progress

log = logging.getLogger(__name__)


def is_transient(exc: BaseException) -> bool:
    """A database blip worth retrying: the server went away or restarted, SQLite was busy."""
    return isinstance(exc, OperationalError | InterfaceError) or (
        isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)
    )


def write_with_retry(
    fn: Callable[[Session], Any],
    *,
    what: str,
    job_id: str,
    attempts: int = 6,
    still_owner: Callable[[], bool] | None = None,
) -> bool:
    """Run ``fn(session)`` in its own transaction, retrying database blips with backoff (0.25 s doubling,
    at most 8 s apart). False when every attempt failed (logged), or when ``still_owner()`` turned False
    before an attempt (nothing is sent then); other exceptions, ``store.LeaseLost`` among them, propagate."""
    delay = 0.25
    for attempt in range(1, attempts + 1):
        if still_owner is not None and not still_owner():
            log.warning("job %s: not writing %s: the lease is lost", job_id, what, extra={"job_id": job_id})
            return False
        try:
            with session_scope() as s:
                fn(s)
            return True
        except DBAPIError as exc:
            if not is_transient(exc):
                raise  # a bug (integrity, programming error), not a blip
            log.warning(
                "job %s: writing %s failed (attempt %d/%d): %s",
                job_id,
                what,
                attempt,
                attempts,
                str(exc).splitlines()[0],
                extra={"job_id": job_id},
            )
            if attempt < attempts:
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
    return False


class StopReason:
    CANCEL = "cancel"
    SHUTDOWN = "shutdown"
    LOST = "lost"


def _clocks() -> tuple[float, float]:
    # Both clocks: the monotonic one ignores wall-clock jumps, the wall clock keeps counting while a VM is
    # frozen (the monotonic one may not). A lease is as old as the larger of the two says.
    return time.monotonic(), time.time()


class Heartbeat(threading.Thread):
    """Renews the job's lease every ``interval`` seconds and reads its status every ``poll`` seconds in
    between, so a cancel (status ``cancelling``) reaches the loop's next ``should_stop()`` within about a
    second. ``lease_held()`` is False for good once the lease could not be renewed for ``lease_seconds``
    (measured from when the last successful renewal was sent) or the store said another epoch owns it."""

    def __init__(
        self,
        job_id: str,
        worker: str,
        interval: float,
        poll: float = 1.0,
        *,
        epoch: int | None = None,
        lease_seconds: float | None = None,
        renewed_at: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.job_id, self.worker = job_id, worker
        self.interval = interval
        self.poll = min(poll, interval)
        self.epoch = epoch
        self.lease_seconds = lease_seconds
        self.status: str | None = JobStatus.RUNNING
        self._renewed = renewed_at or _clocks()
        self._lost = threading.Event()
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)

    def lease_held(self) -> bool:
        """True while this worker still owns the job (callable from any thread; cheap)."""
        if self._lost.is_set():
            return False
        if self.lease_seconds is not None:
            (mono, wall), (mono_now, wall_now) = self._renewed, _clocks()
            age = max(mono_now - mono, wall_now - wall)
            if age >= self.lease_seconds:
                self.mark_lost(f"the lease was not renewed for {age:.1f} s (limit {self.lease_seconds:g} s)")
                return False
        return True

    def mark_lost(self, why: str) -> None:
        if not self._lost.is_set():
            self._lost.set()
            self.status = None
            log.warning(
                "job %s: lost its lease (epoch %s): %s; stopping without writing anything more",
                self.job_id,
                self.epoch,
                why,
                extra={"job_id": self.job_id},
            )

    def run(self) -> None:
        while not self._halt.wait(self.poll) and self.lease_held():
            touch = time.monotonic() - self._renewed[0] >= self.interval
            sent = _clocks()
            try:
                with session_scope() as s:
                    status = store.heartbeat(s, self.job_id, self.worker, touch=touch, epoch=self.epoch)
            except Exception as exc:  # noqa: BLE001 - this thread must outlive any blip
                # Keep going: the lease runs out by itself if the blip lasts (lease_held above).
                log.warning("job %s: heartbeat failed: %s", self.job_id, str(exc).splitlines()[0])
                continue
            if status is None:
                self.mark_lost("another worker holds the job now, or it is gone")
                return
            if touch and not self._lost.is_set():
                self._renewed = sent
            if status != self.status:
                log.info("job %s: status is now %s", self.job_id, status, extra={"job_id": self.job_id})
            self.status = status


class StoreRecorder(Callbacks):
    """Core callbacks that record a job's progress, metrics, events and checkpoints in the store."""

    def __init__(
        self,
        job_id: str,
        worker: str,
        *,
        data_dir: Path,
        heartbeat: Heartbeat | None = None,
        epoch: int | None = None,
        sweep_id: str | None = None,
        shutdown_requested: Callable[[], bool] = lambda: False,
        progress_every: float = 1.0,
        metrics_every: float = 2.0,
        max_buffered: int = 256,
    ) -> None:
        self.job_id, self.worker = job_id, worker
        self.data_dir = Path(data_dir).resolve()
        self.heartbeat = heartbeat
        self.epoch = epoch
        self.sweep_id = sweep_id  # a sweep's trial asks ASHA after each evaluation (``_ask_pruner``)
        self._pruned = False
        self.shutdown_requested = shutdown_requested
        self.progress_every, self.metrics_every, self.max_buffered = (
            progress_every,
            metrics_every,
            max_buffered,
        )
        self._lock = threading.Lock()
        self._lost = False  # a fenced write was refused: the job is another worker's now
        self._progress: dict | None = None
        self._points: list[MetricPoint] = []
        self._events: list[tuple[str, str, dict | None]] = []
        self._last_progress: float | None = None  # None: nothing written yet, the first goes out at once
        self._last_metrics = time.monotonic()

    # -- stop -----------------------------------------------------------------------------------------
    def stop_reason(self) -> str | None:
        """Why the job should stop now, or None. A cancel wins over a shutdown (the user asked for it)."""
        if not self.may_write():
            return StopReason.LOST
        status = self.heartbeat.status if self.heartbeat is not None else JobStatus.RUNNING
        if status == JobStatus.CANCELLING or self._pruned:
            return StopReason.CANCEL
        if status != JobStatus.RUNNING:
            return StopReason.LOST  # taken over, or ended elsewhere: stop at once, write nothing
        if self.shutdown_requested():
            return StopReason.SHUTDOWN
        return None

    def should_stop(self) -> bool:
        return self.stop_reason() is not None

    def may_write(self) -> bool:
        return not self._lost and (self.heartbeat is None or self.heartbeat.lease_held())

    # -- callbacks ------------------------------------------------------------------------------------
    def on_progress(self, progress: Progress) -> None:
        self._progress = progress.as_dict()
        if self._last_progress is None or time.monotonic() - self._last_progress >= self.progress_every:
            self._safe(self.flush)

    def on_metrics(self, points: list[MetricPoint]) -> None:
        self._points.extend(points)
        if (
            len(self._points) >= self.max_buffered
            or time.monotonic() - self._last_metrics >= self.metrics_every
            or any(p.split != "train" for p in points)  # evaluations are rare and worth seeing at once
        ):
            self._safe(self.flush)
        if self.sweep_id is not None and any(p.split != "train" for p in points):
            self._safe(self._ask_pruner)

    def _ask_pruner(self) -> None:
        """A sweep trial asks ASHA right after recording an evaluation (docs/design.md, "Sweeps"): one that
        falls behind is set ``cancelling`` and stops at once, checkpoint saved, as on a user's cancel."""
        if not self.may_write() or self._points:  # its evaluation is not recorded yet: the reaper decides
            return
        with session_scope() as s:
            pruned = store.prune_trials(s, self.sweep_id)
        if self.job_id in pruned:
            self._pruned = True

    def on_event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self._events.append((kind, message, data))
        if kind == "resumed" and data and isinstance(data.get("step"), int):
            # The loop resumed from a checkpoint on disk: points after it will be written again.
            step = data["step"]
            self._safe(
                lambda: self._write(
                    lambda s: store.prune_metrics(s, self.job_id, after_step=step, epoch=self.epoch), "prune"
                )
            )
        self._safe(self.flush)

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        def write(s: Session) -> None:
            store.add_checkpoint(s, self.job_id, info, self._relative(info.path), epoch=self.epoch)

        # Points up to this step first: a resumed run trusts everything up to its checkpoint's step.
        self._safe(self.flush)
        self._safe(lambda: self._write(write, f"checkpoint {info.name}", attempts=10))

    # -- writes ---------------------------------------------------------------------------------------
    def flush(self, attempts: int = 6) -> bool:
        """Write what is pending (progress, metric points, events) in one short transaction."""
        with self._lock:
            progress, points, events = self._progress, list(self._points), list(self._events)
            if progress is None and not points and not events:
                return True

            def write(s: Session) -> None:
                if points:
                    store.add_metrics(s, self.job_id, points, epoch=self.epoch)
                for kind, message, data in events:
                    store.add_event(s, self.job_id, kind, message, data, epoch=self.epoch)
                if progress is not None:
                    store.update_progress(s, self.job_id, progress, epoch=self.epoch)

            ok = self._write(write, "progress/metrics/events", attempts=attempts)
            if ok:
                del self._points[: len(points)]
                del self._events[: len(events)]
                if self._progress is progress:
                    self._progress = None
            now = time.monotonic()
            self._last_progress = now
            self._last_metrics = now
            return ok

    def _write(self, fn: Callable[[Session], Any], what: str, attempts: int = 6) -> bool:
        try:
            return write_with_retry(
                fn, what=what, job_id=self.job_id, attempts=attempts, still_owner=self.may_write
            )
        except store.LeaseLost:
            self._lost = True
            if self.heartbeat is not None:
                self.heartbeat.mark_lost(f"writing {what} was refused: another worker holds the job")
            return False

    def _safe(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:  # an exception would stop the run: log it and keep training
            log.exception("job %s: recording failed", self.job_id, extra={"job_id": self.job_id})

    def _relative(self, path: str) -> str:
        try:
            return os.path.relpath(Path(path).resolve(), self.data_dir)
        except ValueError:
            return str(path)
