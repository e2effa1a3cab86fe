"""Live updates of a job: one reader per watched job, fanned out to every stream that watches it.

``GET /jobs/{id}/stream`` (api/routes/stream.py) hands its connection to :meth:`StreamHub.follow`. The
first watcher of a job starts a :class:`Reader` task that reads, every ``interval`` seconds, the job row
and the metric points and events above its cursor, in one short session in a worker thread, and puts what
it found on each watcher's queue; the last watcher leaving stops it. A watcher that joins a running
reader, or resumes from an older ``Last-Event-ID``, reads the rows between its own cursor and the
reader's once, then follows the reader, skipping ids it has sent. The message format, the cursor and why
"every id above the cursor" has no gap: docs/design.md, "Live updates".
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sse_starlette import ServerSentEvent

from api.jobviews import JobViews
from api.model_runs import test_evaluation_summary
from api.schemas import JobPublic, MetricPointPublic
from api.views import event_public, finite, job_public
from core.db.models import Event, Job, JobStatus, MetricPoint
from core.db.session import get_sessionmaker

log = logging.getLogger(__name__)

# How often a reader looks for new rows ("at most a few times a second").
STREAM_POLL_SECONDS = 0.5
# Readers' ticks running at once in worker threads: each holds a database session for one tick only, so
# streams never take the sessions the routes need (api/deps.py, API_SESSIONS).
STREAM_READERS = 4
# Rows read per query, and so the most points in one ``metrics`` message.
BATCH = 1000
# Messages a slow watcher may have waiting; one more and its stream is closed: it reconnects with its
# Last-Event-ID and reads what it missed, instead of the API holding an unbounded backlog for it.
QUEUE_LIMIT = 1000

ENDED = frozenset({JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value})


class BadCursor(ValueError):
    """A ``Last-Event-ID`` that is not ``<metric_id>:<event_id>``."""


@dataclass(frozen=True, order=True)
class Cursor:
    """The last metric point id and the last event id sent: the ``id:`` of the stream's messages."""

    metric: int = 0
    event: int = 0

    def __str__(self) -> str:
        return f"{self.metric}:{self.event}"

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        if text is None or not text.strip():
            return cls()
        metric, sep, event = text.strip().partition(":")
        if not (sep and metric.isdigit() and event.isdigit() and len(text) <= 40):
            raise BadCursor(text)
        return cls(int(metric), int(event))

    def max(self, other: Cursor) -> Cursor:
        return Cursor(max(self.metric, other.metric), max(self.event, other.event))


@dataclass
class Found:
    """What one read found: the job row's public view (None: the job is gone), and the new rows by id."""

    job: JobPublic | None
    points: list[tuple[int, dict[str, Any] | None]]  # None: a point without a finite value
    events: list[tuple[int, dict[str, Any]]]
    owner: str | None = None  # the job's

    @property
    def more(self) -> bool:
        """A query hit its limit: there are more rows to read at once."""
        return len(self.points) == BATCH or len(self.events) == BATCH

    @property
    def ended(self) -> bool:
        """The job has ended (or is gone) and every row it wrote has been read."""
        return (self.job is None or self.job.status in ENDED) and not self.more


def read_since(session: Session, job_id: str, since: Cursor, upto: Cursor | None = None) -> Found:
    """The job, then its points and events with ids above ``since`` (and at most ``upto``), by id.

    The job row is read first: when it has ended, every row it wrote before its end is read after it.
    """
    row = session.get(Job, job_id, populate_existing=True)
    job = job_public(row) if row is not None else None
    if job is not None:  # as GET /jobs/{id} answers it: the answer cache keeps this view for it
        job.test_evaluation = test_evaluation_summary(session, row)
    where = [MetricPoint.job_id == job_id, MetricPoint.id > since.metric]
    if upto is not None:
        where.append(MetricPoint.id <= upto.metric)
    points = []
    for p in session.scalars(select(MetricPoint).where(*where).order_by(MetricPoint.id).limit(BATCH)):
        value = finite(p.value)  # JSON has no NaN/inf; the cursor still passes the point
        point = None
        if value is not None:  # as GET /jobs/{id}/metrics answers it
            public = MetricPointPublic(
                step=p.step, epoch=p.epoch, split=p.split, name=p.name, value=value, time=p.time
            )
            point = public.model_dump(mode="json")
        points.append((p.id, point))
    where = [Event.job_id == job_id, Event.id > since.event]
    if upto is not None:
        where.append(Event.id <= upto.event)
    events = [
        (e.id, event_public(e).model_dump(mode="json", exclude={"id"}))
        for e in session.scalars(select(Event).where(*where).order_by(Event.id).limit(BATCH))
    ]
    return Found(job, points, events, row.owner if row is not None else None)


def progress_of(job: JobPublic) -> dict[str, Any]:
    """The ``progress`` message's data."""
    return job.model_dump(mode="json", include={"status", "progress", "metrics"})


