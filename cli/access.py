"""Who may reach the API: `serve` and `up` refuse to listen beyond loopback without API keys (issue 8)."""

from __future__ import annotations

import click


def is_loopback(host: str) -> bool:
    """Whether only this machine can connect to ``host``: 127.0.0.0/8, ::1 or localhost."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may be any interface


def refuse_open_api(host: str, port: int) -> None:
    """Stop with one line saying how to set a key when the API would listen beyond loopback without one:
    anyone who reaches the port could upload data and run jobs (issue 8)."""
    from core.settings import get_settings

    if is_loopback(host) or get_settings().api_keys:
        return
    raise click.ClickException(
        f"refusing to serve the API on {host}:{port} without API keys; set JOBFORMER_API_KEYS, e.g. "
        "JOBFORMER_API_KEYS=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))'), or listen on "
        "127.0.0.1, or pass --allow-no-auth when a proxy in front of it authenticates"
    )
