"""``GET /jobs/{id}`` from memory: each polled job's answer, read at most every ``VIEW_TTL_SECONDS`` per
process (docs/design.md, "Live updates": the job answer cache).

A hit costs no database session and no thread: the route reads the entry, checks the caller against the
entry's owner (404 for another owner, as a lookup would answer) and sends the encoded bytes, or a 304 when
``If-None-Match`` names the entry's ETag. A miss, or an entry older than the TTL, starts ONE read of the
job in a worker thread (``VIEW_READERS`` at once, each with a session of its own); every request for that
job arriving meanwhile awaits the same read. The stream hub's reader of a watched job offers what it read
each tick (api/streams.py), so a watched job is read once for its streams and its pollers.

Bounded staleness: an entry is answered while younger than the TTL, counted from the moment its read
began. Older but younger than ``STALE_SECONDS``, it is still answered at once while ONE read refreshes it in
the background (stale-while-revalidate): on a busy machine a read can take hundreds of milliseconds, and
every poller arriving meanwhile would otherwise wait for it. Older still (or absent), the request waits for
a fresh read (or the one under way). A write committed by this
process (any ``Session.commit``: a cancel, a submission, a sweep's trials) clears every entry before the
write's answer leaves, and a read that began before the clear is not stored: a client never reads its own
write stale. A worker's writes (another process) show within the TTL plus one read.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import anyio
from fastapi import Request
from sqlalchemy import event
from sqlalchemy.orm import Session

from api.deps import ID_PATTERN, OWNER_STATE_KEY
from api.errors import ProblemError
from api.middleware import ASGIApp, Receive, Scope, Send
from api.schemas import JobPublic
from api.views import encode_view, etag_matches, read_job_view

log = logging.getLogger(__name__)

# How old an answer may be before a request reads the job again ("a few times a second", like a stream).
VIEW_TTL_SECONDS = 0.5
# Past the TTL, an answer is still sent at once, while one read refreshes it, until it is this old.
STALE_SECONDS = 2.0
# Reads of jobs running at once in worker threads, each with its own session for one read: with
# API_SESSIONS (api/deps.py) and STREAM_READERS (api/streams.py), fewer than the engine's pool holds.
VIEW_READERS = 4
# Past this many entries, the stale ones are dropped (a job nobody polls costs nothing).
MAX_ENTRIES = 4096

# One read: the job's owner and its answer, or None when there is no such job.
Loader = Callable[[], tuple[str | None, JobPublic] | None]


@dataclass(frozen=True)
class JobAnswer:
    """A job's answer as GET /jobs/{id} sends it, and whose job it is."""

    owner: str | None
    body: bytes
    etag: str
    read_at: float  # the clock when its read began
    view: JobPublic  # what ``body`` encodes (a stream's snapshot); shared: never changed in place

    def visible_to(self, owner: str | None) -> bool:
        """Whether ``owner`` may see it (anyone, when authentication is off)."""
        return owner is None or self.owner == owner


@dataclass(frozen=True)
class Ticket:
    """Taken before a read: when it began, and the cache's generation then (a clear since: not stored)."""

    generation: int
    read_at: float


