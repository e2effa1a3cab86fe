"""The request gate against a real `jobformer serve` (issue 8): a body of hundreds of MB sent without a
key, past the body cap, or in an unknown multipart part is answered at once, and the API's memory stays
flat while the client is still sending.

The client is a raw socket: it sends the body in 1 MB pieces and, before each one, looks whether the
answer has come; once it has (or the server hung up, which it does after an early answer), it stops and
reads it. The API's resident memory is read from /proc/<pid>/status while the body streams, and its peak
(VmHWM, reset through /proc/<pid>/clear_refs before each request) afterwards: a server that buffered
300 MB would show it in both.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.procs import Proc, free_port, service_env, start_api, wait_for

pytestmark = pytest.mark.integration

KEY = "body-limit-key-0123456789"
MB = 1024 * 1024
BODY_MB = 300
# What the API may grow by while a 300 MB body is refused: generous (sockets, allocator), far below 300 MB.
RSS_BOUND = 64 * MB
MISSING = "0" * 32


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[tuple[Proc, int]]:
    tmp_path = tmp_path_factory.mktemp("body-limits")
    (tmp_path / "data").mkdir()
    port = free_port()
    env = {**os.environ, **service_env(tmp_path, pg_url, JOBFORMER_API_KEYS=KEY)}
    proc = start_api(tmp_path, port, env=env)
    try:
        wait_for(lambda: _healthy(port), "the API's /healthz", timeout=120, procs=(proc,))
        yield proc, port
    finally:
        proc.stop(30)


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def rss(pid: int) -> int:
    return _status_kb(pid, "VmRSS") * 1024


def reset_peak(pid: int) -> bool:
    """Reset the process's peak RSS (VmHWM) to its current RSS; False where the kernel does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def stream(port: int, head: str, pieces: Iterator[bytes], pid: int) -> tuple[bytes, int, int]:
    """Send ``head`` then ``pieces`` until the server answers; returns (its answer, bytes of body sent, the
    largest RSS of ``pid`` seen meanwhile)."""
    sent = 0
    peak = rss(pid)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head.encode("latin-1"))
        for piece in pieces:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # it answered and hung up: the answer is waiting
            sent += len(piece)
            peak = max(peak, rss(pid))
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while (chunk := sock.recv(65536)) and not _complete(answer := answer + chunk):
                pass
    return answer, sent, peak


def _complete(answer: bytes) -> bool:
    """True once ``answer`` holds a whole response with a Content-Length (every problem+json has one)."""
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def chunked(total_mb: int, prefix: bytes = b"", suffix: bytes = b"") -> Iterator[bytes]:
    """A chunked-transfer body of ``total_mb`` MB, 1 MB a chunk, made as it is sent."""
    block = b"x" * MB
    for data in (prefix, *([block] * total_mb), suffix):
        if data:
            yield b"%x\r\n" % len(data) + data + b"\r\n"
    yield b"0\r\n\r\n"


def request_head(method: str, path: str, headers: dict[str, str]) -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return "\r\n".join(lines) + "\r\n\r\n"


MULTIPART = "multipart/form-data; boundary=XyZ"
PART = b'--XyZ\r\nContent-Disposition: form-data; name="%s"; filename="big.csv"\r\n\r\n'
CASES = {
    # no key, a multipart body to a route that declares a JSON body (FastAPI read it whole before: issue 8)
    "no_key_chunked": (
        f"/jobs/{MISSING}/predict",
        {"Content-Type": MULTIPART, "Transfer-Encoding": "chunked"},
        lambda: chunked(BODY_MB, prefix=PART % b"file"),
        "401",
        b"this server needs an API key",
    ),
    "no_key_content_length": (
        f"/jobs/{MISSING}/predict",
        {"Content-Type": MULTIPART, "Content-Length": str(BODY_MB * MB)},
        lambda: iter([b"x" * MB] * BODY_MB),
        "401",
        b"this server needs an API key",
    ),
    "no_key_upload": (
        "/datasets",
        {"Content-Type": MULTIPART, "Transfer-Encoding": "chunked"},
        lambda: chunked(BODY_MB, prefix=PART % b"file"),
        "401",
        b"this server needs an API key",
    ),
    # a key, and a body past the 1 MB cap without Content-Length
    "key_past_the_cap": (
        f"/jobs/{MISSING}/predict",
        {
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
            "Authorization": f"Bearer {KEY}",
        },
        lambda: chunked(BODY_MB, prefix=b'{"texts": ["'),
        "413",
        b"JOBFORMER_MAX_BODY_MB",
    ),
    # a key, and an upload whose one part has a name the route does not take
    "key_unknown_part": (
        "/datasets",
        {"Content-Type": MULTIPART, "Transfer-Encoding": "chunked", "Authorization": f"Bearer {KEY}"},
        lambda: chunked(BODY_MB, prefix=PART % b"extra"),
        "422",
        b"unknown form field 'extra'",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_refused_body_of_hundreds_of_mb_is_answered_at_once_and_memory_stays_flat(api, case):
    proc, port = api
    path, headers, body, status, needle = CASES[case]
    before = rss(proc.pid)
    has_peak = reset_peak(proc.pid)

    answer, sent, peak = stream(port, request_head("POST", path, headers), body(), proc.pid)

    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    assert head.startswith(f"http/1.1 {status} "), (answer[:500], proc.log_tail())
    assert needle in answer
    assert "content-type: application/problem+json" in head
    if status == "401":
        assert 'www-authenticate: bearer realm="jobformer"' in head
    # the API's memory: flat while the body streamed, and no peak in between
    after = rss(proc.pid)
    assert peak - before < RSS_BOUND, f"RSS rose by {(peak - before) / MB:.0f} MB while the body streamed"
    assert after - before < RSS_BOUND, f"RSS rose by {(after - before) / MB:.0f} MB"
    if has_peak:
        hwm = _status_kb(proc.pid, "VmHWM") * 1024
        assert hwm - before < RSS_BOUND, f"peak RSS rose by {(hwm - before) / MB:.0f} MB"
    # answered long before the body ended (socket buffers hold a few MB), and the server hangs up
    assert sent < BODY_MB * MB // 4, f"{sent / MB:.0f} MB sent before the answer"
    assert "connection: close" in head
    # and it still serves
    assert _healthy(port)
