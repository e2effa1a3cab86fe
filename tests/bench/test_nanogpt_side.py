"""Smoke runs of bench/nanogpt_side.py (``--quick``: 30 steps, evaluations every 10), so the script cannot
rot. jobformer's side always runs, against a given target loss; nanoGPT's side runs when a nanoGPT checkout
is named by JOBFORMER_NANOGPT_DIR (``git clone https://github.com/karpathy/nanoGPT``). The numbers of a
quick run mean nothing: only their shape and consistency are checked; tests never assert timings."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIFORM = math.log(65)  # the loss of a uniform guess over tiny Shakespeare's 65 characters


def run_side(*args: str) -> tuple[str, dict]:
    # One thread: on a busy 2-core machine two OpenMP threads can be many times slower than one.
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "nanogpt_side.py"),
            "--quick",
            "--json",
            "--threads",
            "1",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout, json.loads(proc.stdout.strip().splitlines()[-1])


def check_jobformer(out: str, result: dict, target: float) -> None:
    assert re.search(
        r"^jobformer: tokens/s=\d+ train_s=[\d.]+ eval_s=[\d.]+ val_loss=\d\.\d{4} steps=30$", out, re.M
    )
    jf = result["jobformer"]
    assert [e["step"] for e in jf["evals"]] == [10, 20, 30]  # eval_every 10 in a quick run
    losses = [e["val_loss"] for e in jf["evals"]]
    assert losses == sorted(losses, reverse=True) and losses[-1] < UNIFORM - 0.3, losses  # it learned
    times = [e["train_seconds"] for e in jf["evals"]]
    assert 0 < times[0] < times[1] < times[2] <= jf["train_seconds"] + 1e-9
    hit = result["time_to_target"]
    first = next((e for e in jf["evals"] if e["val_loss"] <= target), None)
    if first is None:
        assert hit is None and f"jobformer never reached {target:.4f}" in out
    else:
        assert hit["step"] == first["step"] and hit["train_seconds_scaled"] >= hit["train_seconds"]
        assert f"jobformer reached {target:.4f} at step {hit['step']}" in out


@pytest.mark.slow
def test_jobformer_side_against_a_given_loss(shared_data):
    out, result = run_side("--target", "3.8")
    check_jobformer(out, result, 3.8)
    assert "nanogpt" not in result and "ratio_tokens_per_second" not in result
    data = result["jobformer"]["data"]
    assert (data["train_tokens"], data["val_tokens"]) == (1_003_854, 111_540)


@pytest.mark.slow
def test_nanogpt_side(shared_data):
    folder = os.environ.get("JOBFORMER_NANOGPT_DIR")
    if not folder:
        pytest.skip(
            "JOBFORMER_NANOGPT_DIR is not set (a nanoGPT checkout: git clone https://github.com/karpathy/nanoGPT)"
        )
    out, result = run_side("--nanogpt", folder)
    # nanoGPT's prepare.py read the shared file (no download): the same split as jobformer's.
    assert result["nanogpt_data"] == {"train_tokens": 1_003_854, "val_tokens": 111_540}
    ng = result["nanogpt"]
    assert [e["step"] for e in ng["evals"]] == [0, 10, 20, 30]
    assert abs(ng["evals"][0]["val_loss"] - UNIFORM) < 0.1  # untrained: about uniform
    assert ng["val_loss"] < UNIFORM - 0.3 and ng["steps_timed"] == 27  # iterations 1-29 less 10 and 20
    # Its final checkpoint on jobformer's windows: every window of the last 10%, as jobformer reads them.
    assert ng["checkpoint"]["iter_num"] == 30 and ng["checkpoint"]["windows"] == 1742
    assert abs(ng["checkpoint"]["val_loss"] - ng["val_loss"]) < 0.1  # 20 random batches vs all windows
    target = ng["checkpoint"]["val_loss"]
    assert re.search(r"^nanoGPT: tokens/s=\d+ train_s=[\d.]+ wall_s=[\d.]+ .* steps=30$", out, re.M), out
    check_jobformer(out, result, target)
    assert re.search(r"^ratio tokens/s jobformer/nanoGPT: \d+\.\d\dx$", out, re.M), out
    assert re.search(
        r"^ratio time to nanoGPT's checkpoint loss \(\d\.\d{4}\) jobformer/nanoGPT 30 steps: ", out, re.M
    )
