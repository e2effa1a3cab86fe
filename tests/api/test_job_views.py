"""GET /jobs/{id} from memory (api/jobviews.py; docs/design.md, "Live updates"): the same answers, one read
for many requests, your own writes at once, a worker's within the bound, another owner's job still 404.

The cache's clock is the test's: frozen, an answer never goes stale by itself, so what a test sees after a
write shows whether the write cleared it; moved past the TTL, every answer must be read again.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.jobviews import VIEW_TTL_SECONDS, JobViews
from api.main import create_app
from api.schemas import JobPublic
from core.db import store
from tests.api.conftest import SPAM_CSV
from tests.api.live import WAIT, Follower, serve

SMALL = {"task": "classification", "model": {"d_model": 16, "n_heads": 2, "dim_feedforward": 32}}
ALICE = {"Authorization": "Bearer alice-key-0123456789"}
BOB = {"Authorization": "Bearer bob-key-9876543210"}
ROOT = Path(__file__).resolve().parents[2]

# A worker's writes, from another process: its commits cannot clear this process's cache.
WORKER_WRITES = """
import sys
from core.db import store
from core.db.session import get_sessionmaker
from core.ml.callbacks import MetricPoint

with get_sessionmaker(sys.argv[1])() as s:
    store.claim_job(s, sys.argv[2], "worker:1")
    store.add_metrics(s, sys.argv[2], [MetricPoint(1, 0, "train", "loss", 0.9)])
    s.commit()
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(client: TestClient) -> Clock:
    clock = Clock()
    client.app.state.job_views.clock = clock
    return clock


def _view(status: str) -> JobPublic:
    """A job's answer as a read would give it (job "j1")."""
    return JobPublic(
        id="j1",
        status=status,
        dataset_id="d1",
        config={},
        created_at="2026-01-01T00:00:00Z",
        attempts=1,
        max_attempts=3,
        queue_name="default",
    )


def _wait_for_refresh(views: JobViews, job_id: str, clock: Clock) -> None:
    """Until the job's answer is one read at the (frozen) test clock's now: the background refresh."""
    deadline = time.monotonic() + WAIT
    while (entry := views.fresh(job_id)) is None or entry.read_at != clock.now:
        assert time.monotonic() < deadline, "no refresh stored the job's answer"
        time.sleep(0.01)


def new_job(client: TestClient, upload, headers: dict[str, str] | None = None) -> str:
    dataset = upload(SPAM_CSV.encode(), "spam.csv") if headers is None else None
    if headers is not None:
        files = {"file": ("s.csv", SPAM_CSV.encode(), "text/csv")}
        dataset = client.post("/datasets", files=files, headers=headers).json()
    r = client.post("/jobs", json={"dataset_id": dataset["id"], "config": SMALL}, headers=headers or {})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_a_hit_is_the_answer_a_read_gives_and_reads_nothing(client, upload, clock, db_session: Session):
    job_id = new_job(client, upload)
    views: JobViews = client.app.state.job_views
    first = client.get(f"/jobs/{job_id}")
    assert first.status_code == 200 and first.headers["content-type"] == "application/json"
    assert views.reads == 1
    body = first.json()
    assert body["status"] == "queued" and body["queue"] == {"position": 1, "workers_online": 0}
    assert JobPublic.model_validate(body).id == job_id

    again = client.get(f"/jobs/{job_id}")
    same = client.get(f"/jobs/{job_id}", headers={"If-None-Match": first.headers["etag"]})
    assert views.reads == 1  # both from memory
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
    assert same.status_code == 304 and same.content == b"" and same.headers["etag"] == first.headers["etag"]

    # Past the TTL it is read again (in the background: this answer is the one in memory), and the read
    # answers the same as before, byte for byte.
    clock.now += VIEW_TTL_SECONDS
    assert client.get(f"/jobs/{job_id}").content == first.content
    _wait_for_refresh(views, job_id, clock)
    assert views.reads == 2
    assert views.fresh(job_id).body == first.content


