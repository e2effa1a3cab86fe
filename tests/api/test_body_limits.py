"""The request gate (issue 8): the key is checked and the body capped before any of it is read.

The app is called straight through ASGI with a ``receive`` that counts what it hands out, so each test
can say exactly how much of a (lazily made, hundreds of MB) body the app asked for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import anyio
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core.settings import Settings

KEY = "gate-key-0123456789abcdef"
AUTH = [(b"authorization", f"Bearer {KEY}".encode())]
MISSING = "0" * 32
CHUNK = 64 * 1024
HUNDREDS_OF_MB = 300 * 1024 * 1024 // CHUNK  # chunks: 300 MB, never made unless read


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, reads: int) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.reads = reads  # body chunks the app asked for

    def problem(self) -> dict:
        assert self.headers["content-type"] == "application/problem+json", self.headers
        doc = json.loads(self.body)
        assert doc["status"] == self.status
        return doc


def call(
    app,
    method: str,
    path: str,
    chunks: Callable[[], Iterator[bytes]] | list[bytes],
    headers: list[tuple[bytes, bytes]],
    length: int | None = None,
) -> Reply:
    """One request through ASGI; ``chunks`` is the body, made lazily; ``length`` a Content-Length to announce."""
    source = iter(chunks() if callable(chunks) else chunks)
    reads = 0
    pending = next(source, None)
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal reads, pending
        if pending is None:
            return {"type": "http.disconnect"}
        body, pending = pending, next(source, None)
        reads += 1
        return {"type": "http.request", "body": body, "more_body": pending is not None}

    async def send(message: dict) -> None:
        sent.append(message)

    if length is not None:
        headers = [*headers, (b"content-length", str(length).encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    anyio.run(app, scope, receive, send)
    start = sent[0]
    assert start["type"] == "http.response.start"
    body = b"".join(m.get("body", b"") for m in sent[1:])
    head = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return Reply(start["status"], head, body, reads)


def multipart_flood(name: str = "file", chunks: int = HUNDREDS_OF_MB) -> Callable[[], Iterator[bytes]]:
    """A multipart body whose one part, ``name``, is ``chunks`` x 64 KB (made as it is read)."""

    def make() -> Iterator[bytes]:
        yield f'--XyZ\r\nContent-Disposition: form-data; name="{name}"; filename="big.csv"\r\n\r\n'.encode()
        block = b"ham,hello there\n" * (CHUNK // 16)
        for _ in range(chunks):
            yield block
        yield b"\r\n--XyZ--\r\n"

    return make


def json_flood(chunks: int = HUNDREDS_OF_MB) -> Callable[[], Iterator[bytes]]:
    def make() -> Iterator[bytes]:
        yield b'{"texts": ["'
        for _ in range(chunks):
            yield b"x" * CHUNK
        yield b'"]}'

    return make


MULTIPART = [(b"content-type", b"multipart/form-data; boundary=XyZ")]
JSON = [(b"content-type", b"application/json")]


@pytest.fixture
def keyed_app(make_settings: Callable[..., Settings]):
    return create_app(make_settings(api_keys=KEY))


@pytest.fixture
def open_app(settings: Settings):
    return create_app(settings)


# --- the key first ---------------------------------------------------------------------------------------


BODY_ROUTES = [
    ("POST", f"/jobs/{MISSING}/predict"),
    ("POST", "/datasets"),
    ("POST", "/jobs"),
    ("POST", f"/jobs/{MISSING}/cancel"),
    ("POST", "/no/such/endpoint"),
]


@pytest.mark.parametrize("method,path", BODY_ROUTES)
@pytest.mark.parametrize("announce_length", [False, True], ids=["chunked", "content_length"])
def test_no_key_is_401_before_any_of_the_body_is_read(keyed_app, method, path, announce_length):
    flood = multipart_flood()
    length = sum(map(len, flood())) if announce_length else None
    headers = MULTIPART if announce_length else [*MULTIPART, (b"transfer-encoding", b"chunked")]
    r = call(keyed_app, method, path, flood, headers, length=length)
    assert r.status == 401
    assert r.reads == 0
    assert r.problem()["detail"] == "this server needs an API key: send 'Authorization: Bearer <key>'"
    assert r.headers["www-authenticate"] == 'Bearer realm="jobformer"'
    assert r.headers["connection"] == "close"  # the server hangs up rather than read the rest


@pytest.mark.parametrize(
    "header,detail",
    [
        (b"Bearer wrong-key", "invalid API key"),
        (b"Basic YWxpY2U6eA==", "malformed Authorization header: expected 'Bearer <key>'"),
    ],
)
def test_a_wrong_key_is_401_before_the_body_too(keyed_app, header, detail):
    headers = [*JSON, (b"authorization", header), (b"transfer-encoding", b"chunked")]
    r = call(keyed_app, "POST", f"/jobs/{MISSING}/predict", json_flood(), headers)
    assert (r.status, r.reads, r.problem()["detail"]) == (401, 0, detail)


def test_a_request_without_a_body_keeps_its_connection(keyed_app):
    r = call(keyed_app, "GET", "/jobs", [], [])
    assert r.status == 401
    assert "connection" not in r.headers


@pytest.mark.parametrize("path", ["/healthz", "/openapi.json", "/docs", "/redoc"])
def test_public_paths_need_no_key(keyed_app, path):
    assert call(keyed_app, "GET", path, [], []).status == 200


def test_the_gate_hands_the_owner_to_the_routes(make_settings, spam_csv):
    with TestClient(create_app(make_settings(api_keys=f"{KEY},other-key-0123456789"))) as c:
        d = c.post(
            "/datasets", files={"file": ("a.csv", spam_csv)}, headers={"Authorization": f"Bearer {KEY}"}
        )
        assert d.status_code == 201, d.text
        mine = c.get("/datasets", headers={"Authorization": f"Bearer {KEY}"}).json()
        theirs = c.get("/datasets", headers={"Authorization": "Bearer other-key-0123456789"}).json()
    assert (mine["count"], theirs["count"]) == (1, 0)


# --- the body cap ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keyed", [True, False], ids=["key", "no_auth"])
@pytest.mark.parametrize(
    "method,path,headers",
    [
        ("POST", f"/jobs/{MISSING}/predict", JSON),
        ("POST", f"/jobs/{MISSING}/predict", MULTIPART),  # multipart, but not an upload route
        ("POST", "/jobs", JSON),
    ],
)
def test_a_chunked_body_past_the_cap_is_413_as_it_streams(keyed_app, open_app, keyed, method, path, headers):
    app = keyed_app if keyed else open_app
    headers = [*headers, (b"transfer-encoding", b"chunked"), *(AUTH if keyed else [])]
    r = call(app, method, path, json_flood(), headers)
    doc = r.problem()
    assert r.status == 413, doc  # not FastAPI's 400 "There was an error parsing the body"
    assert doc["code"] == "body_too_large"
    assert "larger than the limit of 1 MB" in doc["detail"] and "JOBFORMER_MAX_BODY_MB" in doc["detail"]
    assert r.reads <= 1 + 1024 * 1024 // CHUNK + 1  # the 1 MB cap, and the chunk that passed it
    assert r.headers["connection"] == "close"


def test_a_route_that_takes_no_body_answers_without_reading_it(keyed_app):
    headers = [*JSON, *AUTH, (b"transfer-encoding", b"chunked")]
    r = call(keyed_app, "POST", f"/jobs/{MISSING}/cancel", json_flood(), headers)
    assert (r.status, r.reads) == (404, 0)
    assert r.headers["connection"] == "close"  # the rest is not drained either


def test_an_announced_body_past_the_cap_is_413_unread(keyed_app):
    flood = json_flood(chunks=32)  # 2 MB
    r = call(
        keyed_app, "POST", f"/jobs/{MISSING}/predict", flood, [*JSON, *AUTH], length=sum(map(len, flood()))
    )
    assert (r.status, r.reads, r.problem()["code"]) == (413, 0, "body_too_large")


def test_the_cap_is_a_setting(make_settings, spam_csv):
    app = create_app(make_settings(max_body_mb="2"))
    body = json_flood(chunks=24)  # 1.5 MB: past the default, inside 2 MB
    r = call(app, "POST", f"/jobs/{MISSING}/predict", body, [*JSON, (b"transfer-encoding", b"chunked")])
    assert r.status == 422, r.body  # read whole and validated: the text is too long for predict
    assert "texts[0] is longer than 100000 characters" in r.body.decode()
    assert r.reads == 26


def test_bodies_under_the_cap_reach_their_route(open_app):
    r = call(open_app, "POST", f"/jobs/{MISSING}/predict", [b'{"texts": ["hi"]}'], JSON)
    assert r.status == 404 and r.problem()["detail"] == f"job {MISSING} not found"
    assert "connection" not in r.headers  # read to its end: the connection can serve the next request


def test_uploads_keep_the_upload_limit(make_settings):
    app = create_app(make_settings(max_upload_mb="3"))
    # 2 MB: past the small cap, inside the upload limit
    r = call(
        app, "POST", "/datasets", multipart_flood(chunks=32), [*MULTIPART, (b"transfer-encoding", b"chunked")]
    )
    assert r.status == 201, r.body
    assert json.loads(r.body)["size_bytes"] == 32 * CHUNK
    # 300 MB: stopped at the upload limit while streaming
    r = call(app, "POST", "/datasets", multipart_flood(), [*MULTIPART, (b"transfer-encoding", b"chunked")])
    doc = r.problem()
    assert (r.status, doc["code"]) == (413, "upload_too_large")
    assert "larger than the limit of 3 MB" in doc["detail"]
    assert r.reads <= 1 + 3 * 1024 * 1024 // CHUNK + 2


# --- unknown multipart parts -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/datasets", "/jobs"])
def test_an_unknown_part_is_refused_at_its_headers(open_app, settings, path):
    r = call(
        open_app,
        "POST",
        path,
        multipart_flood(name="extra"),
        [*MULTIPART, (b"transfer-encoding", b"chunked")],
    )
    doc = r.problem()
    assert r.status == 422
    assert doc["detail"].startswith("unknown form field 'extra': this endpoint takes only 'file'")
    assert doc["errors"] == [
        {"loc": ["body", "extra"], "msg": "unknown field; remove it", "type": "extra_forbidden"}
    ]
    assert r.reads == 1  # its headers, and nothing of its 300 MB
    assert r.headers["connection"] == "close"
    tmp = settings.data_dir / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def test_an_unknown_part_after_the_file_is_refused_and_the_file_dropped(open_app, settings, spam_csv):
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'
        + spam_csv
        + b'\r\n--XyZ\r\nContent-Disposition: form-data; name="comment"\r\n\r\nhello\r\n--XyZ--\r\n'
    )
    r = call(open_app, "POST", "/datasets", [body], MULTIPART)
    assert r.status == 422 and "unknown form field 'comment'" in r.problem()["detail"]
    tmp = settings.data_dir / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def test_part_headers_are_bounded(open_app):
    # python-multipart refuses a header line past 4 KB: a part's headers never pile up in memory.
    def body() -> Iterator[bytes]:
        yield b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="'
        for _ in range(HUNDREDS_OF_MB):
            yield b"a" * CHUNK

    r = call(open_app, "POST", "/datasets", body, [*MULTIPART, (b"transfer-encoding", b"chunked")])
    assert r.status == 422
    assert r.problem()["detail"] == "malformed multipart body: Maximum header size exceeded"
    assert r.reads == 2
