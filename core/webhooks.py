"""Webhook URLs and signatures, shared by the API (checks a job's ``webhook_url``) and the worker (checks it
again, resolved, then signs and sends): docs/design.md, "Operators".

A webhook must not turn the service against its own network: only ``http``/``https`` URLs, and the host
must be allowed. With ``JOBFORMER_WEBHOOK_ALLOWED_HOSTS`` empty, any host whose every address is public
(``ipaddress``'s ``is_global``: no loopback, private, link-local, shared or reserved range) is allowed.
With it set, only the hosts it lists: a name (exact, case-insensitive), an address, or a network
(``10.0.0.0/8``) holding every address the host resolves to.

The signature: ``X-Jobformer-Signature: sha256=<hex>``, the HMAC-SHA256 with ``JOBFORMER_WEBHOOK_SECRET``
of ``<timestamp>.<body>`` where ``<timestamp>`` is the ``X-Jobformer-Timestamp`` header (Unix seconds).
A receiver recomputes it over the raw body and refuses old timestamps (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
from urllib.parse import urlsplit

SIGNATURE_HEADER = "X-Jobformer-Signature"
TIMESTAMP_HEADER = "X-Jobformer-Timestamp"
MAX_URL_LENGTH = 2048

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class WebhookRefused(ValueError):
    """A webhook URL this server will not call; the message says why and what to change."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Jobformer-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """True when ``signature`` is ``body``'s at ``timestamp`` (constant-time), for receivers and tests."""
    try:
        expected = sign(secret, int(timestamp), body)
    except ValueError:
        return False
    return hmac.compare_digest(expected, signature)


def check_url(url: str, allowed_hosts: list[str], resolve: bool = True) -> str:
    """``url`` if webhooks may call it; raises :class:`WebhookRefused` otherwise. ``resolve``: look the
    host's addresses up (every one must be allowed); without it only the URL's form is checked."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookRefused(f"longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise WebhookRefused(f"not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused(f"only http and https URLs are called, not {parts.scheme or 'a relative URL'!r}")
    if not host:
        raise WebhookRefused("the URL has no host")
    if resolve:
        check_host(host, allowed_hosts)
    return url


def check_literal_host(url: str, allowed_hosts: list[str]) -> None:
    """:func:`check_host` for a URL whose host is an IP address (no lookup needed); a host name is left to
    the check before each send, which resolves it. For settings, checked where no DNS may be asked."""
    host = (urlsplit(url).hostname or "").lower()
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return
    check_host(host, allowed_hosts)


def check_host(host: str, allowed_hosts: list[str]) -> None:
    """Raise :class:`WebhookRefused` unless ``host`` is allowed (module docstring)."""
    if host in allowed_hosts:
        return
    addresses = _addresses(host)
    if allowed_hosts:
        networks = [_network(entry) for entry in allowed_hosts]
        if not all(any(a in n for n in networks if n is not None) for a in addresses):
            raise WebhookRefused(
                f"host {host!r} is not one of JOBFORMER_WEBHOOK_ALLOWED_HOSTS ({', '.join(allowed_hosts)}); "
                "use one of those, or ask the operator to add it"
            )
        return
    private = sorted({str(a) for a in addresses if not a.is_global})
    if private:
        raise WebhookRefused(
            f"host {host!r} resolves to an address that is not public ({', '.join(private)}): webhooks "
            "may reach such hosts only when JOBFORMER_WEBHOOK_ALLOWED_HOSTS lists them"
        )


def _addresses(host: str) -> list[Address]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise WebhookRefused(f"host {host!r} does not resolve ({exc})") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None  # a host name: matched by name only
