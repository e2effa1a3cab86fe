"""A smoke run of bench/seq2seq.py on a few hundred pairs and seconds, so the script cannot rot: it must
train both models, decode, and print its lines. Its numbers mean nothing here and are not asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_seq2seq_bench_runs(shared_data: Path) -> None:
    args = ["--pairs", "400", "--seconds", "2", "--sample", "20"]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "seq2seq.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{proc.stderr[-3000:]}"
    assert re.search(r"^3\d\d training pairs, 20 validation sentences decoded", out, re.M), out
    assert re.search(
        r"^transformer: \d+ steps, [\d,]+ tokens/s, loss [\d.]+, greedy BLEU [\d.]+", out, re.M
    ), out
    assert re.search(r"^gru\+attention: \d+ steps, [\d,]+ tokens/s", out, re.M), out
    assert re.search(r"^ratio transformer/gru: BLEU [\d.]+x, tokens/s [\d.]+x$", out, re.M), out