def test_a_fresh_answer_skips_the_route_and_answers_header_for_header_as_it_does(client, upload, clock):
    """FreshAnswers (api/jobviews.py) sends a fresh entry without routing: the same status, headers and
    bytes as the route gives, timed under the route's template; a stale entry still goes to the route."""
    job_id = new_job(client, upload)
    views: JobViews = client.app.state.job_views
    routed_calls = []
    route_get = views.get
    views.get = lambda *args: (routed_calls.append(args[0]), route_get(*args))[1]

    def get(**headers: str) -> tuple[httpx.Response, bool]:
        before = len(routed_calls)
        r = client.get(f"/jobs/{job_id}", headers=headers)
        return r, len(routed_calls) > before

    first, routed = get()
    assert routed and first.status_code == 200
    hit, routed = get()
    assert not routed and hit.status_code == 200
    assert hit.content == first.content and dict(hit.headers) == dict(first.headers)

    tag = first.headers["etag"]
    not_modified, routed = get(**{"If-None-Match": f'W/"x", {tag}'})
    assert not routed and not_modified.status_code == 304 and not_modified.content == b""
    clock.now += VIEW_TTL_SECONDS  # stale: the route answers from memory while one read refreshes it
    routed_304, routed = get(**{"If-None-Match": f'W/"x", {tag}'})
    assert routed and routed_304.status_code == 304
    assert dict(not_modified.headers) == dict(routed_304.headers)

    count = client.app.state.metrics_registry.get_sample_value
    labels = {"method": "GET", "route": "/jobs/{job_id}"}
    assert count("jobformer_http_request_duration_seconds_count", {**labels, "status": "200"}) == 2
    assert count("jobformer_http_request_duration_seconds_count", {**labels, "status": "304"}) == 2


