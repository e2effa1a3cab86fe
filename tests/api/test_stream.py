"""GET /jobs/{id}/stream against a real database and a real HTTP server (docs/design.md, "Live updates").

No worker runs here: what a worker writes (progress, metric points, events, the end) is written through
core.db.store, as the worker writes it, while the test follows the stream.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from api.main import create_app
from core.db import store
from core.db.session import get_engine
from core.ml.callbacks import MetricPoint
from tests.api.conftest import SPAM_CSV
from tests.api.live import WAIT, Follower, Sse, serve

PROGRESS = {"step": 2, "total_steps": 4, "epoch": 0, "total_epochs": 1, "percent": 50.0, "train_loss": 0.5}
SMALL = {"task": "classification", "model": {"d_model": 16, "n_heads": 2, "dim_feedforward": 32}}
ALICE = {"Authorization": "Bearer alice-key-0123456789"}
BOB = {"Authorization": "Bearer bob-key-9876543210"}


class Live:
    def __init__(self, app, url: str, headers: dict[str, str]) -> None:
        self.app, self.url, self.headers = app, url, headers
        self.hub = app.state.streams

    def job(self) -> str:
        h = self.headers
        ds = httpx.post(
            f"{self.url}/datasets", files={"file": ("s.csv", SPAM_CSV, "text/csv")}, headers=h, timeout=WAIT
        )
        assert ds.status_code == 201, ds.text
        r = httpx.post(
            f"{self.url}/jobs", json={"dataset_id": ds.json()["id"], "config": SMALL}, headers=h, timeout=WAIT
        )
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def follow(self, job_id: str, headers: dict[str, str] | None = None, **kw) -> Follower:
        return Follower(f"{self.url}/jobs/{job_id}/stream", {**self.headers, **(headers or {})}, **kw)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers, timeout=WAIT)


@pytest.fixture
def live(make_settings) -> Iterator[Callable[..., Live]]:
    with_keys = {"api_keys": "alice-key-0123456789, bob-key-9876543210"}

    servers = []

    def start(keys: bool = False) -> Live:
        app = create_app(make_settings(**(with_keys if keys else {})))
        app.state.streams.interval = 0.05  # read often: the test waits less
        ctx = serve(app)
        servers.append(ctx)
        return Live(app, ctx.__enter__(), ALICE if keys else {})

    yield start
    for ctx in servers:
        ctx.__exit__(None, None, None)


def points(messages: list[Sse]) -> list[tuple[int, str, str, float]]:
    return [
        (p["step"], p["split"], p["name"], p["value"])
        for m in messages
        if m.event == "metrics"
        for p in m.data["points"]
    ]


def write_points(s: Session, job_id: str, steps: range) -> None:
    for step in steps:
        store.add_metrics(s, job_id, [MetricPoint(step, 0, "train", "loss", 1.0 / (step + 1))])
        s.commit()


def wait_until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.02)


def test_snapshot_first_then_points_events_progress_live_then_end(live, db_session: Session):
    server = live()
    job_id = server.job()
    f = server.follow(job_id)
    snapshot = f.next()
    assert snapshot.event == "snapshot" and snapshot.id is None
    assert snapshot.data == server.get(f"/jobs/{job_id}").json()
    assert snapshot.data["status"] == "queued"
    queued = f.until("event")  # everything so far: the job's "queued" event
    assert [m.event for m in queued] == ["event"]
    assert queued[0].data["kind"] == "queued" and queued[0].id.endswith(":" + queued[0].id.split(":")[1])

    store.claim_job(db_session, job_id, "test:1")
    db_session.commit()
    started = f.until("progress")
    assert [(m.event, m.data.get("kind") or m.data.get("status")) for m in started] == [
        ("event", "started"),
        ("progress", "running"),
    ]

    store.update_progress(db_session, job_id, PROGRESS)
    store.add_metrics(db_session, job_id, [MetricPoint(2, 0, "train", "loss", 0.5)])
    db_session.commit()
    got = f.until("progress")
    assert [m.event for m in got] == ["metrics", "progress"]
    assert got[0].data == {
        "points": [
            {
                "step": 2,
                "epoch": 0,
                "split": "train",
                "name": "loss",
                "value": 0.5,
                "time": got[0].data["points"][0]["time"],
            }
        ]
    }
    metric_id, event_id = (int(x) for x in got[0].id.split(":"))
    assert (metric_id, str(event_id)) == (metric_id, started[0].id.split(":")[1])
    assert got[1].data["progress"]["percent"] == 50.0 and got[1].data["metrics"] == {"train_loss": 0.5}

    store.finish_job(db_session, job_id, "succeeded")
    db_session.commit()
    rest = f.rest()  # the stream closes after end
    assert [m.event for m in rest] == ["event", "progress", "end"]
    assert rest[0].data["kind"] == "succeeded"
    assert rest[-1].data == server.get(f"/jobs/{job_id}").json()
    assert rest[-1].data["status"] == "succeeded"
    f.join()
    wait_until(lambda: not server.hub.readers)


def test_last_event_id_resumes_without_gap_or_duplicate(live, db_session: Session):
    server = live()
    job_id = server.job()
    store.claim_job(db_session, job_id, "test:1")
    db_session.commit()
    write_points(db_session, job_id, range(0, 5))
    # Hang up after the snapshot and the points so far (the rows so far come points first, then events).
    first = server.follow(job_id, hang_up_after=2)
    seen = first.rest()
    assert [m.event for m in seen] == ["snapshot", "metrics"]
    first.join()
    cursor = seen[-1].id
    wait_until(lambda: not server.hub.readers)  # the reader stopped with its last watcher

    write_points(db_session, job_id, range(5, 12))  # while nobody watches
    second = server.follow(job_id, {"Last-Event-ID": cursor})
    assert second.next().event == "snapshot"
    write_points(db_session, job_id, range(12, 20))  # while it follows
    store.finish_job(db_session, job_id, "succeeded")
    db_session.commit()
    resumed = second.rest()
    assert resumed[-1].event == "end"

    steps = [p[0] for p in points(seen) + points(resumed)]
    assert steps == list(range(20))  # every point once, in order
    events = [m.data["kind"] for m in seen + resumed if m.event == "event"]
    assert events == ["queued", "started", "succeeded"]
    ids = [tuple(int(x) for x in m.id.split(":")) for m in seen + resumed if m.id]
    assert len(set(ids)) == len(ids)  # each id: one message
    assert all(a <= b for pair in zip(ids, ids[1:], strict=False) for a, b in zip(*pair, strict=True))


def test_a_stream_on_an_ended_job_sends_snapshot_rows_then_end(live, db_session: Session):
    server = live()
    job_id = server.job()
    store.claim_job(db_session, job_id, "test:1")
    write_points(db_session, job_id, range(3))
    store.finish_job(db_session, job_id, "failed", error_code="diverged", error_message="loss is NaN")
    db_session.commit()
    got = server.follow(job_id).rest()
    assert [m.event for m in got] == ["snapshot", "metrics", "event", "event", "event", "event", "end"]
    assert points(got) == [(0, "train", "loss", 1.0), (1, "train", "loss", 0.5), (2, "train", "loss", 1 / 3)]
    assert got[0].data["status"] == got[-1].data["status"] == "failed"
    assert got[-1].data["error"] == {"code": "diverged", "message": "loss is NaN"}
    # Resuming at the last id: nothing again, but the snapshot and the end.
    again = server.follow(job_id, {"Last-Event-ID": got[-2].id}).rest()
    assert [m.event for m in again] == ["snapshot", "end"]


def test_many_watchers_cost_one_reader(live, db_session: Session, db_url: str):
    server = live()
    job_id = server.job()
    store.claim_job(db_session, job_id, "test:1")
    db_session.commit()
    watchers = [server.follow(job_id) for _ in range(8)]
    for w in watchers:
        assert [w.next().event for _ in range(3)] == ["snapshot", "event", "event"]  # queued, started
    assert server.hub.readers_started == 1 and list(server.hub.readers) == [job_id]

    queries: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        if "FROM metric_points" in statement:
            queries.append(statement)

    engine = get_engine(db_url)
    event.listen(engine, "before_cursor_execute", count)
    try:
        ticks = server.hub.ticks
        write_points(db_session, job_id, range(3))
        for w in watchers:
            got: list[Sse] = []
            while len(points(got)) < 3:
                got += w.until("metrics")
            assert [p[0] for p in points(got)] == [0, 1, 2]
        ticks = server.hub.ticks - ticks
    finally:
        event.remove(engine, "before_cursor_execute", count)
    # One points query per tick of the one reader, whatever the number of watchers.
    # At each edge one tick may be half in the count: under way when counting began (its query before the
    # listener, its tick after) or when it ended (its query counted, its tick not yet).
    assert ticks >= 1 and abs(len(queries) - ticks) <= 1

    store.finish_job(db_session, job_id, "succeeded")
    db_session.commit()
    for w in watchers:
        assert w.rest()[-1].event == "end"
        w.join()
    wait_until(lambda: not server.hub.readers)
    assert server.hub.readers_started == 1


def test_the_last_watcher_leaving_stops_the_reader(live, db_session: Session):
    server = live()
    job_id = server.job()
    # Each hangs up after the snapshot, "queued" and "started", which comes once all three follow.
    watchers = [server.follow(job_id, hang_up_after=3) for _ in range(3)]
    for w in watchers:
        assert [w.next().event for _ in range(2)] == ["snapshot", "event"]
    assert server.hub.readers_started == 1 and len(server.hub.readers[job_id].watchers) == 3
    store.claim_job(db_session, job_id, "test:1")
    db_session.commit()
    for w in watchers:
        assert [m.data["kind"] for m in w.rest()] == ["started"]
        w.join()
    wait_until(lambda: not server.hub.readers)
    assert server.hub.readers_started == 1


def test_another_owners_job_is_404_and_no_key_is_401(live):
    server = live(keys=True)
    job_id = server.job()
    bob = server.follow(job_id, BOB)
    assert bob.next() is None and bob.status == 404
    assert bob.body["detail"] == f"job {job_id} not found"
    nobody = Follower(f"{server.url}/jobs/{job_id}/stream")
    assert nobody.next() is None and nobody.status == 401
    assert nobody.body["code"] == "unauthorized"
    assert not server.hub.readers and server.hub.readers_started == 0
    alice = server.follow(job_id, hang_up_after=1)
    assert alice.next().data["id"] == job_id


@pytest.mark.parametrize("bad", ["x", "1", "1:", ":2", "-1:2", "1:2:3", "1.5:2"])
def test_a_malformed_last_event_id_is_422_naming_the_header(live, bad):
    server = live()
    job_id = server.job()
    r = (
        server.get(f"/jobs/{job_id}/stream")
        if False
        else httpx.get(f"{server.url}/jobs/{job_id}/stream", headers={"Last-Event-ID": bad})
    )
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"].startswith("header Last-Event-ID must be '<metric_id>:<event_id>'")


def test_what_a_tick_queued_goes_out_as_one_chunk(monkeypatch):
    """The messages waiting on a watcher's queue are sent as one chunk (one socket write) in their
    order, each a whole event with its id; the stream ends after ``end``."""
    import asyncio

    from api.schemas import JobPublic
    from api.streams import Cursor, Message, Reader, StreamHub
    from tests.api.live import parse

    hub = StreamHub("sqlite://")
    snapshot = JobPublic.model_validate(
        {
            "id": "j",
            "dataset_id": "d",
            "status": "running",
            "config": {},
            "created_at": "2026-01-01T00:00:00Z",
            "attempts": 1,
            "max_attempts": 3,
            "queue_name": "jobformer",
        }
    )
    point = {"step": 1, "epoch": 0, "split": "train", "name": "loss", "value": 2.0, "time": None}

    def join(job_id, watcher):  # a reader that is ready and has queued one tick's messages
        reader = Reader(job_id, Cursor())
        reader.ready.set()
        for m in (
            Message("metrics", [point, point], [1, 2]),
            Message("event", {"kind": "evaluated"}, [5]),
            Message("progress", {"status": "running"}),
            Message("end", snapshot),
        ):
            watcher.put(m)
        return reader

    monkeypatch.setattr(hub, "_join", join)

    async def collect():
        return [chunk async for chunk in hub.follow("j", snapshot, Cursor())]

    chunks = asyncio.run(collect())
    assert len(chunks) == 2  # the snapshot, then the whole tick
    events = list(parse(chunks[1].decode().replace("\r\n", "\n").split("\n")))
    assert [(e.event, e.id) for e in events] == [
        ("metrics", "2:0"),
        ("event", "2:5"),
        ("progress", None),
        ("end", None),
    ]
    assert len(events[0].data["points"]) == 2
