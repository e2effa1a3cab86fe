"""Dependencies shared by the routes: settings, a database session, the caller's identity, and the lookups
every route module needs (ids, paging, a dataset or job of the caller's).

Access (issue 4): when ``settings.api_keys`` is set, every route but ``/healthz`` (and the API docs)
needs ``Authorization: Bearer <key>``, checked by the request gate (api/middleware.py) before any of the
body is read; :data:`OwnerDep` hands the owner it found to the routes. Keys live in memory only as SHA-256
digests and a presented key is compared, hashed, against every one with :func:`hmac.compare_digest`
(constant time, no early exit). The owner recorded on datasets and jobs is a short hash id of the key,
never the key itself.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from api.errors import ProblemError
from core.db.models import Dataset, Job
from core.db.session import get_sessionmaker
from core.owners import hash_key, owner_id
from core.settings import Settings

log = logging.getLogger(__name__)


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


# Where the request gate leaves the owner id it authenticated (``request.state.owner``).
OWNER_STATE_KEY = "owner"


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(
        401,
        detail,
        code="unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="jobformer"'},
    )


# Declares the scheme for /docs ("Authorize"); the header is checked below, with problem+json answers.
_bearer = HTTPBearer(auto_error=False, description="An API key from JOBFORMER_API_KEYS.")


def authenticate(keyring: KeyRing, authorization: str) -> str | None:
    """The owner id for an ``Authorization`` header value, or None when authentication is off.

    Raises the 401 problem (with ``WWW-Authenticate``) when a key is needed and this is not one. The request
    gate (api/middleware.py) calls it before any of the body is read; :func:`get_owner` hands its answer on.
    """
    if not keyring.enabled:
        return None
    scheme, _, token = authorization.partition(" ")
    if not authorization:
        raise _unauthorized("this server needs an API key: send 'Authorization: Bearer <key>'")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    owner = keyring.owner_for(token.strip())
    if owner is None:
        raise _unauthorized("invalid API key")
    return owner


async def get_owner(
    request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str | None:
    """The caller's owner id, or None when authentication is off. 401 problem when a key is needed.

    The gate has checked the key already and left the owner in the request state; an app built without
    the gate checks it here. Async (it never blocks): no threadpool hop for every request.
    """
    keyring: KeyRing = request.app.state.keyring
    if not keyring.enabled:
        return None
    owner = getattr(request.state, OWNER_STATE_KEY, None)
    if owner is not None:
        return owner
    return authenticate(keyring, request.headers.get("authorization", ""))


OwnerDep = Annotated[str | None, Depends(get_owner)]


# --- shared lookups ---------------------------------------------------------------------------------

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000, description="Items to skip.")]


def get_owned_dataset(session: Session, dataset_id: str, owner: str | None) -> Dataset | None:
    """The dataset if it exists and belongs to ``owner`` (anyone's when auth is off)."""
    d = session.get(Dataset, dataset_id)
    if d is None or d.deleted_at is not None or (owner is not None and d.owner != owner):
        return None
    return d


def get_owned_job(session: Session, job_id: str, owner: str | None) -> Job:
    """The job, or a 404 problem when it does not exist or belongs to another key (not 403: no leak)."""
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.owner != owner):
        raise ProblemError(404, f"job {job_id} not found", code="not_found")
    return job
