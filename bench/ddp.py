"""One job on many processes (issue 14): 2 processes x 1 thread against 1 process x 2 threads, one run.

Both are ``jobformer train`` on the same config (a character LM on tiny_shakespeare, dropout 0, seed 0),
so the loss at equal steps must agree and only the throughput differs:

    threads     jobformer train ...             OMP_NUM_THREADS=2 (one process, two threads: the reference)
    processes   jobformer train ... --nproc 2   OMP_NUM_THREADS=1 (two ranks under torchrun, gloo)

Prints each run's tokens/s (the global batch's tokens over rank 0's training time, as the progress
reports it), its train and validation loss at the last step, and the ratio processes / threads, with the
load average before and after. Usage::

    python bench/ddp.py [--steps 200] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tiny_shakespeare" / "input.txt"


def config(steps: int) -> dict:
    return {
        "task": "language_modeling",
        "tokenizer": {"kind": "char", "lowercase": False},
        "model": {
            "d_model": 128,
            "n_heads": 4,
            "n_layers": 4,
            "dim_feedforward": 512,
            "max_length": 64,
            "dropout": 0.0,  # each rank draws its own masks: without dropout the losses must agree
        },
        "training": {
            "max_steps": steps,
            "batch_size": 32,
            "warmup_steps": min(50, steps // 4),
            "learning_rate": 1e-3,
            "seed": 0,
        },
    }


def run(name: str, steps: int, nproc: int, threads: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "cli.main", "train", str(DATA), "-c", json.dumps(config(steps))]
    cmd += ["-o", str(out / name), "--json", "-q", "--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "name": name,
        "processes": nproc,
        "threads_each": threads,
        "steps": summary["steps"],
        "tokens_per_second": summary["tokens_per_second"],
        "train_loss": summary["metrics"]["train_loss"],
        "val_loss": summary["metrics"]["val_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 steps: checks that it runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    steps = 20 if args.quick else args.steps
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        threads = run("threads", steps, 1, 2, Path(tmp))
        processes = run("processes", steps, 2, 1, Path(tmp))
    load_after = os.getloadavg()
    ratio = processes["tokens_per_second"] / threads["tokens_per_second"]
    report = {
        "runs": [threads, processes],
        "ratio_tokens_per_second": ratio,
        "val_loss_difference": processes["val_loss"] - threads["val_loss"],
        "load_average": {"before": load_before, "after": load_after},
    }
    if args.json:
        print(json.dumps(report))
        return
    for r in report["runs"]:
        print(
            f"{r['name']:9}  {r['processes']} process(es) x {r['threads_each']} thread(s): "
            f"{r['tokens_per_second']:,.0f} tokens/s, step {r['steps']}: train loss {r['train_loss']:.4f}, "
            f"val loss {r['val_loss']:.4f}"
        )
    print(f"ratio processes / threads: {ratio:.2f}x tokens/s")
    print(f"val loss difference at step {steps}: {report['val_loss_difference']:+.2e}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}")


if __name__ == "__main__":
    main()
