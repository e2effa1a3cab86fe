"""The README's example session, run as written against a live `jobformer up`.

Only the port in its first line (``URL=http://127.0.0.1:8000``) is changed, so the test never collides
with a service a developer is running. If the README's commands stop working, this test fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from cli.service import free_port
from tests.integration.procs import Proc, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- readme-session"
URL_LINE = "URL=http://127.0.0.1:8000"


def readme_session() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert MARKER in text, "the README lost its marked example session"
    block = re.search(r"```sh\n(.*?)```", text[text.index(MARKER) :], re.S)
    assert block, "no ```sh block after the readme-session marker"
    script = block.group(1)
    assert script.startswith(URL_LINE + "\n"), f"the session must start with {URL_LINE!r}"
    return script


def test_readme_session_runs_as_written(tmp_path: Path) -> None:
    script = readme_session()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBFORMER_")}
    up = Proc(
        [sys.executable, "-m", "cli.main", "up", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        tmp_path / "up.log",
        env=env,
    )
    try:
        wait_for(lambda: _healthy(base), "jobformer up", procs=(up,))
        run = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script.replace(URL_LINE, f"URL={base}", 1)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert run.returncode == 0, f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
        out = run.stdout
        assert '"rows":5574' in out  # the dataset as uploaded
        assert '"status":"succeeded"' in out
        assert "model.safetensors" in out and "trainer_state.pt" in out  # the archive listing
        last = out.strip().splitlines()[-1]
        assert re.match(r'\{"data":\[\{"label":"spam",.*\{"label":"ham",', last), last
    finally:
        up.signal(signal.SIGINT, group=True)  # Ctrl-C, as a person would stop it
        try:
            up.wait(120)
        finally:
            up.stop()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
