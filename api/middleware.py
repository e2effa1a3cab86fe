"""The request gate: the API key is checked, and the body capped, before any route reads a byte of it.

A pure ASGI middleware (Starlette's ``BaseHTTPMiddleware`` would buffer), outermost in the app
(issue 8). FastAPI reads a route's declared body before its dependencies run, so a key checked by a
dependency alone comes too late: a request without a key could make the API hold its whole body first.
Here, in order:

1. Authentication. On every path but the public ones (``/healthz``, the OpenAPI document and its pages)
   the ``Authorization`` header is checked with :func:`api.deps.authenticate`. A missing or wrong key is
   answered 401 at once, without reading or draining the body; the owner id of a good key is left in the
   request state for :data:`api.deps.OwnerDep`.
2. The body cap. An upload (multipart ``POST`` to one of ``upload_routes``) may be ``upload_limit`` bytes;
   every other body ``body_limit``. A ``Content-Length`` over the cap is answered 413 before reading;
   a body without one (chunked) is counted as it streams and answered 413 the moment it passes the cap,
   whatever the route was doing with it (FastAPI would turn the error into a 400).

An answer given before the body is read says ``Connection: close``: the server then hangs up instead of
reading the rest of an upload it refused (uvicorn would otherwise read and discard it to keep the
connection). The client sees the answer and, if it is still sending, a reset.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

from starlette.responses import Response

from api.deps import OWNER_STATE_KEY, KeyRing, authenticate
from api.errors import ProblemError, problem_response

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(Exception):
    """Raised from ``receive`` when the body passes its cap; the gate answers 413 in the route's place."""


class RequestGate:
    """Authenticate, then cap the body, before the app sees the request (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keyring: KeyRing,
        public_paths: Collection[str],
        body_limit: int,
        body_too_large: str,
        upload_routes: Collection[tuple[str, str]],
        upload_limit: int,
        upload_too_large: str,
    ) -> None:
        self.app = app
        self.keyring = keyring
        self.public_paths = frozenset(public_paths)
        self.body_limit = (body_limit, body_too_large, "body_too_large")
        self.upload_routes = frozenset(upload_routes)
        self.upload_limit = (upload_limit, upload_too_large, "upload_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        has_body = _has_body(headers)

        if self.keyring.enabled and scope["path"] not in self.public_paths:
            try:
                owner = authenticate(self.keyring, headers.get(b"authorization", b"").decode("latin-1"))
            except ProblemError as e:
                await _answer(e, has_body, scope, receive, send)
                return
            scope.setdefault("state", {})[OWNER_STATE_KEY] = owner

        limit, detail, code = self._limit_for(scope, headers)
        too_large = ProblemError(413, detail, code=code)
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            await _answer(too_large, has_body, scope, receive, send)
            return
        await self._capped(scope, receive, send, limit, too_large, has_body)

    def _limit_for(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[int, str, str]:
        route = (scope["method"], scope["path"].rstrip("/") or "/")
        content_type = headers.get(b"content-type", b"").lower()
        if route in self.upload_routes and content_type.startswith(b"multipart/form-data"):
            return self.upload_limit
        return self.body_limit

    async def _capped(
        self, scope: Scope, receive: Receive, send: Send, limit: int, error: ProblemError, has_body: bool
    ) -> None:
        """Run the app with a ``receive`` that stops at ``limit`` bytes; then answer 413 in its place.

        An answer the app gives with some of the body unread (a route refusing an upload at its first
        part) says ``Connection: close`` too.
        """
        seen = 0
        unread = has_body  # some of the body has not been handed to the app yet
        passed = False  # the body passed the cap: the app's own answer to the error is replaced
        started = False  # the app's answer (or ours) has begun

        async def capped_receive() -> Message:
            nonlocal seen, unread, passed
            if passed:
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    passed = True
                    raise BodyTooLarge
                unread = unread and message.get("more_body", False)
            else:
                unread = False  # the client is gone
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if passed and not started:
                started = True
                await _answer(error, True, scope, receive, send)
            if passed:
                return  # the app's answer to the exception it was handed: dropped
            if message["type"] == "http.response.start" and unread:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            started = True
            await send(message)

        try:
            await self.app(scope, capped_receive, guarded_send)
        except Exception:
            if not passed:
                raise
            # BodyTooLarge itself, or what the app made of it: the answer is the 413 either way.
        if passed and not started:
            await _answer(error, True, scope, receive, send)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers, names lowercase (ASGI guarantees it), the first of repeated ones."""
    found: dict[bytes, bytes] = {}
    for name, value in scope.get("headers") or ():
        found.setdefault(name, value)
    return found


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length", b"0")
    return b"transfer-encoding" in headers or not length.isdigit() or int(length) > 0


async def _answer(error: ProblemError, unread_body: bool, scope: Scope, receive: Receive, send: Send) -> None:
    """Send ``error`` as problem+json; with a body left unread, ``Connection: close`` (module docstring)."""
    headers = dict(error.headers)
    if unread_body:
        headers["Connection"] = "close"
    response: Response = problem_response(error.status, error.detail, code=error.code, headers=headers)
    await response(scope, receive, send)