def read_top(session: Session, job_id: str) -> tuple[Cursor, dict[str, Any] | None]:
    """Where a new reader starts: the job's newest point and event ids now, and its progress now."""
    row = session.get(Job, job_id, populate_existing=True)
    top = Cursor(
        session.scalar(select(func.max(MetricPoint.id)).where(MetricPoint.job_id == job_id)) or 0,
        session.scalar(select(func.max(Event.id)).where(Event.job_id == job_id)) or 0,
    )
    return top, (progress_of(job_public(row)) if row is not None else None)


@dataclass
class Message:
    """One thing to send: ``metrics`` (points by id), ``event`` (one, by id), ``progress`` or ``end``."""

    kind: str
    data: Any
    ids: list[int] = field(default_factory=list)
    _encoded: str | None = field(default=None, repr=False, compare=False)

    def encoded(self) -> str:
        """The whole message's ``data:`` as JSON, encoded once for all the watchers it goes to."""
        if self._encoded is None:
            if self.kind == "metrics":
                self._encoded = json.dumps({"points": [p for p in self.data if p is not None]})
            elif self.kind == "end":
                self._encoded = self.data.model_dump_json() if self.data is not None else "null"
            else:
                self._encoded = json.dumps(self.data)
        return self._encoded


class Watcher:
    """One stream's queue. ``None`` on it closes the stream (the reader stopped, or the watcher fell
    too far behind): the client reconnects with its Last-Event-ID."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message | None] = asyncio.Queue(QUEUE_LIMIT)

    def put(self, message: Message | None) -> bool:
        try:
            self.queue.put_nowait(message)
            return True
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)
            return False


class Reader:
    """The one reader of a job: its cursor, the last progress it sent, its watchers."""

    def __init__(self, job_id: str, cursor: Cursor) -> None:
        self.job_id = job_id
        self.cursor = cursor
        self.ready = asyncio.Event()  # the cursor is where the job's rows are now: messages follow it
        self.last_progress: dict[str, Any] | None = None
        self.watchers: set[Watcher] = set()
        self.task: asyncio.Task[None] | None = None

    def advance(self, found: Found) -> list[Message]:
        """The messages for what ``found`` holds, in order; moves the cursor past it."""
        messages = []
        points = [(i, p) for i, p in found.points if i > self.cursor.metric]
        if points:
            messages.append(Message("metrics", [p for _, p in points], [i for i, _ in points]))
            self.cursor = Cursor(points[-1][0], self.cursor.event)
        for i, e in found.events:
            if i > self.cursor.event:
                messages.append(Message("event", e, [i]))
                self.cursor = Cursor(self.cursor.metric, i)
        if found.job is not None and not found.more:
            progress = progress_of(found.job)
            if progress != self.last_progress:
                self.last_progress = progress
                messages.append(Message("progress", progress))
        if found.ended:
            messages.append(Message("end", found.job))
        return messages


class StreamHub:
    """The readers of the jobs being watched in this API process (module docstring)."""

    def __init__(
        self, database_url: str, *, interval: float = STREAM_POLL_SECONDS, views: JobViews | None = None
    ) -> None:
        self.database_url = database_url
        self.interval = interval
        self.views = views  # where each tick's view of a job goes for GET /jobs/{id} (api/jobviews.py)
        self.readers: dict[str, Reader] = {}
        self.readers_started = 0  # how many reader tasks ever started (tests count them)
        self.ticks = 0  # reads made by readers (each: one job lookup, one points and one events query)
        self._limiter: anyio.CapacityLimiter | None = None

    async def _read(self, job_id: str, since: Cursor | None, upto: Cursor | None = None) -> Any:
        """``read_since`` (or, with ``since`` None, ``read_top``) in a worker thread, its own session."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(STREAM_READERS)

        def read() -> Any:
            with get_sessionmaker(self.database_url)() as session:
                return (
                    read_top(session, job_id) if since is None else read_since(session, job_id, since, upto)
                )

        return await anyio.to_thread.run_sync(read, limiter=self._limiter)

    # --- the reader ---------------------------------------------------------------------------------

    def _join(self, job_id: str, watcher: Watcher) -> Reader:
        """Add ``watcher`` to the job's reader, starting one if none runs. No await, so no message is
        put between the watcher's joining and its queue's receiving: once the reader is ready, every
        message on the queue covers rows above the reader's cursor of that moment or later."""
        reader = self.readers.get(job_id)
        if reader is None:
            # It starts where the job's rows are now, never at a client's cursor (which may be ahead).
            reader = self.readers[job_id] = Reader(job_id, Cursor())
            reader.task = asyncio.get_running_loop().create_task(self._run(reader))
            self.readers_started += 1
        reader.watchers.add(watcher)
        return reader

    def _leave(self, job_id: str, watcher: Watcher) -> None:
        reader = self.readers.get(job_id)
        if reader is None or watcher not in reader.watchers:
            return
        reader.watchers.discard(watcher)
        if not reader.watchers:
            del self.readers[job_id]
            if reader.task is not None:
                reader.task.cancel()

    async def _run(self, reader: Reader) -> None:
        try:
            while not reader.ready.is_set():
                try:
                    reader.cursor, reader.last_progress = await self._read(reader.job_id, None)
                    reader.ready.set()
                except SQLAlchemyError as exc:
                    log.warning("stream of job %s: read failed: %s", reader.job_id, str(exc).splitlines()[0])
                    await asyncio.sleep(self.interval)
            while reader.watchers:
                views = self.views
                ticket = views.ticket() if views is not None else None
                try:
                    found = await self._read(reader.job_id, reader.cursor)
                except SQLAlchemyError as exc:  # the database restarts: try again next tick
                    log.warning("stream of job %s: read failed: %s", reader.job_id, str(exc).splitlines()[0])
                    await asyncio.sleep(self.interval)
                    continue
                self.ticks += 1
                if views and ticket and found.job is not None and found.job.status != JobStatus.QUEUED:
                    # GET /jobs/{id} answers this view too; a queued job's also shows its place in the
                    # queue, which this read leaves out (the route reads that itself).
                    views.store(reader.job_id, found.owner, found.job, ticket)
                messages = reader.advance(found)
                for watcher in list(reader.watchers):
                    for m in messages:
                        if not watcher.put(m):
                            reader.watchers.discard(watcher)  # it was told to reconnect
                            break
                if found.ended:
                    break
                if not found.more:
                    await asyncio.sleep(self.interval)
        except Exception:
            log.exception(
                "stream of job %s: the reader stopped", reader.job_id, extra={"job_id": reader.job_id}
            )
        finally:
            reader.ready.set()  # a reader that failed before it was ready lets its watchers go
            if self.readers.get(reader.job_id) is reader:
                del self.readers[reader.job_id]
            for watcher in reader.watchers:
                watcher.put(None)

    # --- one stream ---------------------------------------------------------------------------------

    async def follow(
        self, job_id: str, snapshot: JobPublic, since: Cursor
    ) -> AsyncIterator[ServerSentEvent | bytes]:
        """The stream of one watcher: the snapshot, what it missed since ``since``, then the reader's."""
        yield ServerSentEvent(snapshot.model_dump_json(), event="snapshot")
        watcher = Watcher()
        sent = since
        try:
            reader = self._join(job_id, watcher)
            await reader.ready.wait()
            reader_at = reader.cursor  # the queue holds every message above it (or more: deduplicated)
            if reader.last_progress is not None and reader.last_progress != progress_of(snapshot):
                # The reader saw a change after this snapshot was taken, and told its watchers before
                # this one joined.
                yield ServerSentEvent(json.dumps(reader.last_progress), event="progress")
            while sent.metric < reader_at.metric or sent.event < reader_at.event:
                # Rows the reader passed before this watcher joined: read once, by this watcher alone.
                found = await self._read(job_id, sent, upto=reader_at)
                found.job = None  # its progress and end come from the reader
                batch = [m for m in Reader(job_id, sent).advance(found) if m.kind != "end"]
                for m in batch:
                    event, sent = _encode(m, sent)
                    if event is not None:
                        yield event
                if not (found.points or found.events):
                    break
            while True:
                # What the reader queued since the last send goes out as one chunk: one socket write
                # per message was most of what a stream cost the API (docs/design.md, "Live updates").
                messages = [await watcher.queue.get()]
                while not (_last(messages[-1]) or watcher.queue.empty()):
                    messages.append(watcher.queue.get_nowait())
                chunk = b""
                for message in messages:
                    if message is not None:
                        event, sent = _encode(message, sent)
                        chunk += event.encode() if event is not None else b""
                if chunk:
                    yield chunk
                if _last(messages[-1]):
                    return  # the end, or the reader stopped: the client reconnects with its cursor
        finally:
            self._leave(job_id, watcher)


