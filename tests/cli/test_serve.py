"""`jobformer serve` refuses to listen beyond loopback without API keys, saying how to set one (issue 8)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from cli.main import cli
from cli.service import is_loopback
from core.settings import get_settings
from tests.integration.procs import Proc, free_port, wait_for

REFUSAL = (
    "Error: refusing to serve the API on {host}:8123 without API keys; set JOBFORMER_API_KEYS, e.g. "
    "JOBFORMER_API_KEYS=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))'), or listen on "
    "127.0.0.1, or pass --allow-no-auth when a proxy in front of it authenticates"
)


@pytest.fixture
def no_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("JOBFORMER_API_KEYS", raising=False)
    monkeypatch.setenv("JOBFORMER_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "host,loopback",
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.10", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.usefixtures("no_keys")
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.org"])
def test_serve_beyond_loopback_without_keys_refuses_in_one_line(host: str) -> None:
    result = CliRunner().invoke(cli, ["serve", "--host", host, "--port", "8123"])
    assert result.exit_code == 1
    assert result.output.splitlines() == [REFUSAL.format(host=host)]


def _serve(tmp_path: Path, *args: str, **env: str) -> None:
    """A real `jobformer serve` on 0.0.0.0 must come up: /healthz answers on 127.0.0.1."""
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("JOBFORMER_")}
    base["JOBFORMER_DATA_DIR"] = str(tmp_path / "data")
    cmd = [sys.executable, "-m", "cli.main", "serve", "--host", "0.0.0.0", "--port", str(port), *args]
    api = Proc([*cmd, "--log-level", "warning"], tmp_path / "api.log", env={**base, **env})
    try:

        def healthy() -> bool:
            assert api.popen.poll() is None, api.log_tail()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, "the API to answer /healthz", timeout=60, procs=(api,))
    finally:
        api.stop(timeout=15)


@pytest.mark.integration
def test_serve_beyond_loopback_starts_with_a_key(tmp_path: Path) -> None:
    _serve(tmp_path, JOBFORMER_API_KEYS="serve-test-key-0123456789")


@pytest.mark.integration
def test_serve_beyond_loopback_starts_with_allow_no_auth(tmp_path: Path) -> None:
    _serve(tmp_path, "--allow-no-auth")


@pytest.mark.usefixtures("no_keys")
def test_up_beyond_loopback_without_keys_refuses_before_starting_anything(tmp_path: Path) -> None:
    """`jobformer up --host 0.0.0.0` without keys stops at once (its API child would refuse to start and be
    restarted forever), and starts nothing: no Redis, no data written."""
    result = CliRunner().invoke(
        cli, ["up", "--host", "0.0.0.0", "--port", "8123", "--data-dir", str(tmp_path / "d")]
    )
    assert result.exit_code == 1
    assert result.output.splitlines() == [REFUSAL.format(host="0.0.0.0")]
    assert not (tmp_path / "d" / "redis" / "appendonlydir").exists()
