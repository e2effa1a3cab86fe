"""Webhook deliveries (docs/design.md, "Operators") against a real receiver on 127.0.0.1 and a real
database (both backends): every end queues one delivery in its own transaction (the outbox), whoever
writes it; the signature checks out, 5xx answers are retried with backoff, every attempt is a ``webhook``
event, a host that is not allowed is never called, a key's default URL is used when a job names none, and a
deliverer whose claim was taken over records nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select, update

from core import webhooks
from core.db import store
from core.db.models import Event, Job, WebhookDelivery
from core.db.session import session_scope
from core.db.store import webhooks as outbox
from core.owners import owner_of_key
from core.settings import Settings, get_settings
from tests.worker._rows import placeholder_dataset
from worker import webhooks as worker_webhooks
from worker.webhooks import deliver_pending

SECRET = "test-webhook-secret-0123456789"


class Receiver:
    """A small HTTP server in a thread: answers with the next of ``statuses`` and keeps what came."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append({"headers": dict(self.headers), "body": body, "path": self.path})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def configure(db_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Settings from the environment (``JOBFORMER_<NAME>`` overrides), with a signing secret and the
    receiver's host allowed."""
    monkeypatch.setattr(worker_webhooks, "BACKOFF_SECONDS", 0.05)

    def build(**env: str) -> Settings:
        monkeypatch.setenv("JOBFORMER_DATABASE_URL", db_url)
        monkeypatch.setenv("JOBFORMER_DATA_DIR", str(tmp_path))
        for k, v in {"webhook_secret": SECRET, "webhook_allowed_hosts": "127.0.0.1", **env}.items():
            monkeypatch.setenv(f"JOBFORMER_{k.upper()}", v)
        get_settings.cache_clear()
        return get_settings()

    yield build
    get_settings.cache_clear()


@pytest.fixture
def make(configure) -> Iterator:
    """A job with ``webhook_url`` that ran and ended ``status`` (through the store, as a worker would);
    returns (settings, job_id)."""

    def build(url: str | None, status: str = "succeeded", owner: str | None = None, **env: str):
        settings = configure(**env)
        with session_scope() as s:
            job = store.create_job(
                s, dataset_id=placeholder_dataset(s), config={}, owner=owner, max_attempts=3
            )
            job.webhook_url = url
            claimed = store.claim_job(s, job.id, "host:1")
            store.finish_job(s, job.id, status, worker="host:1", epoch=claimed.epoch)
            job_id = job.id
        return settings, job_id

    return build


def _webhook_events(job_id: str) -> list[dict]:
    with session_scope() as s:
        return list(
            s.scalars(
                select(Event.data).where(Event.job_id == job_id, Event.kind == "webhook").order_by(Event.id)
            )
        )


def _deliveries(job_id: str) -> list[WebhookDelivery]:
    with session_scope() as s:
        rows = list(s.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)))
        s.expunge_all()
        return rows


def test_end_is_signed_and_retried_until_delivered(make):
    with Receiver([500, 503]) as receiver:
        settings, job_id = make(receiver.url)
        [pending] = _deliveries(job_id)  # queued with the end, in its transaction
        assert (pending.event, pending.url, pending.sent_at) == ("job.succeeded", receiver.url, None)
        assert deliver_pending(settings, "w") == ["delivered"]
        assert deliver_pending(settings, "w") == []  # sent once
    assert len(receiver.received) == 3
    for got in receiver.received:
        headers, body = got["headers"], got["body"]
        assert webhooks.verify(
            SECRET, headers[webhooks.TIMESTAMP_HEADER], body, headers[webhooks.SIGNATURE_HEADER]
        )
        assert not webhooks.verify(
            "another secret", headers[webhooks.TIMESTAMP_HEADER], body, headers[webhooks.SIGNATURE_HEADER]
        )
        assert not webhooks.verify(
            SECRET, headers[webhooks.TIMESTAMP_HEADER], body + b" ", headers[webhooks.SIGNATURE_HEADER]
        )
        payload = json.loads(body)
        assert payload["type"] == "job.succeeded"
        assert payload["job"]["id"] == job_id and payload["job"]["status"] == "succeeded"
    # one delivery id across its attempts: the outbox row's
    assert {got["headers"]["X-Jobformer-Delivery"] for got in receiver.received} == {pending.id}
    events = _webhook_events(job_id)
    assert [(e["attempt"], e["outcome"], e["status_code"]) for e in events] == [
        (1, "error", 500),
        (2, "error", 503),
        (3, "delivered", 200),
    ]
    assert all(e["url"] == receiver.url for e in events)
    [sent] = _deliveries(job_id)
    assert sent.outcome == "delivered" and sent.sent_at is not None


