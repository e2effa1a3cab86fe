"""Batch predictions (core/ml/batch.py) against the predictor one text at a time, and memory against the
file's size (docs/design.md, "Evaluations and batch predictions").

Trains a small classifier on the SMS spam file (../shared/data/sms_spam), then:

- **throughput**: the same N texts through ``predict_file`` (chunks tokenized at once, batches of similar
  length) and through ``Predictor.classify([text])`` one text at a time, in alternating turns; prints
  texts/s of each and the ratio.
- **memory**: ``predict_file`` over a file of R rows and one of 10 R rows (the SMS rows repeated), each in
  a fresh process, the peak of Python's allocations (``tracemalloc``: rows, texts, tokens, the CSV
  writer) while it runs, after the model is loaded; prints both and the ratio (flat in the file's size:
  about 1; reading the file whole would make it about 10). Tensors of one batch are not traced: they are
  bounded by the batch, not the file.

    python bench/batch_predict.py [--rows 5000] [--turns 3] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SMS = ROOT.parent / "shared" / "data" / "sms_spam" / "SMSSpamCollection.tsv"
CONFIG = {
    "task": "classification",
    "text_column": 1,
    "label_column": 0,
    "model": {"d_model": 64, "n_heads": 4, "n_layers": 2, "dim_feedforward": 128, "max_length": 64},
    "training": {"max_steps": 60, "batch_size": 32, "warmup_steps": 5, "learning_rate": 3e-3, "seed": 0},
    "device": "cpu",
}


def _write_rows(path: Path, rows: int) -> None:
    lines = SMS.read_text(encoding="utf-8").splitlines()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            f.write(lines[i % len(lines)] + "\n")


def _memory_child(run: str, src: str, dst: str) -> None:
    """In a fresh process: load the model, then the peak RSS growth (KiB) of predicting the file."""
    from core.ml.batch import predict_file
    from core.ml.predict import Predictor

    predictor = Predictor.load(run)
    predictor.classify(["warm up the tokenizer and the model"])
    tracemalloc.start()
    predict_file(predictor, src, dst)
    _, peak = tracemalloc.get_traced_memory()
    print(json.dumps({"peak_growth_kib": peak / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="A few hundred rows: checks the script runs.")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        _memory_child(*args.memory_child)
        return
    if args.quick:
        args.rows, args.turns = 300, 1
        CONFIG["training"]["max_steps"] = 10
    import torch

    from core.ml.batch import predict_file
    from core.ml.config import TrainConfig
    from core.ml.predict import Predictor
    from core.ml.train import train

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    train(TrainConfig.model_validate(CONFIG), SMS, tmp / "run")
    predictor = Predictor.load(tmp / "run")
    src = tmp / "in.tsv"
    _write_rows(src, args.rows)
    texts = [line.split("\t", 1)[1] for line in src.read_text(encoding="utf-8").splitlines()]
    batch_s, single_s = [], []
    for _ in range(args.turns):
        t = time.perf_counter()
        predict_file(predictor, src, tmp / "out.csv")
        batch_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        for text in texts:
            predictor.classify([text])
        single_s.append(time.perf_counter() - t)
    batch_tps, single_tps = len(texts) / min(batch_s), len(texts) / min(single_s)

    big = tmp / "big.tsv"
    _write_rows(big, 10 * args.rows)
    growth = []
    for path in (src, big):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(tmp / "run"), str(path), str(tmp / "m.csv")],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        growth.append(json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_kib"])
    result = {
        "rows": args.rows,
        "batch_texts_per_s": round(batch_tps, 1),
        "one_at_a_time_texts_per_s": round(single_tps, 1),
        "speedup": round(batch_tps / single_tps, 2),
        "peak_alloc_mib": round(growth[0] / 1024, 2),
        "peak_alloc_10x_mib": round(growth[1] / 1024, 2),
        "memory_ratio_10x": round(growth[1] / max(growth[0], 1), 2),
        "load_average": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"rows {args.rows}, load average {result['load_average']:.2f}")
    print(f"batch path      {result['batch_texts_per_s']:10.1f} texts/s")
    print(f"one at a time   {result['one_at_a_time_texts_per_s']:10.1f} texts/s")
    print(f"speedup         {result['speedup']:10.2f}x")
    print(
        f"peak allocations {result['peak_alloc_mib']} MiB ({args.rows} rows), "
        f"{result['peak_alloc_10x_mib']} MiB ({10 * args.rows} rows): ratio {result['memory_ratio_10x']}"
    )


if __name__ == "__main__":
    main()
