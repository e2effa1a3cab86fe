"""The stale-job reaper: a thread in every worker's main process (DESIGN.md section 3: no job may stay
``running`` without a live worker).

Every ``heartbeat_timeout / 4`` seconds it
1. refreshes this worker's "online" mark in Redis (``worker.queue.workers_online`` counts them);
2. requeues jobs whose heartbeat is stale (``store.requeue_stale_jobs``) and sends them to the queue again;
3. re-sends ``queued`` jobs whose message is gone from the queue (Redis lost its data, or the API could not
   reach the broker after committing the job). Sending a job twice is harmless: the claim is atomic.

Every worker runs one; the conditional updates in the store make them safe to race.

After a pass that could not reach the database, the reaper declares no job lost for one heartbeat timeout:
during a database outage no heartbeat can be written, so every running job looks stale the moment the
database is back, though its worker is alive and will beat within ``heartbeat_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import select

from core.db import store
from core.db.session import session_scope
from core.settings import get_settings
from worker import queue

log = logging.getLogger(__name__)


class Reaper(threading.Thread):
    def __init__(self, node: str) -> None:
        super().__init__(name="jobformer-reaper", daemon=True)
        self.node = node
        settings = get_settings()
        self.timeout = settings.heartbeat_timeout_seconds
        self.interval = max(0.25, self.timeout / 4)
        self._halt = threading.Event()
        self._db_down = False  # the last pass could not reach the database
        self._db_back_at: float | None = None  # when it was reachable again (monotonic)

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        log.info(
            "reaper started on %s (every %.1f s, heartbeat timeout %.1f s)",
            self.node,
            self.interval,
            self.timeout,
        )
        while not self._halt.is_set():
            self.run_once()
            self._halt.wait(self.interval)
        try:
            queue.unregister_worker(self.node)
        except Exception as exc:  # noqa: BLE001 - the mark expires by itself
            log.warning("could not remove the online mark of %s: %s", self.node, exc)

    def run_once(self) -> None:
        """One pass; every failure is logged and retried on the next pass, never raised."""
        try:
            queue.register_worker(self.node, ttl_seconds=max(3 * self.interval, 10.0))
        except Exception as exc:  # noqa: BLE001
            log.warning("reaper: broker unreachable: %s", exc)
        requeued: list[str] = []
        ended: list[str] = []
        try:
            with session_scope() as s:
                if self._after_outage():
                    s.execute(select(1))  # reachable again? then heartbeats get one timeout to land
                    if self._db_down:
                        self._db_down, self._db_back_at = False, time.monotonic()
                        log.info(
                            "reaper: the database is reachable again; no job is declared lost for %.1f s",
                            self.timeout,
                        )
                else:
                    requeued, ended = store.requeue_stale_jobs(s, timeout_seconds=self.timeout)
        except Exception as exc:  # noqa: BLE001 - e.g. the database is restarting
            self._db_down, self._db_back_at = True, None
            log.warning("reaper: could not check for stale jobs: %s", exc)
            return
        for job_id in ended:
            log.warning("job %s ended: its worker was lost", job_id, extra={"job_id": job_id})
        for job_id in requeued:
            log.warning("job %s requeued: its worker was lost", job_id, extra={"job_id": job_id})
        self._send(requeued)
        self._resend_lost_messages()

    def _after_outage(self) -> bool:
        """True while the database is down or was back less than one heartbeat timeout ago."""
        if self._db_down:
            return True
        return self._db_back_at is not None and time.monotonic() - self._db_back_at < self.timeout

    def _resend_lost_messages(self) -> None:
        try:
            with session_scope() as s:
                waiting = store.queued_jobs_older_than(s, self.timeout)
            if not waiting:
                return
            present = queue.queued_message_ids()
            missing = [job_id for job_id in waiting if job_id not in present]
        except Exception as exc:  # noqa: BLE001
            log.warning("reaper: could not compare queued jobs with the broker: %s", exc)
            return
        for job_id in missing:
            log.warning(
                "job %s is queued but its message is gone: sending it again", job_id, extra={"job_id": job_id}
            )
        self._send(missing)

    @staticmethod
    def _send(job_ids: list[str]) -> None:
        for job_id in job_ids:
            try:
                queue.enqueue_job(job_id)
            except Exception as exc:  # noqa: BLE001 - the next pass finds it again (queued, no message)
                log.warning("reaper: could not enqueue job %s: %s", job_id, exc, extra={"job_id": job_id})
