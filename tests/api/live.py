"""A real HTTP server for the stream tests (uvicorn in a thread: an SSE stream never ends while its job
runs, so the in-process TestClient, which waits for the whole answer, cannot follow one), and a stream
reader that hands the parsed messages over a queue."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

WAIT = 30.0  # seconds before a test that waits for a message gives up (a hang guard, not a timing check)


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Run ``app`` on a free loopback port; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=WAIT)


@dataclass
class Sse:
    event: str
    data: Any
    id: str | None


def parse(lines: Iterator[str]) -> Iterator[Sse]:
    """Server-sent events from text lines (the WHATWG format; comments, the heartbeats, are skipped)."""
    event, data, id_ = "message", [], None
    for line in lines:
        if not line:
            if data:
                yield Sse(event, json.loads("\n".join(data)), id_)
            event, data, id_ = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            id_ = value


class Follower:
    """Follows one stream in a thread; ``next()`` hands its messages over in order, ``closed`` when done."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, *, hang_up_after: int = 0) -> None:
        self.messages: queue.Queue[Sse | None] = queue.Queue()
        self.status: int | None = None
        self.body: Any = None
        self.hang_up_after = hang_up_after  # messages; 0: follow to the end
        self._thread = threading.Thread(target=self._run, args=(url, headers or {}), daemon=True)
        self._thread.start()

    def _run(self, url: str, headers: dict[str, str]) -> None:
        try:
            with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(WAIT)) as r:
                self.status = r.status_code
                if r.status_code != 200:
                    self.body = json.loads(r.read())
                    return
                for n, message in enumerate(parse(r.iter_lines()), 1):
                    self.messages.put(message)
                    if n == self.hang_up_after:
                        return
        finally:
            self.messages.put(None)

    def next(self) -> Sse | None:
        """The next message; None when the stream has closed."""
        return self.messages.get(timeout=WAIT)

    def until(self, event: str) -> list[Sse]:
        """Every message up to and including the first ``event``."""
        got = []
        while (m := self.next()) is not None:
            got.append(m)
            if m.event == event:
                return got
        raise AssertionError(f"the stream closed before {event!r}: {[g.event for g in got]}")

    def rest(self) -> list[Sse]:
        """Every message until the stream closes."""
        got = []
        while (m := self.next()) is not None:
            got.append(m)
        return got

    def join(self) -> None:
        self._thread.join(timeout=WAIT)
        assert not self._thread.is_alive(), "the stream did not close"
