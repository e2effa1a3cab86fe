"""How a running job reports to the database: the core callbacks, throttled, and the heartbeat thread.

Writes are short transactions. Progress goes out at most once a second; metric points are batched;
events and checkpoints are written when they happen (after the pending metrics, so a checkpoint row never
exists without the points before it: a resumed run prunes only what comes after its checkpoint).
A write that fails on a database blip (``OperationalError``: PostgreSQL restarting, SQLite busy) is retried
with backoff; metric points and events that still could not be written stay buffered for the next flush,
so the curve ends complete once the database is back. No callback ever raises into the training loop.
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


def write_with_retry(fn: Callable[[Session], Any], *, what: str, job_id: str, attempts: int = 6) -> bool:
    """Run ``fn(session)`` in its own transaction, retrying database blips with backoff (0.25 s doubling,
    at most 8 s apart). False when every attempt failed (logged); other exceptions propagate."""
    delay = 0.25
    for attempt in range(1, attempts + 1):
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


class Heartbeat(threading.Thread):
    """Beats every ``interval`` seconds and reads the job's status every ``poll`` seconds in between, so
    a cancel (status ``cancelling``) reaches the loop's next ``should_stop()`` within about a second."""

    def __init__(self, job_id: str, worker: str, interval: float, poll: float = 1.0) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.job_id, self.worker = job_id, worker
        self.interval = interval
        self.poll = min(poll, interval)
        self.status: str | None = JobStatus.RUNNING
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=10)

    def run(self) -> None:
        last_beat = time.monotonic()
        while not self._halt.wait(self.poll):
            touch = time.monotonic() - last_beat >= self.interval
            try:
                with session_scope() as s:
                    status = store.heartbeat(s, self.job_id, self.worker, touch=touch)
            except Exception as exc:  # noqa: BLE001 - this thread must outlive any blip
                # Keep going: the reaper only acts after heartbeat_timeout, far longer than a blip.
                log.warning("job %s: heartbeat failed: %s", self.job_id, str(exc).splitlines()[0])
                continue
            if touch:
                last_beat = time.monotonic()
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
        shutdown_requested: Callable[[], bool] = lambda: False,
        progress_every: float = 1.0,
        metrics_every: float = 2.0,
        max_buffered: int = 256,
    ) -> None:
        self.job_id, self.worker = job_id, worker
        self.data_dir = Path(data_dir).resolve()
        self.heartbeat = heartbeat
        self.shutdown_requested = shutdown_requested
        self.progress_every, self.metrics_every, self.max_buffered = (
            progress_every,
            metrics_every,
            max_buffered,
        )
        self._lock = threading.Lock()
        self._progress: dict | None = None
        self._points: list[MetricPoint] = []
        self._events: list[tuple[str, str, dict | None]] = []
        self._last_progress: float | None = None  # None: nothing written yet, the first goes out at once
        self._last_metrics = time.monotonic()

    # -- stop -----------------------------------------------------------------------------------------
    def stop_reason(self) -> str | None:
        """Why the job should stop now, or None. A cancel wins over a shutdown (the user asked for it)."""
        status = self.heartbeat.status if self.heartbeat is not None else JobStatus.RUNNING
        if status == JobStatus.CANCELLING:
            return StopReason.CANCEL
        if status != JobStatus.RUNNING:
            return StopReason.LOST  # taken over, or ended elsewhere: stop at once, write nothing
        if self.shutdown_requested():
            return StopReason.SHUTDOWN
        return None

    def should_stop(self) -> bool:
        return self.stop_reason() is not None

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

    def on_event(self, kind: str, message: str, data: dict[str, Any] | None = None) -> None:
        self._events.append((kind, message, data))
        if kind == "resumed" and data and isinstance(data.get("step"), int):
            # The loop resumed from a checkpoint on disk: points after it will be written again.
            step = data["step"]
            self._safe(
                lambda: self._write(lambda s: store.prune_metrics(s, self.job_id, after_step=step), "prune")
            )
        self._safe(self.flush)

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        def write(s: Session) -> None:
            store.add_checkpoint(s, self.job_id, info, self._relative(info.path))

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
                    store.add_metrics(s, self.job_id, points)
                for kind, message, data in events:
                    store.add_event(s, self.job_id, kind, message, data)
                if progress is not None:
                    store.update_progress(s, self.job_id, progress)

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
        return write_with_retry(fn, what=what, job_id=self.job_id, attempts=attempts)

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
