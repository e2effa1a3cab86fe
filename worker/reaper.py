"""The stale-job reaper: a thread in every worker's main process (docs/design.md, "Job states": no job
may stay ``running`` without a live worker).

Every ``heartbeat_timeout / 4`` seconds it
1. refreshes this worker's "online" mark for its queue in Redis (``broker.workers_online`` counts them);
2. requeues jobs whose heartbeat is stale (``store.requeue_stale_jobs``), of every queue, and sends each to
   ITS OWN queue (``jobs.queue``; its capacity queue ``<queue>.p<N>`` when it asks for N > 1 processes,
   docs/design.md "Queues"): a lost worker is declared lost whatever it consumed, or a job of a queue
   whose last worker died would stay ``running`` with no worker, while only that queue's workers may run it;
3. re-sends ``queued`` jobs of its own queue whose message is gone from the list it belongs in (Redis lost
   its data, or the API could not reach the broker after committing the job). Sending a job twice is
   harmless: the claim is atomic;
4. does the same for evaluations and batch predictions (``model_runs``, docs/design.md "Evaluations and
   batch predictions"): requeues stale runs (or fails them after ``max_attempts``), re-sends its queue's
   queued runs whose message is gone, and queues the test-set evaluation of a job whose worker died
   between recording the end and queueing it;
5. advances every running sweep one step (``store.advance_sweep``: prune the trials ASHA stops, create
   the next trials, end the sweep; docs/design.md, "Sweeps") and sends the trials it created to their
   queue. Every reaper does it, each under the sweep's lock, so a search goes on while any worker lives.

Every worker runs one; the conditional updates in the store make them safe to race. The queue is the
process's ``queue_name`` (``jobformer worker -Q`` sets it).

After a pass that could not reach the database, the reaper declares no job lost for one heartbeat timeout:
during a database outage no heartbeat can be written, so every running job looks stale the moment the
database is back, though its worker is alive and will beat within ``heartbeat_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from sqlalchemy import select

import broker
from core.db import store
from core.db.session import session_scope
from core.db.store import runs as run_store
from core.settings import Settings
from worker.run_queue import job_routes, send_jobs, send_run

log = logging.getLogger(__name__)


class Reaper(threading.Thread):
    def __init__(self, node: str, settings: Settings) -> None:
        super().__init__(name="jobformer-reaper", daemon=True)
        self.node = node
        self.settings = settings
        self.queue = settings.queue_name
        self.timeout = settings.heartbeat_timeout_seconds
        self.interval = max(0.25, self.timeout / 4)
        self._halt = threading.Event()
        self._db_down = False  # the last pass could not reach the database
        self._db_back_at: float | None = None  # when it was reachable again (monotonic)

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        log.info(
            "reaper started on %s for queue %s (every %.1f s, heartbeat timeout %.1f s)",
            self.node,
            self.queue,
            self.interval,
            self.timeout,
        )
        while not self._halt.is_set():
            self.run_once()
            self._halt.wait(self.interval)
        try:
            broker.unregister_worker(self.node, settings=self.settings)
        except Exception as exc:  # noqa: BLE001 - the mark expires by itself
            log.warning("could not remove the online mark of %s: %s", self.node, exc)

    def run_once(self) -> None:
        """One pass; every failure is logged and retried on the next pass, never raised."""
        try:
            broker.register_worker(
                self.node, ttl_seconds=max(3 * self.interval, 10.0), settings=self.settings
            )
        except Exception as exc:  # noqa: BLE001
            log.warning("reaper: broker unreachable: %s", exc)
        requeued: list[str] = []
        ended: list[str] = []
        try:
            with session_scope(self.settings.resolved_database_url) as s:
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
        self._reap_runs()
        self._advance_sweeps()

    def _after_outage(self) -> bool:
        """True while the database is down or was back less than one heartbeat timeout ago."""
        if self._db_down:
            return True
        return self._db_back_at is not None and time.monotonic() - self._db_back_at < self.timeout

    def _resend_lost_messages(self) -> None:
        try:
            with session_scope(self.settings.resolved_database_url) as s:
                waiting = store.queued_jobs_older_than(s, self.timeout, queue=self.queue)
            if not waiting:
                return
            # A job needing more than one process or the plain memory tier waits in its capacity queue.
            routes = {
                job_id: broker.capacity_queue(queue, *needs)
                for job_id, (queue, needs) in job_routes(self.settings, waiting).items()
            }
            # Waiting in its queue, or received by a worker within the timeout and not yet claimed.
            present = broker.delivered_message_ids(self.timeout, settings=self.settings)
            for name in set(routes.values()):
                present |= broker.queued_message_ids(name, settings=self.settings)
            missing = [job_id for job_id in routes if job_id not in present]
        except Exception as exc:  # noqa: BLE001
            log.warning("reaper: could not compare queued jobs with the broker: %s", exc)
            return
        for job_id in missing:
            log.warning(
                "job %s is queued but its message is gone: sending it again", job_id, extra={"job_id": job_id}
            )
        self._send(missing)

    def _reap_runs(self) -> None:
        """Stale runs requeued or ended, lost messages of this queue's queued runs re-sent, missing test
        evaluations queued; each run is sent after its transaction commits (sending twice is harmless:
        the claim is one conditional update)."""
        to_send: dict[str, str] = {}  # run id -> its queue
        try:
            with session_scope(self.settings.resolved_database_url) as s:
                if self._after_outage():
                    return  # no heartbeat could be written: do not declare runs lost yet
                requeued, ended = run_store.requeue_stale_runs(
                    s, timeout_seconds=self.timeout, max_attempts=self.settings.max_attempts
                )
                to_send.update(requeued)
                for job_id, epoch in run_store.succeeded_jobs_without_test_evaluation(s, self.timeout):
                    run = run_store.create_test_evaluation(s, job_id, epoch)
                    if run is not None:
                        log.warning("job %s: its test evaluation was not queued: queueing it", job_id)
                        to_send[run.id] = run.queue
                waiting = run_store.queued_runs_older_than(s, self.timeout, queue=self.queue)
        except Exception as exc:  # noqa: BLE001 - the next pass tries again
            log.warning("reaper: could not check the evaluation and prediction runs: %s", exc)
            return
        for run_id in ended:
            log.warning("run %s ended: its worker was lost", run_id)
        for run_id in requeued:
            log.warning("run %s requeued: its worker was lost", run_id)
        if waiting:
            try:
                present = broker.queued_message_ids(self.queue, settings=self.settings)
                present |= broker.delivered_message_ids(self.timeout, settings=self.settings)
            except Exception as exc:  # noqa: BLE001
                log.warning("reaper: could not compare queued runs with the broker: %s", exc)
                present = set(waiting)
            for run_id in waiting:
                if run_id not in present and run_id not in to_send:
                    log.warning("run %s is queued but its message is gone: sending it again", run_id)
                    to_send[run_id] = self.queue
        for run_id, run_queue in to_send.items():
            try:
                send_run(self.settings, run_id, run_queue)
            except Exception as exc:  # noqa: BLE001 - the next pass finds it again (queued, no message)
                log.warning("reaper: could not send run %s: %s", run_id, exc)

    def _advance_sweeps(self) -> None:
        """One step of every running sweep, each in its own transaction; the trials it created are sent
        after the commit (one that is not sent is re-sent as a queued job whose message is gone)."""
        try:
            with session_scope(self.settings.resolved_database_url) as s:
                sweep_ids = store.running_sweep_ids(s)
        except Exception as exc:  # noqa: BLE001
            log.warning("reaper: could not list the running sweeps: %s", exc)
            return
        for sweep_id in sweep_ids:
            try:
                with session_scope(self.settings.resolved_database_url) as s:
                    step = store.advance_sweep(
                        s,
                        sweep_id,
                        max_attempts=self.settings.max_attempts,
                        active_limit=self.settings.max_active_jobs_per_key,
                    )
            except Exception as exc:  # noqa: BLE001 - the next pass tries again
                log.warning("reaper: could not advance sweep %s: %s", sweep_id, exc)
                continue
            for job_id in step.pruned:
                log.info("sweep %s: trial %s pruned", sweep_id, job_id, extra={"job_id": job_id})
            if step.status != "running":
                log.info("sweep %s ended: %s", sweep_id, step.status)
            self._send(job_id for job_id, _queue in step.created)

    def _send(self, job_ids: Iterable[str]) -> None:
        """Send each job to its queue, or that queue's capacity queue (``worker.run_queue.send_jobs``)."""
        send_jobs(self.settings, job_ids)