def test_your_own_cancel_is_seen_by_the_next_get(client, upload, clock):
    job_id = new_job(client, upload)
    assert client.get(f"/jobs/{job_id}").json()["status"] == "queued"
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 202
    # The clock is frozen: only the cancel's commit can have made this answer stale.
    r = client.get(f"/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"


def test_a_workers_write_shows_within_the_bound(client, upload, clock, settings):
    job_id = new_job(client, upload)
    before = client.get(f"/jobs/{job_id}")
    subprocess.run(
        [sys.executable, "-c", WORKER_WRITES, settings.resolved_database_url, job_id],
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    # Younger than the TTL: still the answer read before the write.
    clock.now += VIEW_TTL_SECONDS * 0.9
    stale = client.get(f"/jobs/{job_id}", headers={"If-None-Match": before.headers["etag"]})
    assert stale.status_code == 304
    # At the TTL: the answer in memory still goes out, and one read refreshes it; from then on the write
    # shows (within STALE_SECONDS of the read before it, whatever the refresh takes).
    clock.now += VIEW_TTL_SECONDS * 0.1
    client.get(f"/jobs/{job_id}", headers={"If-None-Match": before.headers["etag"]})
    _wait_for_refresh(client.app.state.job_views, job_id, clock)
    after = client.get(f"/jobs/{job_id}", headers={"If-None-Match": before.headers["etag"]})
    assert after.status_code == 200
    assert after.json()["status"] == "running" and after.json()["metrics"] == {"train_loss": 0.9}


def test_another_owner_gets_404_from_a_cached_answer(make_settings, upload):
    app = create_app(make_settings(api_keys="alice-key-0123456789,bob-key-9876543210"))
    app.state.job_views.clock = Clock()
    with TestClient(app) as c:
        job_id = new_job(c, upload, headers=ALICE)
        tag = c.get(f"/jobs/{job_id}", headers=ALICE).headers["etag"]
        unknown = c.get("/jobs/nosuchjob", headers=BOB)
        for headers in (BOB, {**BOB, "If-None-Match": tag}, {**BOB, "If-None-Match": "*"}):
            r = c.get(f"/jobs/{job_id}", headers=headers)
            assert r.status_code == 404 and "etag" not in r.headers
            assert r.json() == {**unknown.json(), "detail": f"job {job_id} not found"}
        assert c.get(f"/jobs/{job_id}").status_code == 401
        assert c.get(f"/jobs/{job_id}", headers=ALICE).headers["etag"] == tag
        assert app.state.job_views.reads == 2  # Alice's first, and the unknown id


def test_many_requests_one_read_and_a_clear_during_it_is_not_kept():
    clock = Clock()
    views = JobViews(clock=clock)
    releases = [threading.Event(), threading.Event()]
    calls = []
    view = _view("running")

    def load():
        calls.append(1)
        releases[len(calls) - 1].wait(WAIT)
        return "alice", view

    async def scenario() -> None:
        waiting = [asyncio.ensure_future(views.get("j1", load)) for _ in range(50)]
        await asyncio.sleep(0.05)
        clock.now += 0.1
        views.clear()  # as a commit would, while the read is under way
        late = asyncio.ensure_future(views.get("j1", load))  # starts a read of its own
        await asyncio.sleep(0.05)
        releases[0].set()
        answers = await asyncio.gather(*waiting)
        assert {(a.owner, a.body, a.read_at) for a in answers} == {
            ("alice", view.model_dump_json().encode(), 1000)
        }
        assert views.fresh("j1") is None  # answered to the requests that waited for it, but not kept
        releases[1].set()
        assert (await late).read_at == 1000.1

    asyncio.run(scenario())
    assert len(calls) == 2 and views.reads == 2
    assert views.fresh("j1").read_at == 1000.1
    assert views.fresh("nosuch") is None


def test_an_answer_past_its_ttl_is_sent_at_once_while_one_read_refreshes_it(caplog):
    """Past the TTL and within ``stale``, requests get the last answer without waiting, and one read
    refreshes it; a refresh that fails is logged and the next request reads again; past ``stale`` a
    request waits for the read.

    Would catch: every poller arriving during a slow read waiting for it (the API load bench's p99), a
    refresh per request, or an answer older than the bound."""
    clock = Clock()
    views = JobViews(ttl=0.5, stale=2.0, clock=clock)
    gate = threading.Event()
    calls: list[str] = []

    def load():
        calls.append("read")
        if len(calls) == 3:
            raise RuntimeError("database gone")
        if len(calls) == 2:
            gate.wait(WAIT)
        return "alice", _view(["queued", "running", "", "succeeded"][len(calls) - 1])

    async def scenario() -> None:
        first = await views.get("j1", load)
        clock.now += 1.0  # past the TTL, within stale: answered at once, one refresh starts
        answers = [await views.get("j1", load) for _ in range(20)]
        await asyncio.sleep(0.05)  # the refresh starts
        assert {a.body for a in answers} == {first.body} and calls == ["read", "read"]
        gate.set()
        while views.fresh("j1") is None:  # the refresh lands
            await asyncio.sleep(0.01)
        assert b'"running"' in (await views.get("j1", load)).body
        clock.now += 1.0  # past the TTL again: this refresh fails
        await views.get("j1", load)
        while "j1" in views._reading:
            await asyncio.sleep(0.01)
        clock.now += 1.5  # past stale: the request waits for a read of its own
        assert b'"succeeded"' in (await views.get("j1", load)).body

    asyncio.run(scenario())
    assert calls == ["read"] * 4
    assert "reading a job's answer failed: database gone" in caplog.text


def test_a_watched_jobs_reader_keeps_its_answer_fresh(make_settings, db_session: Session):
    app = create_app(make_settings())
    app.state.streams.interval = 0.05
    views: JobViews = app.state.job_views
    with serve(app) as url:
        ds = httpx.post(f"{url}/datasets", files={"file": ("s.csv", SPAM_CSV, "text/csv")}, timeout=WAIT)
        body = {"dataset_id": ds.json()["id"], "config": SMALL}
        job_id = httpx.post(f"{url}/jobs", json=body, timeout=WAIT).json()["id"]
        store.claim_job(db_session, job_id, "test:1")  # a running job: its answer has no queue position
        db_session.commit()
        follower = Follower(f"{url}/jobs/{job_id}/stream")
        assert follower.next().event == "snapshot"
        assert views.reads == 1  # the stream's snapshot, from the cache like GET /jobs/{id}'s answer
        views.clear()  # what is fresh from here on, the stream's reader put there
        deadline = time.monotonic() + WAIT
        while views.fresh(job_id) is None:
            assert time.monotonic() < deadline, "the reader never offered its view"
            time.sleep(0.02)
        r = httpx.get(f"{url}/jobs/{job_id}", timeout=WAIT)
        assert r.status_code == 200 and r.json()["status"] == "running"
        assert views.reads == 1  # answered from what the stream's reader read
        store.finish_job(db_session, job_id, "succeeded")
        db_session.commit()
        assert follower.rest()[-1].event == "end"
        follower.join()


def test_streams_opening_together_read_the_job_once(make_settings, db_session: Session):
    """A dashboard's worth of watchers opening at once: their snapshots come from one read of the job,
    as pollers' answers do (each used to take a session and read the job itself)."""
    app = create_app(make_settings())
    views: JobViews = app.state.job_views
    views.ttl = views.stale = 60.0  # every stream below opens within one TTL, however slow the machine
    with serve(app) as url:
        ds = httpx.post(f"{url}/datasets", files={"file": ("s.csv", SPAM_CSV, "text/csv")}, timeout=WAIT)
        body = {"dataset_id": ds.json()["id"], "config": SMALL}
        job_id = httpx.post(f"{url}/jobs", json=body, timeout=WAIT).json()["id"]
        store.claim_job(db_session, job_id, "test:1")
        db_session.commit()  # clears the cache: the first stream below reads the job
        followers = [Follower(f"{url}/jobs/{job_id}/stream") for _ in range(6)]
        snapshots = [f.next() for f in followers]
        assert {s.event for s in snapshots} == {"snapshot"}
        assert {s.data["status"] for s in snapshots} == {"running"}
        assert views.reads == 1
        store.finish_job(db_session, job_id, "succeeded")
        db_session.commit()
        for f in followers:
            assert f.rest()[-1].event == "end"
            f.join()