def _last(m: Message | None) -> bool:
    """Whether a stream ends after ``m``: the job's end, or None (the reader stopped)."""
    return m is None or m.kind == "end"


def _encode(m: Message, sent: Cursor) -> tuple[ServerSentEvent | None, Cursor]:
    """The event for ``m`` (None: nothing to send) and the cursor after it. Points and events at or
    below ``sent`` are dropped: a watcher that resumed ahead of its reader has sent them."""
    if m.kind == "metrics":
        if max(m.ids) <= sent.metric:
            return None, sent
        points = [p for i, p in zip(m.ids, m.data, strict=True) if i > sent.metric and p is not None]
        whole = min(m.ids) > sent.metric  # as every watcher that is not behind gets it: encoded once
        sent = Cursor(max(m.ids), sent.event)
        if not points:
            return None, sent  # only values without a finite number: the cursor passes them
        data = m.encoded() if whole else json.dumps({"points": points})
        return ServerSentEvent(data, event="metrics", id=str(sent)), sent
    if m.kind == "event":
        if m.ids[0] <= sent.event:
            return None, sent
        sent = Cursor(sent.metric, m.ids[0])
        return ServerSentEvent(m.encoded(), event="event", id=str(sent)), sent
    return ServerSentEvent(m.encoded(), event=m.kind), sent
