"""The owner id recorded on datasets and jobs: a short hash of an API key, never the key itself.

The API derives it from the key a request presents (api/deps.py); the settings use it to map a key's
default webhook URL to the jobs that key owns (``Settings.webhook_default_for``).
"""

from __future__ import annotations

import hashlib


def hash_key(key: str) -> bytes:
    """The SHA-256 digest of ``key``: the only form in which keys are kept in memory."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def owner_id(key_digest: bytes) -> str:
    """The short, stable id stored as ``owner``: 16 hex digits of a hash of the key's digest."""
    return hashlib.sha256(b"jobformer-owner:" + key_digest).hexdigest()[:16]


def owner_of_key(key: str) -> str:
    """The owner id of the jobs created with ``key``."""
    return owner_id(hash_key(key))
