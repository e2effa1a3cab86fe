"""Following a job's live stream (``GET /jobs/{id}/stream``, docs/design.md "Live updates") for
`jobformer submit --follow` and `jobformer logs JOB --follow`.

:func:`job_stream` yields the stream's messages until ``end`` and reconnects with the last ``id:`` it saw
(``Last-Event-ID``) when the connection drops or the server closes the stream early (a restart, or a
watcher too slow to keep up), so nothing is missed and nothing comes twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

# The server sends a heartbeat every 15 s: a read that waits much longer is a dead connection.
READ_TIMEOUT = 60.0
# Reconnections in a row without news before giving up (with the backoff, about two minutes).
MAX_RECONNECTS = 30
BACKOFF_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)


@dataclass
class Message:
    event: str
    data: Any
    id: str | None = None


def parse(lines: Iterator[str]) -> Iterator[Message]:
    """Server-sent events from text lines (comments, the heartbeats, are skipped)."""
    event, data, id_ = "message", [], None
    for line in lines:
        if not line:
            if data:
                yield Message(event, json.loads("\n".join(data)), id_)
            event, data, id_ = "message", [], None
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                id_ = value


def job_stream(client: httpx.Client, job_id: str, *, since: str | None = None) -> Iterator[Message]:
    """The messages of job ``job_id``'s stream until ``end`` (inclusive), across reconnections.

    A snapshot comes first on every connection. Raises ``httpx.HTTPStatusError`` for an answer >= 400
    (its body read) and the last ``httpx.TransportError`` when the server stays unreachable.
    """
    cursor = since
    quiet = 0  # connections in a row that brought nothing but a snapshot
    timeout = httpx.Timeout(10.0, read=READ_TIMEOUT)
    while True:
        headers = {"Last-Event-ID": cursor} if cursor else {}
        try:
            with client.stream("GET", f"/jobs/{job_id}/stream", headers=headers, timeout=timeout) as r:
                if r.status_code >= 400:
                    r.read()
                    r.raise_for_status()
                for message in parse(r.iter_lines()):
                    if message.id:
                        cursor = message.id
                    if message.event != "snapshot":
                        quiet = 0
                    yield message
                    if message.event == "end":
                        return
        except httpx.TransportError:
            if quiet >= MAX_RECONNECTS:
                raise
        quiet += 1
        if quiet > MAX_RECONNECTS:
            raise httpx.RemoteProtocolError(f"the stream of job {job_id} keeps closing before the job ends")
        time.sleep(BACKOFF_SECONDS[min(quiet, len(BACKOFF_SECONDS)) - 1])
