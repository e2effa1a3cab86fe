"""bench/workers.py --quick: 1 worker and then 2 workers each drain the same tiny jobs, and the bench
reports both wall times and their ratio (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
def test_workers_quick(shared_data):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "workers.py"), "--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    one, two = report["runs"]["one"], report["runs"]["two"]
    assert (one["workers"], two["workers"], two["threads_each"]) == (1, 2, 1)
    assert one["jobs"] == two["jobs"] == 4
    assert one["wall_s"] > 0 and two["wall_s"] > 0
    assert report["ratio_one_over_two"] == pytest.approx(one["wall_s"] / two["wall_s"], rel=0.01)
    assert "ratio wall one/two" in proc.stdout
