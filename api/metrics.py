"""What ``GET /metrics`` answers: Prometheus text from one registry per app (docs/design.md, "Operators").

Two sources:

- :class:`HttpMetrics`, a pure ASGI middleware timing every request that reaches the app (the request
  gate's 401 and 413 answers are not timed), labelled by method, the *route template*
  (``/jobs/{job_id}``, never the raw path: one series per route, not per job) and status. The time is
  to the start of the answer, so a stream counts its time to first byte, not its length.
- :class:`JobsCollector`, read at scrape time from a snapshot at most ``SNAPSHOT_SECONDS`` old: jobs by
  state and queue (one ``GROUP BY``), the running jobs' tokens/s and loss (one query), the durations of
  jobs that ended (only the rows that ended since the last snapshot), and per queue the messages waiting
  in Redis and the workers online. Scrapes between two snapshots cost nothing; requests other than
  ``/metrics`` never touch the database for it.

Each API process has its own registry: with ``serve --workers N`` a scrape sees one process's HTTP
latencies (the job figures come from the database and are the same in every process).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import func, select
from starlette.routing import Mount

from api.middleware import ASGIApp, Message, Receive, Scope, Send
from core.db.models import ACTIVE_STATES, Job, JobStatus
from core.db.session import get_sessionmaker
from core.settings import Settings

log = logging.getLogger(__name__)

SNAPSHOT_SECONDS = 5.0
# Ends committed late (a worker's retried write) are still counted once: each snapshot looks this far
# back before the newest end it has seen, and remembers the ids it counted in that window.
LATE_END_SECONDS = 120.0
DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600, 24 * 3600)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
UNMATCHED = "<unmatched>"


def make_registry(settings: Settings) -> tuple[CollectorRegistry, Histogram]:
    """A registry with the jobs collector and the HTTP latency histogram (for the middleware)."""
    registry = CollectorRegistry(auto_describe=True)
    latency = Histogram(
        "jobformer_http_request_duration_seconds",
        "Time from a request reaching the app to the start of its answer, by route template.",
        ["method", "route", "status"],
        buckets=HTTP_BUCKETS,
        registry=registry,
    )
    registry.register(JobsCollector(settings))
    return registry, latency


class HttpMetrics:
    """Times each HTTP request to the start of its answer; labels it by its route's template."""

    def __init__(self, app: ASGIApp, *, latency: Histogram) -> None:
        self.app = app
        self.latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        observed = False

        async def timed_send(message: Message) -> None:
            nonlocal observed
            if message["type"] == "http.response.start" and not observed:
                observed = True
                self._observe(scope, message["status"], time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            if not observed:  # the app raised before answering (the server answers 500)
                self._observe(scope, 500, time.perf_counter() - start)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        self.latency.labels(scope["method"], route_template(scope), str(status)).observe(seconds)


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/jobs/{job_id}``); a mount's prefix + ``/{path}``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    if isinstance(route, Mount):
        return path + "/{path}"
    return path or "/"


