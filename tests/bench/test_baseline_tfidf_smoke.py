"""Smoke run of bench/baseline_tfidf.py on one set (the SMS file), both sides, jobformer capped at a few
steps, so the script cannot rot. The baseline's numbers are checked only to show it learned (beats the
majority class); jobformer's after 3 steps mean nothing and are only parsed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_baseline_tfidf_one_set(shared_data):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "baseline_tfidf.py"),
            "--set",
            "sms",
            "--max-steps",
            "3",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    assert re.search(r"^sms: train=\d+ scored=\d+ \(validation split\) baseline acc=0\.\d{4} ", out, re.M), (
        out
    )
    assert re.search(
        r"^sms: jobformer acc=[\d.]+ f1_macro=[\d.]+ .* steps=3 \| jobformer - baseline", out, re.M
    ), out
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result) == {"sms"}
    sms = result["sms"]
    # 747 of 5,574 messages are spam: the majority class scores about 0.866
    assert sms["baseline"]["accuracy"] > 0.9
    assert sms["train_rows"] + sms["scored_rows"] <= 5574


def test_a_set_whose_file_is_missing_is_skipped_not_a_crash(monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("baseline_tfidf", ROOT / "bench" / "baseline_tfidf.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "baseline_tfidf", bench)  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    missing = bench.DataSet("no_such_dir/train.csv", "text", "label", "en", test_path="no_such_dir/test.csv")
    monkeypatch.setitem(bench.SETS, "gone", missing)
    row = bench.run_set("gone", baseline_only=False, max_steps=None)
    assert row == {"skipped": "file missing", "missing": ["no_such_dir/train.csv", "no_such_dir/test.csv"]}
    assert "gone: skipped: file missing" in capsys.readouterr().out
