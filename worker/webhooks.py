"""The end of a job, POSTed to its webhook (docs/design.md, "Operators"): the deliverer of the outbox.

Every end is queued as a ``WebhookDelivery`` in the transaction that writes it (``core.db.store.webhooks``),
whoever writes it: the train task, the API cancelling a queued job, a reaper failing a lost job, a sweep
pruning or cancelling a trial. A ``Deliverer`` thread in every worker's main process polls the outbox
every ``POLL_SECONDS``, claims a pending delivery for ``LEASE_SECONDS`` (longer than all its attempts) and
sends it: each attempt signed afresh (a new timestamp, the delivery's id as ``X-Jobformer-Delivery``),
retried with exponential backoff (tenacity) on a connection error, a timeout, a 429 or a 5xx, and
recorded as a ``webhook`` event of the job, fenced by the claim. Redirects are not followed (a redirect
could lead anywhere the host check would refuse); the host is checked again, resolved, before sending.
A deliverer that dies mid-delivery leaves the claim to run out; another then sends the same delivery
again (same id: a receiver drops what it has seen).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import httpx
from sqlalchemy.orm import Session
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from core import webhooks
from core.db import store
from core.db.session import session_scope
from core.db.store import webhooks as outbox
from core.settings import Settings
from worker.recorder import write_with_retry

log = logging.getLogger(__name__)

ATTEMPTS = 5
BACKOFF_SECONDS = 1.0  # 1, 2, 4, 8 s between the attempts
TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 1.0
LEASE_SECONDS = 300.0  # > ATTEMPTS x TIMEOUT_SECONDS + the backoff


class _Retryable(Exception):
    """An attempt worth repeating: the receiver was unreachable, slow, or answered 429 or 5xx."""


class Deliverer(threading.Thread):
    """Sends the outbox's pending deliveries, one at a time, until stopped (a worker's main process)."""

    def __init__(self, name: str, settings: Settings) -> None:
        super().__init__(name="jobformer-webhooks", daemon=True)
        self.worker, self.settings = name, settings
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                deliver_pending(self.settings, self.worker, halt=self._halt)
            except Exception as exc:  # noqa: BLE001 - e.g. the database is restarting: the next poll retries
                log.warning("webhooks: could not read the outbox: %s", exc)
            self._halt.wait(POLL_SECONDS)


def deliver_pending(settings: Settings, worker: str, halt: threading.Event | None = None) -> list[str]:
    """Send every pending delivery this deliverer can claim; the outcomes, in order."""
    with session_scope() as s:
        pending = outbox.pending_deliveries(s)
    outcomes = []
    for delivery_id in pending:
        if halt is not None and halt.is_set():
            break
        outcome = deliver(delivery_id, settings, worker)
        if outcome is not None:
            outcomes.append(outcome)
    return outcomes


def deliver(delivery_id: str, settings: Settings, worker: str) -> str | None:
    """Claim delivery ``delivery_id`` and send it; the outcome ("delivered", "failed", "refused"), or None
    when another deliverer has it (or it was sent) or this one lost its claim meanwhile."""
    with session_scope() as s:
        claimed = outbox.claim_delivery(s, delivery_id, worker, lease_seconds=LEASE_SECONDS)
        if claimed is None:
            return None
        job = store.get_job(s, claimed["job_id"])
        body = _payload(job, claimed["event"])
    record = _Recorder(delivery_id, claimed["claim"], claimed["job_id"], claimed["url"])
    try:
        outcome = _send(claimed["url"], body, delivery_id, settings, record)
        write_with_retry(
            lambda s: outbox.finish_delivery(s, delivery_id, claimed["claim"], outcome),
            what="webhook delivery",
            job_id=claimed["job_id"],
        )
    except outbox.DeliveryLost:
        log.warning(
            "delivery %s: claimed by another deliverer meanwhile: recording nothing more", delivery_id
        )
        return None
    return outcome


def _send(url: str, body: bytes, delivery: str, settings: Settings, record: _Recorder) -> str:
    if not settings.webhook_secret:
        record("refused", "the server has no JOBFORMER_WEBHOOK_SECRET: nothing is sent unsigned")
        return "refused"
    try:
        webhooks.check_url(url, settings.webhook_allowed_hosts)
    except webhooks.WebhookRefused as exc:
        record("refused", str(exc))
        return "refused"
    retrying = Retrying(
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_exponential(multiplier=BACKOFF_SECONDS, max=60),
        retry=retry_if_exception_type(_Retryable),
    )
    with httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=False) as client:
        try:
            status = retrying(_attempt, client, url, body, delivery, settings.webhook_secret, record)
        except RetryError:
            log.warning(
                "job %s: webhook not delivered after %d attempts",
                record.job_id,
                ATTEMPTS,
                extra={"job_id": record.job_id},
            )
            return "failed"
    return "delivered" if status < 300 else "failed"


def _attempt(
    client: httpx.Client, url: str, body: bytes, delivery: str, secret: str, record: _Recorder
) -> int:
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "jobformer-webhook",
        "X-Jobformer-Delivery": delivery,
        webhooks.TIMESTAMP_HEADER: str(timestamp),
        webhooks.SIGNATURE_HEADER: webhooks.sign(secret, timestamp, body),
    }
    try:
        answer = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        record("error", f"{type(exc).__name__}: {exc}")
        raise _Retryable from exc
    retry = answer.status_code == 429 or answer.status_code >= 500
    outcome = "delivered" if answer.status_code < 300 else ("error" if retry else "rejected")
    record(outcome, f"HTTP {answer.status_code}", status_code=answer.status_code)
    if retry:
        raise _Retryable
    return answer.status_code


class _Recorder:
    """Writes one ``webhook`` event of the job per attempt, fenced by the delivery's claim."""

    def __init__(self, delivery: str, claim: int, job_id: str, url: str) -> None:
        self.delivery, self.claim, self.job_id, self.url = delivery, claim, job_id, url
        self.attempt = 0

    def __call__(self, outcome: str, detail: str, status_code: int | None = None) -> None:
        self.attempt += 1
        data = {
            "url": self.url,
            "delivery": self.delivery,
            "attempt": self.attempt,
            "outcome": outcome,
            "status_code": status_code,
            "detail": detail,
        }
        message = f"webhook {outcome} (attempt {self.attempt}): {detail}"
        log.info("job %s: %s", self.job_id, message, extra={"job_id": self.job_id})
        write_with_retry(self._write(message, data), what="webhook event", job_id=self.job_id)

    def _write(self, message: str, data: dict[str, Any]) -> Any:
        def write(s: Session) -> None:
            outbox.record_attempt(s, self.delivery, self.claim, self.job_id, message, data)

        return write


def _payload(job: Any, event: str) -> bytes:
    """The body: the event type and the job's end, as the API would summarise it."""
    error = {"code": job.error_code, "message": job.error_message} if job.error_code else None
    body = {
        "type": event,
        "job": {
            "id": job.id,
            "status": job.status,
            "queue": job.queue,
            "dataset_id": job.dataset_id,
            "attempts": job.attempts,
            "created_at": job.created_at.isoformat(),
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            "error": error,
            "metrics": job.metrics or {},
            "best": job.best,
            "sweep_id": job.sweep_id,
        },
    }
    return json.dumps(body, separators=(",", ":"), default=str).encode()
