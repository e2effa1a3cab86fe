"""Smoke run of bench/sweep.py (``--quick``), so the script cannot rot: it must finish and print its lines.
The numbers of a quick run mean nothing and are not asserted; tests never assert timings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
def test_sweep_bench_quick(shared_data):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sweep.py"), "--quick", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    for name in ("parallel", "sequential", "asha"):
        assert re.search(rf"^{name}: wall_s=[\d.]+ trials=4 steps=\d+ pruned=\d ", out, re.M), out
    assert re.search(r"^ratio wall sequential/parallel \(2 workers\): \d+\.\d\dx$", out, re.M), out
    assert re.search(r"^asha steps: \d+ of the full grid's 240 ", out, re.M), out
    result = json.loads(out.strip().splitlines()[-1])
    assert {r["status"] for r in result.values()} == {"succeeded"}
    # the same grid both ways: the same trials, so the same best
    assert result["parallel"]["best_params"] == result["sequential"]["best_params"]
