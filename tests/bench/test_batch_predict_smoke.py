"""bench/batch_predict.py runs (``--quick``) and prints its figures; none of them is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_batch_predict_quick(shared_data):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "batch_predict.py"), "--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) >= {"batch_texts_per_s", "one_at_a_time_texts_per_s", "speedup", "memory_ratio_10x"}