class JobViews:
    """The per-process cache of job answers (module docstring). ``clock`` is for tests."""

    def __init__(
        self,
        *,
        ttl: float = VIEW_TTL_SECONDS,
        stale: float = STALE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl, self.stale = ttl, max(stale, ttl)
        self.clock = clock
        self.reads = 0  # reads this cache made itself (tests count them)
        self._entries: dict[str, JobAnswer] = {}
        self._reading: dict[str, asyncio.Task[JobAnswer | None]] = {}
        self._generation = 0
        # Clears come from any thread that commits; storing checks the generation under the same lock.
        self._lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None
        _clear_on_commit(self)

    def fresh(self, job_id: str) -> JobAnswer | None:
        """The job's entry if it is younger than the TTL."""
        entry = self._entries.get(job_id)
        if entry is not None and self.clock() - entry.read_at < self.ttl:
            return entry
        return None

    async def get(self, job_id: str, load: Loader) -> JobAnswer | None:
        """The job's answer (None: no such job), from memory or from one shared read with ``load``; an
        answer past the TTL but within ``stale`` comes from memory while that read refreshes it."""
        entry = self._entries.get(job_id)
        age = self.clock() - entry.read_at if entry is not None else None
        if entry is not None and age < self.ttl:
            return entry
        task = self._reading.get(job_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._read(job_id, load))
            task.add_done_callback(_retrieve)  # nobody may await a refresh: its error is logged, not lost
            self._reading[job_id] = task
        if entry is not None and age < self.stale:
            return entry
        # Shielded: a client hanging up cancels its own wait, not the read the others wait for.
        return await asyncio.shield(task)

    async def _read(self, job_id: str, load: Loader) -> JobAnswer | None:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(VIEW_READERS)
        ticket = self.ticket()
        try:
            self.reads += 1
            found = await anyio.to_thread.run_sync(load, limiter=self._limiter)
        finally:
            if self._reading.get(job_id) is asyncio.current_task():
                del self._reading[job_id]
        if found is None:
            return None
        owner, view = found
        return self.store(job_id, owner, view, ticket)

    def ticket(self) -> Ticket:
        """Take one before reading a job whose answer will be stored."""
        with self._lock:
            return Ticket(self._generation, self.clock())

    def store(self, job_id: str, owner: str | None, view: JobPublic, ticket: Ticket) -> JobAnswer:
        """Keep ``view`` as the job's answer unless the cache was cleared since ``ticket`` was taken, or a
        newer read is kept already; the answer either way (the stream hub's reader offers its reads here)."""
        body, tag = encode_view(view)
        answer = JobAnswer(owner, body, tag, ticket.read_at, view)
        with self._lock:
            current = self._entries.get(job_id)
            if ticket.generation == self._generation and (
                current is None or current.read_at <= answer.read_at
            ):
                if len(self._entries) >= MAX_ENTRIES:
                    now = self.clock()
                    self._entries = {k: v for k, v in self._entries.items() if now - v.read_at < self.ttl}
                self._entries[job_id] = answer
        return answer

    def clear(self) -> None:
        """Forget every answer; reads under way are not stored (called on every commit in this process)."""
        with self._lock:
            self._generation += 1
            self._entries = {}
        # Requests from now on start a new read: the one under way may predate the write.
        self._reading = {}


async def visible_answer(request: Request, job_id: str, owner: str | None) -> JobAnswer:
    """The job's answer from this process's cache (one shared read when it is missing or old), or the 404
    problem a lookup answers when there is no such job or it is another key's (not 403: no leak)."""
    views: JobViews = request.app.state.job_views
    answer = await views.get(job_id, partial(read_job_view, request, job_id))
    if answer is None or not answer.visible_to(owner):
        raise ProblemError(404, f"job {job_id} not found", code="not_found")
    return answer


class FreshAnswers:
    """A pure ASGI middleware that answers ``GET /jobs/{id}`` from a fresh cache entry without routing it.

    Inside the request gate (which has checked the key and left the owner in the scope's state) and the
    HTTP metrics (which label the answer with the route's template, ``route`` here). The answer is the
    route's, byte for byte: the entry's body or a 304 for a matching ``If-None-Match``, with the same
    headers. Anything else (no entry younger than the TTL, another owner's job, another path or method) goes
    on to the app: the route then reads, refreshes or answers 404 as above. Routing and FastAPI's
    dependencies were most of a 304's cost: under the API load bench the API's share of a core fell from
    0.25 to about 0.15 (docs/design.md, "Live updates").
    """

    def __init__(self, app: ASGIApp, *, views: JobViews, prefix: str, route: object) -> None:
        self.app = app
        self.views = views
        self.route = route
        self._path = re.compile(re.escape(prefix.rstrip("/") + "/") + "(" + ID_PATTERN.strip("^$") + ")")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and (m := self._path.fullmatch(scope["path"]))
        ):
            entry = self.views.fresh(m[1])
            if entry is not None and entry.visible_to(scope.get("state", {}).get(OWNER_STATE_KEY)):
                scope["route"] = self.route
                await _send_answer(entry, scope, send)
                return
        await self.app(scope, receive, send)


async def _send_answer(entry: JobAnswer, scope: Scope, send: Send) -> None:
    """The entry as the route sends it: 304 with its ETag when ``If-None-Match`` names it, else the JSON."""
    if_none_match = next((v for k, v in scope["headers"] if k == b"if-none-match"), b"").decode("latin-1")
    tags = [(b"etag", entry.etag.encode("latin-1")), (b"cache-control", b"no-cache")]
    if etag_matches(if_none_match, entry.etag):
        await send({"type": "http.response.start", "status": 304, "headers": tags})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = [(b"content-length", str(len(entry.body)).encode()), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": [*headers, *tags]})
    await send({"type": "http.response.body", "body": entry.body})


def _retrieve(task: asyncio.Task) -> None:
    """A background refresh that failed: log it (the next request past the TTL reads again)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("reading a job's answer failed: %s", str(exc).splitlines()[0] if str(exc) else repr(exc))


# Every JobViews of this process (one per app; tests build many), cleared by any session's commit.
_caches: weakref.WeakSet[JobViews] = weakref.WeakSet()
_listening = False


def _clear_on_commit(views: JobViews) -> None:
    global _listening
    _caches.add(views)
    if not _listening:
        event.listen(Session, "after_commit", _after_commit)
        _listening = True


def _after_commit(session: Session) -> None:
    for views in list(_caches):
        views.clear()
