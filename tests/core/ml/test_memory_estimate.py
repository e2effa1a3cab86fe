"""The memory estimate that routes jobs to workers (``core.ml.resources``; docs/design.md, "Memory") held
against real training: each config trains a few steps in a process of its own, which reports its peak
resident memory. The estimate must be an upper bound (a worker that takes the job has the memory for it)
and not wildly loose (a job is not kept from workers that could run it).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from core.ml.config import config_from_dict
from core.ml.resources import GIB, estimate_memory_bytes, memory_gib

pytestmark = pytest.mark.slow

# The peak is VmHWM, this process's own high-water mark. Not getrusage's ru_maxrss: Linux carries it
# over from the process that spawned this one (the test run's, over 1 GiB late in the suite).
PEAK = """
import json, re, sys
from pathlib import Path
from core.ml.threads import set_cpu_thread_defaults
set_cpu_thread_defaults()
from core.ml.config import config_from_dict
from core.ml.trainer import Trainer
Trainer(config_from_dict(json.loads(sys.argv[2])), Path(sys.argv[1]), Path(sys.argv[3])).run()
with open("/proc/self/status") as status:
    print(int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) * 1024)
"""

WORDS = [f"w{i}" for i in range(400)]


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _classification_csv(path: Path) -> Path:
    rng = random.Random(0)
    rows = [f"{_text(rng, rng.randint(20, 200))},{rng.choice('ab')}" for _ in range(600)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def _plain_text(path: Path) -> Path:
    rng = random.Random(1)
    path.write_text("\n".join(_text(rng, 30) for _ in range(3000)) + "\n")
    return path


def _pairs_tsv(path: Path) -> Path:
    rng = random.Random(2)
    rows = [f"{_text(rng, 40)}\t{_text(rng, 40)}" for _ in range(600)]
    path.write_text("source\ttarget\n" + "\n".join(rows) + "\n")
    return path


STEPS = {"max_steps": 3, "warmup_steps": 0}
CASES = {
    # The default classifier (its n-gram table is most of its state), on long rows.
    "classification": (
        _classification_csv,
        {"task": "classification", "model": {"max_length": 256}, "training": {"batch_size": 64, **STEPS}},
    ),
    # Attention scores dominate: many heads over long contexts.
    "language_modeling": (
        _plain_text,
        {
            "task": "language_modeling",
            "tokenizer": {"kind": "char", "max_vocab": 64},
            "model": {"d_model": 128, "n_heads": 8, "n_layers": 2, "dim_feedforward": 512, "max_length": 384},
            "training": {"batch_size": 32, **STEPS},
        },
    ),
    # Gradient checkpointing: activations of one block at a time.
    "checkpointed": (
        _plain_text,
        {
            "task": "language_modeling",
            "tokenizer": {"kind": "char", "max_vocab": 64},
            "model": {
                "d_model": 256,
                "n_heads": 4,
                "n_layers": 4,
                "dim_feedforward": 1024,
                "max_length": 256,
                "gradient_checkpointing": True,
            },
            "training": {"batch_size": 32, **STEPS},
        },
    ),
    # An encoder-decoder, its vocabulary's logits included.
    "text_to_text": (
        _pairs_tsv,
        {
            "task": "text_to_text",
            "tokenizer": {"max_vocab": 500},
            "model": {"d_model": 128, "n_heads": 4, "n_layers": 2, "dim_feedforward": 512, "max_length": 64},
            "training": {"batch_size": 64, **STEPS},
        },
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_estimate_bounds_the_peak_memory_of_real_training(case: str, tmp_path: Path) -> None:
    make, raw = CASES[case]
    data = make(tmp_path / "data.txt")
    run = subprocess.run(
        [sys.executable, "-c", PEAK, str(data), json.dumps(raw), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    peak = int(run.stdout.split()[-1])
    estimate = estimate_memory_bytes(config_from_dict(raw))
    assert peak <= estimate <= 2 * peak, f"peak {peak / GIB:.2f} GiB, estimate {estimate / GIB:.2f} GiB"


def test_a_stated_memory_wins_over_the_estimate() -> None:
    raw = {"task": "classification", "resources": {"memory_gb": 40}}
    assert memory_gib(config_from_dict(raw)) == 40
    assert memory_gib(config_from_dict({"task": "classification"})) < 4  # the default: the plain tier


def test_the_estimate_grows_with_what_costs_memory() -> None:
    def gib(**changes: dict) -> float:
        return memory_gib(config_from_dict({"task": "language_modeling", **changes}))

    base = gib()
    assert gib(training={"batch_size": 64}) > base
    assert gib(model={"max_length": 256}) > base
    assert gib(model={"n_layers": 8}) > base
    assert gib(training={"batch_size": 32, "grad_accum_steps": 4}) < base
    assert gib(resources={"processes": 2}, training={"batch_size": 32}) < base  # each rank's share
    assert gib(model={"n_layers": 8, "gradient_checkpointing": True}) < gib(model={"n_layers": 8})