class JobsCollector:
    """The job, queue and worker figures of a scrape, from a snapshot at most ``SNAPSHOT_SECONDS`` old."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._taken: float | None = None  # monotonic time of the last snapshot
        self._families: list[Metric] = []
        # Cumulative durations of ended jobs: (queue, status) -> [bucket counts..., +Inf count], sum.
        self._durations: dict[tuple[str, str], tuple[list[int], float]] = {}
        self._counted: dict[str, datetime] = {}  # ids counted within LATE_END_SECONDS of the newest end
        self._newest_end: datetime | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # families vary with the data; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            if self._taken is None or time.monotonic() - self._taken >= SNAPSHOT_SECONDS:
                try:
                    self._families = self._snapshot()
                    self._taken = time.monotonic()
                except Exception as exc:  # noqa: BLE001 - a scrape must answer; up says what failed
                    log.warning("metrics: snapshot failed: %s", str(exc).splitlines()[0])
                    self._families = [_up(0)]
            return list(self._families)

    def _snapshot(self) -> list[Metric]:
        queues = list(self.settings.allowed_queues)
        session = get_sessionmaker(self.settings.resolved_database_url)()
        try:
            counts = session.execute(
                select(Job.queue, Job.status, func.count()).group_by(Job.queue, Job.status)
            ).all()
            running = session.execute(
                select(Job.id, Job.queue, Job.progress, Job.metrics).where(
                    Job.status.in_([JobStatus.RUNNING, JobStatus.CANCELLING])
                )
            ).all()
            self._add_durations(session)
        finally:
            session.close()
        queues += sorted({q for q, _, _ in counts} - set(queues))
        return [
            _up(1),
            _jobs_family(counts, queues),
            *_running_families(running),
            self._durations_family(),
            *_queue_families(self.settings, queues),
        ]

    def _add_durations(self, session: Any) -> None:
        query = select(Job.id, Job.queue, Job.status, Job.started_at, Job.finished_at).where(
            Job.finished_at.is_not(None), Job.status.not_in(list(ACTIVE_STATES))
        )
        if self._newest_end is not None:
            query = query.where(Job.finished_at >= self._newest_end - timedelta(seconds=LATE_END_SECONDS))
        for job_id, queue, status, started, finished in session.execute(query):
            if job_id in self._counted:
                continue
            self._counted[job_id] = finished
            if self._newest_end is None or finished > self._newest_end:
                self._newest_end = finished
            if started is None:
                continue  # cancelled while queued: it never ran
            seconds = max(0.0, (finished - started).total_seconds())
            buckets, total = self._durations.get((queue, status), ([0] * (len(DURATION_BUCKETS) + 1), 0.0))
            for i, bound in enumerate((*DURATION_BUCKETS, float("inf"))):
                if seconds <= bound:
                    buckets[i] += 1
            self._durations[(queue, status)] = (buckets, total + seconds)
        if self._newest_end is not None:
            horizon = self._newest_end - timedelta(seconds=LATE_END_SECONDS)
            self._counted = {k: v for k, v in self._counted.items() if v >= horizon}

    def _durations_family(self) -> Metric:
        family = HistogramMetricFamily(
            "jobformer_job_duration_seconds",
            "Time from a job's first start to its end, of the jobs that ended since this API process started "
            "(their first snapshot counts every earlier end too).",
            labels=["queue", "status"],
        )
        for (queue, status), (buckets, total) in sorted(self._durations.items()):
            bounds = [*(str(float(b)) for b in DURATION_BUCKETS), "+Inf"]
            family.add_metric([queue, status], list(zip(bounds, buckets, strict=True)), total)
        return family


def _up(value: int) -> Metric:
    family = GaugeMetricFamily(
        "jobformer_metrics_up", "1 when the last snapshot of the database and broker figures succeeded."
    )
    family.add_metric([], value)
    return family


def _jobs_family(counts: list[Any], queues: list[str]) -> Metric:
    family = GaugeMetricFamily("jobformer_jobs", "Jobs by queue and state.", labels=["queue", "status"])
    found = {(q, s): n for q, s, n in counts}
    for queue in queues:
        for status in JobStatus:
            family.add_metric([queue, status.value], found.get((queue, status.value), 0))
    return family


def _running_families(running: list[Any]) -> list[Metric]:
    speed = GaugeMetricFamily(
        "jobformer_job_tokens_per_second", "A running job's training speed.", labels=["job_id", "queue"]
    )
    loss = GaugeMetricFamily(
        "jobformer_job_train_loss", "A running job's latest training loss.", labels=["job_id", "queue"]
    )
    for job_id, queue, progress, metrics in running:
        tokens = (progress or {}).get("tokens_per_second")
        if tokens is not None:
            speed.add_metric([job_id, queue], float(tokens))
        value = (metrics or {}).get("train_loss", (progress or {}).get("train_loss"))
        if value is not None:
            loss.add_metric([job_id, queue], float(value))
    return [speed, loss]


def _queue_families(settings: Settings, queues: list[str]) -> list[Metric]:
    import broker  # the API's producer side; redis calls stay out of import time

    depth = GaugeMetricFamily(
        "jobformer_queue_messages",
        "Job messages waiting in a queue's Redis list and its capacity queues' (<queue>.p<N>, .m<T>).",
        labels=["queue"],
    )
    workers = GaugeMetricFamily("jobformer_workers_online", "Workers consuming a queue.", labels=["queue"])
    client = broker.redis_client(settings=settings)
    for queue in queues:
        pipe = client.pipeline(transaction=False)  # one round trip for the queue and its capacity queues
        for name in broker.capacity_queues_present(client, queue):
            pipe.llen(name)
        depth.add_metric([queue], sum(pipe.execute()))
        online = broker.workers_online(queue, settings=settings)
        if online is not None:
            workers.add_metric([queue], online)
    return [depth, workers]
