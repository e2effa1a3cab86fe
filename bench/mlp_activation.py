"""The MLP activation's share of a CPU training step: GELU against squared ReLU, two ways.

Builds jobformer's language model at the tiny Shakespeare bench size (4 layers, 4 heads, d_model 128, MLP
512, context 64, batch 12) three times from one seed, each with a different MLP activation:

- ``gelu``: ``F.gelu`` (erf), what nanoGPT and the bench's reference use;
- ``relu2_autograd``: ``r = relu(h); r * r``, autograd's own backward;
- ``relu2``: ``core.ml.model.SquaredReLU``, jobformer's (one saved tensor, two passes backward).

Each step is a whole training step (forward, backward, gradient clipping, fused AdamW) on random windows.
The variants run in turns of 20 steps, 12 turns each, so a change in the machine's load hits all alike;
it prints the median milliseconds per step and the ratio to ``gelu``. Usage::

    python bench/mlp_activation.py [--turns 12] [--steps-per-turn 20] [--precision fp32|bf16] [--threads N]
                                   [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from core.ml.config import ModelConfig  # noqa: E402
from core.ml.model import SquaredReLU, build_model  # noqa: E402

CFG = ModelConfig(d_model=128, n_heads=4, n_layers=4, dim_feedforward=512, dropout=0.0, max_length=64)
VOCAB, BATCH = 65, 12


def _relu2_autograd(h: torch.Tensor) -> torch.Tensor:
    r = F.relu(h)
    return r * r


ACTIVATIONS = {"gelu": F.gelu, "relu2_autograd": _relu2_autograd, "relu2": SquaredReLU.apply}


def build(activation: str):
    torch.manual_seed(0)
    model = build_model("language_modeling", CFG, VOCAB)
    act = ACTIVATIONS[activation]
    for block in model.backbone.blocks:
        mlp = block.mlp
        mlp.forward = lambda x, mlp=mlp: mlp.proj(act(mlp.fc(x)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), fused=True)
    return model, optimizer


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--turns", type=int, default=12)
    p.add_argument("--steps-per-turn", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="2 turns of 2 steps: a smoke run")
    p.add_argument("--json", action="store_true", help="also print one JSON object as the last line")
    p.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: steps under CPU bf16 autocast"
    )
    args = p.parse_args(argv)
    turns, per_turn = (2, 2) if args.quick else (args.turns, args.steps_per_turn)
    if args.threads:
        torch.set_num_threads(args.threads)
    stream = torch.randint(0, VOCAB, (100_000,), generator=torch.Generator().manual_seed(0))
    offsets = torch.arange(CFG.max_length + 1)

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step(model, optimizer) -> None:
        w = stream[torch.randint(len(stream) - len(offsets), (BATCH,))[:, None] + offsets]
        with autocast:
            _, loss = model(w[:, :-1], w[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    runs = {name: build(name) for name in ACTIVATIONS}
    for run in runs.values():  # warm up: first allocations, kernel choices
        for _ in range(min(10, per_turn)):
            step(*run)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(turns):
        for name, run in runs.items():
            t0 = time.perf_counter()
            for _ in range(per_turn):
                step(*run)
            times[name].append((time.perf_counter() - t0) / per_turn * 1e3)
    print(
        f"{turns} turns x {per_turn} steps, {args.precision}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    for name, median in medians.items():
        print(f"{name}: {median:.2f} ms/step, {medians['gelu'] / median:.3f}x gelu's speed")
    if args.json:
        print(json.dumps({"ms_per_step": medians, "turns": turns, "steps_per_turn": per_turn}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
