"""The webhook outbox (docs/design.md, "Operators"): every end of a job that has a webhook (its own
``webhook_url``, else its key's default, ``Settings.webhook_default_for``) gets one ``WebhookDelivery``
row, written in the transaction that writes the end (``queue_delivery``, called by the transitions).
A worker's deliverer (worker/webhooks.py) claims a pending row for a while (``claim_delivery``), records
each attempt as a ``webhook`` event of the job (``record_attempt``) and marks the row sent
(``finish_delivery``); each write after the claim is conditional on that claim, so a deliverer whose
claim ran out and was claimed again writes nothing more.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.db.models import Event, Job, WebhookDelivery, utcnow
from core.settings import get_settings


class DeliveryLost(Exception):
    """A deliverer's write matched no row for (delivery, claim): its claim ran out and another took it."""


def queue_delivery(s: Session, job_id: str) -> WebhookDelivery | None:
    """The pending delivery of job ``job_id``'s end (its status now), when it has a webhook; None when it
    has none, or its end was queued already. Call it in the transaction that wrote the end."""
    row = s.execute(select(Job.status, Job.webhook_url, Job.owner).where(Job.id == job_id)).one_or_none()
    if row is None:
        return None
    url = row.webhook_url or get_settings().webhook_default_for(row.owner)
    if not url:
        return None
    event = f"job.{row.status}"
    exists = s.scalar(
        select(WebhookDelivery.id).where(WebhookDelivery.job_id == job_id, WebhookDelivery.event == event)
    )
    if exists is not None:
        return None
    delivery = WebhookDelivery(job_id=job_id, event=event, url=url, created_at=utcnow())
    s.add(delivery)
    s.flush()
    return delivery


def pending_deliveries(s: Session, limit: int = 20) -> list[str]:
    """Ids of deliveries not sent yet and not claimed by a deliverer now, oldest first."""
    now = utcnow()
    return list(
        s.scalars(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.sent_at.is_(None),
                WebhookDelivery.claimed_until.is_(None) | (WebhookDelivery.claimed_until < now),
            )
            .order_by(WebhookDelivery.created_at)
            .limit(limit)
        )
    )


def claim_delivery(
    s: Session, delivery_id: str, worker: str, *, lease_seconds: float
) -> dict[str, Any] | None:
    """Take delivery ``delivery_id`` for ``lease_seconds`` (one conditional update: two deliverers never
    both take it); what to send (``claim``, ``job_id``, ``event``, ``url``), or None when it was sent or
    is claimed by another deliverer now."""
    now = utcnow()
    stmt = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.sent_at.is_(None),
            WebhookDelivery.claimed_until.is_(None) | (WebhookDelivery.claimed_until < now),
        )
        .values(
            claim=WebhookDelivery.claim + 1,
            claimed_by=worker,
            claimed_until=now + timedelta(seconds=lease_seconds),
        )
        .execution_options(synchronize_session=False)
    )
    if s.execute(stmt).rowcount != 1:
        return None
    row = s.execute(
        select(
            WebhookDelivery.claim, WebhookDelivery.job_id, WebhookDelivery.event, WebhookDelivery.url
        ).where(WebhookDelivery.id == delivery_id)
    ).one()
    return {"claim": row.claim, "job_id": row.job_id, "event": row.event, "url": row.url}


def _fence(s: Session, delivery_id: str, claim: int, **values: Any) -> None:
    """Raise ``DeliveryLost`` unless ``claim`` is still the delivery's (and it is not sent); the update
    (``values``, or a no-op) holds the row until the commit."""
    stmt = (
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.claim == claim,
            WebhookDelivery.sent_at.is_(None),
        )
        .values(**(values or {"claim": WebhookDelivery.claim}))
        .execution_options(synchronize_session=False)
    )
    if s.execute(stmt).rowcount != 1:
        raise DeliveryLost(f"delivery {delivery_id}: claim {claim} is no longer its")


def record_attempt(
    s: Session, delivery_id: str, claim: int, job_id: str, message: str, data: dict[str, Any]
) -> None:
    """One attempt of a delivery, as a ``webhook`` event of its job; fenced by the claim."""
    _fence(s, delivery_id, claim)
    s.add(Event(job_id=job_id, kind="webhook", message=message, data=data, time=utcnow()))
    s.flush()


def finish_delivery(s: Session, delivery_id: str, claim: int, outcome: str) -> None:
    """Mark the delivery sent (``outcome``: delivered, failed or refused); fenced by the claim."""
    _fence(s, delivery_id, claim, sent_at=utcnow(), outcome=outcome, claimed_until=None)
