"""Smoke runs of the benchmarks (``--quick``), so the scripts cannot rot: each must finish and print its
ratio line. The numbers of a quick run mean nothing and are not asserted; tests never assert timings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", "--json", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_lm_shakespeare_quick(shared_data):
    # One thread: on a busy 2-core machine two OpenMP threads can be many times slower than one.
    proc = run_bench("lm_shakespeare.py", "--threads", "1", timeout=300)
    out = proc.stdout
    assert re.search(r"^reference: tokens/s=\d+ val_loss=\d+\.\d{4} train_s=[\d.]+ steps=30$", out, re.M), out
    assert re.search(r"^jobformer: tokens/s=\d+ val_loss=\d+\.\d{4} train_s=[\d.]+ steps=30$", out, re.M), out
    assert re.search(r"^ratio tokens/s jobformer/reference: \d+\.\d\dx$", out, re.M), out
    assert "WARNING" not in out  # both loops read the same token stream
    result = json.loads(out.strip().splitlines()[-1])
    assert result["reference"]["stream_tokens"] == 1_115_394  # the file, newlines included
    assert result["reference"]["val_windows"] == 1742  # (111,540 - 64) // 64 + 1 windows of the last 10%
    data = result["jobformer"]["data"]
    assert (data["train_tokens"], data["val_tokens"]) == (1_003_854, 111_540)
    # 30 steps leave the loss far above a trained model's but well below uniform over 65 chars (4.17).
    assert 3.0 < result["reference"]["val_loss"] < 4.0 and 3.0 < result["jobformer"]["val_loss"] < 4.0

    # The ablation script's "relu2,fanin" rebuilds core/ml/model.py's language model: the same numbers.
    ablation = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "lm_ablation.py"), "relu2,fanin,steps=30", "--threads", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ablation.returncode == 0, ablation.stderr[-3000:]
    assert json.loads(ablation.stdout.strip().splitlines()[-1])["val_loss"] == round(
        result["jobformer"]["val_loss"], 4
    )


@pytest.mark.slow
@pytest.mark.integration
def test_api_load_quick(shared_data):
    proc = run_bench("api_load.py", timeout=300)
    out = proc.stdout
    assert re.search(
        r"^pollers: 10 clients x 3 s on (postgresql|sqlite): requests/s=\d+ .* errors=0$", out, re.M
    ), out
    assert re.search(r"^ratio training tokens/s with pollers/without: \d+\.\d\dx$", out, re.M), out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["errors"] == 0 and result["monitor_errors"] == 0 and result["requests"] > 0
    assert result["training_tokens_per_second"]["quiet_before"] > 0  # the job trained while measured


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_mlp_activation_quick(precision):
    proc = run_bench("mlp_activation.py", "--threads", "1", "--precision", precision, timeout=120)
    for name in ("gelu", "relu2_autograd", "relu2"):
        assert re.search(rf"^{name}: [\d.]+ ms/step, \d+\.\d{{3}}x gelu's speed$", proc.stdout, re.M), (
            proc.stdout
        )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["ms_per_step"]) == {"gelu", "relu2_autograd", "relu2"}
