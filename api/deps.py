"""Dependencies shared by the routes: settings, a database session, and the caller's identity.

Access (issue 4): when ``settings.api_keys`` is set, every route but ``/healthz`` needs
``Authorization: Bearer <key>``. Keys live in memory only as SHA-256 digests and a presented key is
compared, hashed, against every one with :func:`hmac.compare_digest` (constant time, no early exit). The
owner recorded on datasets and jobs is a short hash id of the key, never the key itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.errors import ProblemError
from core.db.session import get_sessionmaker
from core.settings import Settings

log = logging.getLogger(__name__)


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def owner_id(key_digest: bytes) -> str:
    """The short, stable id stored as ``owner``: 16 hex digits of a hash of the key's digest."""
    return hashlib.sha256(b"jobformer-owner:" + key_digest).hexdigest()[:16]


class KeyRing:
    """The accepted API keys, hashed. Empty: authentication is off (local use)."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [hash_key(k) for k in keys if k]

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def owner_for(self, presented: str) -> str | None:
        """The owner id for ``presented`` if it is one of the keys, else None; constant time per key."""
        digest = hash_key(presented)
        match = None
        for known in self._digests:
            if hmac.compare_digest(digest, known):
                match = known
        return owner_id(match) if match is not None else None


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_db(request: Request) -> Iterator[Session]:
    """One session per request; routes commit their own short transactions."""
    settings: Settings = request.app.state.settings
    session = get_sessionmaker(settings.resolved_database_url)()
    try:
        yield session
    except BaseException:
        # A failed rollback (the database went away) must not replace the route's own error.
        with contextlib.suppress(DBAPIError):
            session.rollback()
        raise
    finally:
        try:
            session.close()
        except DBAPIError as exc:
            # This runs after the response was sent: the database went away in between (a restart).
            # Raising here cannot change the answer; it would only make the server drop the client's
            # keep-alive connection. SQLAlchemy has invalidated the dead connection already.
            log.warning("closing the request's database session failed: %s", str(exc).splitlines()[0])


# Under load, sync routes with a request-scoped session deadlock: every threadpool token is held by a
# route waiting for a pooled connection, while the connections are held by finished requests whose
# teardown (and response validation) wait for a token (fastapi/fastapi#3205). So the session ends with the
# route function (scope="function"), and at most API_SESSIONS exist at once, fewer than the engine's pool
# holds: a route never waits for a connection while holding a thread, and waiting for a session uses none.
API_SESSIONS = 20
SessionDep = Annotated[Session, Depends(get_db, scope="function", max_concurrency=API_SESSIONS)]


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401,
        detail,
        code="unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="jobformer"'},
    )


# Declares the scheme for /docs ("Authorize"); the header is checked below, with problem+json answers.
_bearer = HTTPBearer(auto_error=False, description="An API key from JOBFORMER_API_KEYS.")


def get_owner(
    request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str | None:
    """The caller's owner id, or None when authentication is off. 401 problem when a key is needed."""
    keyring: KeyRing = request.app.state.keyring
    if not keyring.enabled:
        return None
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise _unauthorized("this server needs an API key: send 'Authorization: Bearer <key>'")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    owner = keyring.owner_for(token.strip())
    if owner is None:
        raise _unauthorized("invalid API key")
    return owner


OwnerDep = Annotated[str | None, Depends(get_owner)]