def test_a_4xx_is_not_retried_and_an_unreachable_receiver_gives_up(make):
    with Receiver([410]) as receiver:
        settings, job_id = make(receiver.url, status="failed")
        assert deliver_pending(settings, "w") == ["failed"]
    assert len(receiver.received) == 1
    assert json.loads(receiver.received[0]["body"])["type"] == "job.failed"
    assert [e["outcome"] for e in _webhook_events(job_id)] == ["rejected"]

    with Receiver([]) as closed:
        url = closed.url  # nothing listens there once the receiver is closed
    settings, job_id = make(url)
    assert deliver_pending(settings, "w") == ["failed"]
    events = _webhook_events(job_id)
    assert len(events) == worker_webhooks.ATTEMPTS and {e["outcome"] for e in events} == {"error"}
    assert "ConnectError" in events[0]["detail"]


def test_a_host_not_allowed_is_never_called(make):
    with Receiver([]) as receiver:
        settings, job_id = make(receiver.url, webhook_allowed_hosts="")  # default: public hosts only
        assert deliver_pending(settings, "w") == ["refused"]
        assert receiver.received == []
    [event] = _webhook_events(job_id)
    assert event["outcome"] == "refused" and "127.0.0.1" in event["detail"]
    assert "JOBFORMER_WEBHOOK_ALLOWED_HOSTS" in event["detail"]


def test_a_deliverer_whose_claim_was_taken_over_records_nothing(make):
    with Receiver([]) as receiver:
        settings, job_id = make(receiver.url)
        [delivery] = _deliveries(job_id)
        with session_scope() as s:
            first = outbox.claim_delivery(s, delivery.id, "a", lease_seconds=300)
            assert outbox.claim_delivery(s, delivery.id, "b", lease_seconds=300) is None  # a holds it
            # a's claim runs out (it stalled); b claims the delivery
            s.execute(update(WebhookDelivery).values(claimed_until=None))
            second = outbox.claim_delivery(s, delivery.id, "b", lease_seconds=300)
        assert first is not None and second is not None and second["claim"] == first["claim"] + 1
        stale = worker_webhooks._Recorder(delivery.id, first["claim"], job_id, receiver.url)
        with pytest.raises(outbox.DeliveryLost):
            stale("delivered", "HTTP 200")
        with pytest.raises(outbox.DeliveryLost), session_scope() as s:
            outbox.finish_delivery(s, delivery.id, first["claim"], "delivered")
        assert deliver_pending(settings, "c") == []  # b holds it now
    assert _webhook_events(job_id) == []
    assert _deliveries(job_id)[0].sent_at is None


def _stale(s, job_id: str) -> None:
    from datetime import timedelta

    from core.db.models import utcnow

    s.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=600)))


def test_every_end_queues_one_delivery_whoever_writes_it(configure):
    """The API cancelling a queued job, a reaper failing a lost job after its last attempt and ending a
    lost ``cancelling`` one, a worker's end: each writes one pending delivery with the end, none twice;
    a job without a webhook gets none. Would catch: an end path that skips the outbox."""
    configure()
    url = "http://127.0.0.1:9/hook"
    ids = {}
    with session_scope() as s:
        dataset = placeholder_dataset(s)
        for name, attempts in [("cancelled", 3), ("lost", 1), ("stopping", 3), ("ran", 3), ("plain", 3)]:
            job = store.create_job(s, dataset_id=dataset, config={}, owner=None, max_attempts=attempts)
            job.webhook_url = None if name == "plain" else url
            ids[name] = job.id
    with session_scope() as s:
        store.request_cancel(s, ids["cancelled"])  # queued -> cancelled, as the API does
        store.request_cancel(s, ids["cancelled"])  # again: nothing more
        for name in ("lost", "stopping", "ran", "plain"):
            store.claim_job(s, ids[name], "host:1")
        store.request_cancel(s, ids["stopping"])  # running -> cancelling: not an end
        assert _deliveries(ids["stopping"]) == []
        _stale(s, ids["lost"])
        _stale(s, ids["stopping"])
    with session_scope() as s:
        requeued, ended = store.requeue_stale_jobs(s, timeout_seconds=60)
        assert (requeued, sorted(ended)) == ([], sorted([ids["lost"], ids["stopping"]]))
        for name in ("ran", "plain"):
            store.finish_job(s, ids[name], "succeeded", worker="host:1")
    with session_scope() as s:
        store.requeue_stale_jobs(s, timeout_seconds=60)  # nothing is stale twice
        store.finish_job(s, ids["ran"], "failed", worker="host:1")  # a second end is refused
    got = {name: [(d.event, d.url) for d in _deliveries(job_id)] for name, job_id in ids.items()}
    assert got == {
        "cancelled": [("job.cancelled", url)],
        "lost": [("job.failed", url)],
        "stopping": [("job.cancelled", url)],
        "ran": [("job.succeeded", url)],
        "plain": [],
    }


