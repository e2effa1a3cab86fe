"""bench/ddp.py --quick: both runs finish, report tokens/s, and reach the same loss (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
def test_ddp_quick(shared_data):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "ddp.py"), "--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    threads, processes = report["runs"]
    assert (threads["processes"], processes["processes"]) == (1, 2)
    assert threads["steps"] == processes["steps"] == 20
    assert threads["tokens_per_second"] > 0 and processes["tokens_per_second"] > 0
    assert processes["val_loss"] == pytest.approx(threads["val_loss"], rel=1e-4)