def test_a_keys_default_url_and_a_jobs_own_url(configure):
    """JOBFORMER_WEBHOOK_DEFAULTS: a job of the key without a webhook_url gets the key's default; a job
    with its own keeps it; another key's job gets none."""
    default = "http://127.0.0.1:9/default"
    configure(
        api_keys="alice-key-0123456789,bob-key-0123456789", webhook_defaults=f"alice-key-0123456789={default}"
    )
    alice, bob = owner_of_key("alice-key-0123456789"), owner_of_key("bob-key-0123456789")
    ids = {}
    with session_scope() as s:
        dataset = placeholder_dataset(s)
        for name, owner, own in [
            ("alice", alice, None),
            ("alice-own", alice, "http://127.0.0.1:9/own"),
            ("bob", bob, None),
        ]:
            job = store.create_job(s, dataset_id=dataset, config={}, owner=owner, max_attempts=3)
            job.webhook_url = own
            ids[name] = job.id
    with session_scope() as s:
        for job_id in ids.values():
            store.request_cancel(s, job_id)
    assert [d.url for d in _deliveries(ids["alice"])] == [default]
    assert [d.url for d in _deliveries(ids["alice-own"])] == ["http://127.0.0.1:9/own"]
    assert _deliveries(ids["bob"]) == []


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"webhook_defaults": "nokey=http://127.0.0.1:9/h"}, "not in JOBFORMER_API_KEYS"),
        ({"webhook_defaults": "k-0123456789abcdef=ftp://127.0.0.1/h"}, "only http and https"),
        (
            {"webhook_defaults": "k-0123456789abcdef=http://10.1.2.3/h"},
            "not one of JOBFORMER_WEBHOOK_ALLOWED_HOSTS",
        ),
        (
            {"webhook_defaults": "k-0123456789abcdef=http://127.0.0.1/h", "webhook_secret": ""},
            "needs JOBFORMER_WEBHOOK_SECRET",
        ),
        ({"webhook_defaults": "{not json"}, "not valid JSON"),
    ],
)
def test_bad_webhook_defaults_are_refused_at_start(env: dict[str, str], fragment: str):
    from pydantic import ValidationError

    values = {
        "api_keys": ["k-0123456789abcdef"],
        "webhook_secret": SECRET,
        "webhook_allowed_hosts": ["127.0.0.1"],
    }
    values.update(env)
    with pytest.raises(ValidationError, match=fragment):
        Settings(**values)
    ok = Settings(
        **{
            **values,
            "webhook_defaults": '{"k-0123456789abcdef": "http://127.0.0.1:8/h"}',
            "webhook_secret": SECRET,
        }
    )
    assert ok.webhook_default_for(owner_of_key("k-0123456789abcdef")) == "http://127.0.0.1:8/h"


@pytest.mark.parametrize(
    ("url", "allowed", "fragment"),
    [
        ("ftp://example.com/x", [], "only http and https"),
        ("/relative", [], "only http and https"),
        ("http:///nohost", [], "no host"),
        ("http://127.0.0.1:9/x", [], "not public"),
        ("http://10.1.2.3/x", [], "not public"),
        ("http://[::1]/x", [], "not public"),
        ("http://169.254.169.254/latest/meta-data", [], "not public"),
        ("http://10.1.2.3/x", ["127.0.0.1"], "not one of JOBFORMER_WEBHOOK_ALLOWED_HOSTS"),
    ],
)
def test_urls_refused(url: str, allowed: list[str], fragment: str):
    with pytest.raises(webhooks.WebhookRefused, match=fragment):
        webhooks.check_url(url, allowed)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://93.184.215.14/hook", []),
        ("http://127.0.0.1:8080/hook", ["127.0.0.1"]),
        ("http://10.1.2.3/hook", ["10.0.0.0/8"]),
        ("http://hooks.internal/x", ["hooks.internal"]),  # a listed name is trusted as it is
    ],
)
def test_urls_allowed(url: str, allowed: list[str]):
    assert webhooks.check_url(url, allowed) == url


def test_a_cancelled_sweeps_trials_are_delivered_to_the_keys_default(configure):
    """A sweep's trials are jobs the store creates (no webhook_url of their own): cancelling the sweep
    ends its queued trials, and each end queues a delivery to its key's default."""
    key = "alice-key-0123456789"
    default = "http://127.0.0.1:9/sweeps"
    configure(api_keys=key, webhook_defaults=f"{key}={default}")
    with session_scope() as s:
        dataset = placeholder_dataset(s)
        sweep = store.create_sweep(
            s,
            owner=owner_of_key(key),
            dataset_id=dataset,
            config={"task": "classification", "text_column": "text", "label_column": "label"},
            parameters={"training.learning_rate": {"values": [1e-3, 3e-3]}},
            method="grid",
            max_jobs=2,
            max_parallel=2,
            metric="val_accuracy",
            direction="maximize",
            seed=0,
            queue="default",
        )
        step = store.advance_sweep(s, sweep.id, max_attempts=3, active_limit=None)
        trials = [job_id for job_id, _queue in step.created]
        sweep_id = sweep.id
    assert len(trials) == 2
    with session_scope() as s:
        store.cancel_sweep(s, sweep_id)
    for job_id in trials:
        assert [(d.event, d.url) for d in _deliveries(job_id)] == [("job.cancelled", default)]
