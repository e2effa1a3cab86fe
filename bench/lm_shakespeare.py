"""Character language model on tiny Shakespeare: jobformer's loop against a plain-PyTorch reference.

Both run in this process, one after the other, on the same token stream, with the same model size
(4 layers, 4 heads, d_model 128, MLP 512, context 64, batch 12, dropout 0, peak lr 1e-3, 2000 steps):

- reference: a minimal nanoGPT-style loop written below (nanoGPT's model.py / train.py and its
  ``config/train_shakespeare_char.py`` CPU settings: learned position embeddings, no biases, SDPA,
  tied embeddings, AdamW (default foreach kernel as nanoGPT uses on CPU) with betas (0.9, 0.99) and weight
  decay 0.1 on matrices, warmup 100 then cosine to 1e-4, gradient clip 1.0, random-window ``get_batch``);
- jobformer: ``core.ml.train.train`` with the equivalent TrainConfig.

It prints one line per loop and the ratio of training throughputs::

    reference: tokens/s=20512 val_loss=1.8810 train_s=74.9 steps=2000
    jobformer: tokens/s=24102 val_loss=1.8602 train_s=63.7 steps=2000
    ratio tokens/s jobformer/reference: 1.18x

See bench/README.md for exactly how each number is computed. Usage::

    python bench/lm_shakespeare.py [--steps N] [--quick] [--json] [--only reference|jobformer]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: `python bench/lm_shakespeare.py`
    sys.path.insert(0, str(ROOT))

DATA = ROOT.parent / "shared" / "data" / "tiny_shakespeare" / "input.txt"

N_LAYERS, N_HEADS, D_MODEL, D_FF = 4, 4, 128, 512
CONTEXT, BATCH, LR, MIN_LR, WARMUP = 64, 12, 1e-3, 1e-4, 100
VAL_FRACTION = 0.1
EVAL_BATCH = 64  # windows per evaluation forward pass (jobformer uses max(64, batch_size))
EVAL_MAX_TOKENS = 1 << 17  # jobformer's cap on validation tokens (core.ml.tasks.LM_EVAL_MAX_TOKENS)


# ---------------------------------------------------------------------------------------------------
# Data: the stream jobformer trains on, rebuilt without jobformer's code
# ---------------------------------------------------------------------------------------------------


def load_stream(path: Path) -> str:
    """The text as jobformer sees a .txt file for language modelling: every line (blank ones included)
    followed by a separator (jobformer's <eos>; here the newline itself, one character for one token).
    For tiny Shakespeare that is the file, 1,115,394 tokens, as nanoGPT's prepare.py reads it."""
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start an empty one
    return "".join(line + "\n" for line in lines)


def split_stream(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First 90% for training, the last 10% for validation (jobformer's cut: int(total * 0.9))."""
    cut = int(len(ids) * (1 - VAL_FRACTION))
    return ids[:cut], ids[cut:]


def val_windows(val: torch.Tensor, T: int) -> torch.Tensor:
    """Fixed validation windows of T + 1 tokens at stride T, as jobformer reads them. (n, T + 1)"""
    starts = torch.arange(0, len(val) - T, T)
    if len(starts) * T > EVAL_MAX_TOKENS:
        starts = starts[torch.linspace(0, len(starts) - 1, EVAL_MAX_TOKENS // T).long()]
    return val[starts[:, None] + torch.arange(T + 1)]


# ---------------------------------------------------------------------------------------------------
# The reference: nanoGPT's model, trimmed to what this configuration uses (dropout 0, no biases)
# ---------------------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_attn = nn.Linear(D_MODEL, 3 * D_MODEL, bias=False)
        self.c_proj = nn.Linear(D_MODEL, D_MODEL, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        k = k.view(B, T, N_HEADS, C // N_HEADS).transpose(1, 2)  # (B, nh, T, hs)
        q = q.view(B, T, N_HEADS, C // N_HEADS).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, N_HEADS, C // N_HEADS).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # nanoGPT's "flash" path
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_fc = nn.Linear(D_MODEL, D_FF, bias=False)
        self.c_proj = nn.Linear(D_FF, D_MODEL, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(D_MODEL, bias=False)
        self.attn = CausalSelfAttention()
        self.ln_2 = nn.LayerNorm(D_MODEL, bias=False)
        self.mlp = MLP()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, D_MODEL)
        self.wpe = nn.Embedding(CONTEXT, D_MODEL)
        self.h = nn.ModuleList(Block() for _ in range(N_LAYERS))
        self.ln_f = nn.LayerNorm(D_MODEL, bias=False)
        self.lm_head = nn.Linear(D_MODEL, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * N_LAYERS) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(T, dtype=torch.long))  # (B, T, C)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def nanogpt_lr(it: int, max_iters: int) -> float:
    """nanoGPT's get_lr: linear warmup, cosine decay to min_lr at lr_decay_iters (= max_iters)."""
    if it < WARMUP:
        return LR * (it + 1) / (WARMUP + 1)
    ratio = min(1.0, (it - WARMUP) / max(1, max_iters - WARMUP))
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


@torch.no_grad()
def evaluate(model: nn.Module, windows: torch.Tensor) -> float:
    """Mean cross-entropy per token over every validation window (the same windows jobformer reads)."""
    model.eval()
    total = 0.0
    for i in range(0, len(windows), EVAL_BATCH):
        w = windows[i : i + EVAL_BATCH]
        total += float(model(w[:, :-1], w[:, 1:])) * len(w)
    model.train()
    return total / len(windows)


class ReferenceLoop:
    """nanoGPT's training loop (train.py, CPU, no gradient accumulation) on the shared stream, one
    optimizer step per ``step()`` call so that it can run interleaved with jobformer's loop."""

    def __init__(self, path: Path, steps: int, seed: int) -> None:
        text = load_stream(path)
        self.chars = sorted(set(text))
        stoi = {c: i for i, c in enumerate(self.chars)}
        self.ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
        self.train_ids, val_ids = split_stream(self.ids)
        self.windows = val_windows(val_ids, CONTEXT)
        self.steps = steps
        torch.manual_seed(seed)
        self.model = GPT(len(self.chars))
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        # nanoGPT asks for the fused kernel only on CUDA; on the CPU torch picks its foreach kernel.
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
            lr=LR,
            betas=(0.9, 0.99),
        )
        self.gen = torch.Generator().manual_seed(seed)
        self.it = 0
        self.train_s = 0.0  # wall time of steps 2..N (the first step is left out, as for jobformer)
        self.train_loss = float("nan")
        self.model.train()

    def get_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(self.train_ids) - CONTEXT, (BATCH,), generator=self.gen)
        x = torch.stack([self.train_ids[i : i + CONTEXT] for i in ix])
        y = torch.stack([self.train_ids[i + 1 : i + 1 + CONTEXT] for i in ix])
        return x, y

    def step(self) -> None:
        t0 = time.perf_counter()
        for group in self.optimizer.param_groups:
            group["lr"] = nanogpt_lr(self.it, self.steps)
        x, y = self.get_batch()
        loss = self.model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.train_loss = loss.item()  # nanoGPT's CPU command logs every iteration
        if self.it > 0:
            self.train_s += time.perf_counter() - t0
        self.it += 1

    @property
    def done(self) -> bool:
        return self.it >= self.steps

    def result(self) -> dict:
        val_loss = evaluate(self.model, self.windows)
        return {
            "steps": self.it,
            "tokens_per_second": (self.it - 1) * BATCH * CONTEXT / self.train_s if self.train_s else 0.0,
            "train_seconds": self.train_s,
            "val_loss": val_loss,
            "train_loss": self.train_loss,
            "vocab_size": len(self.chars),
            "val_windows": len(self.windows),
            "stream_tokens": len(self.ids),
        }


# ---------------------------------------------------------------------------------------------------
# jobformer
# ---------------------------------------------------------------------------------------------------


def run_jobformer(
    path: Path,
    steps: int,
    seed: int,
    precision: str = "auto",
    partner: ReferenceLoop | None = None,
    eval_every: int | None = None,
    lr: float = LR,
) -> dict:
    """core.ml.train.train with the same settings, timed from outside through its callbacks.

    With ``partner``, one reference step runs inside each progress callback, timed apart: the two loops
    alternate step by step, so a change in the machine's load (other processes) hits both alike.
    ``eval_every``: jobformer's training.eval_every (default: its own, at each epoch end and the last step);
    ``lr``: its peak learning rate (default the reference's).
    The result's "evals" lists each evaluation: step, val_loss, the training seconds of steps 2..step,
    the seconds spent evaluating and checkpointing so far, and the wall seconds since ``train()`` began.
    """
    from core.ml.callbacks import Callbacks
    from core.ml.config import TrainConfig
    from core.ml.train import train

    class Timer(Callbacks):
        """Sums the wall time between consecutive progress reports, leaving out evaluations and
        checkpoint writes (the clock restarts after each checkpoint, the last thing before the next step)."""

        def __init__(self) -> None:
            self.last: float | None = None
            self.train_s = 0.0
            self.steps_timed = 0
            self.events: list[str] = []
            self.evals: list[dict] = []
            self.eval_s = 0.0  # evaluations and checkpoint writes
            self.start = time.perf_counter()

        def on_progress(self, progress) -> None:
            now = time.perf_counter()
            if self.last is not None:
                self.train_s += now - self.last
                self.steps_timed += 1
            if partner is not None and not partner.done:
                partner.step()
            self.last = time.perf_counter()

        def on_metrics(self, points) -> None:
            for p in points:
                if p.split == "val" and p.name == "loss":
                    self.evals.append({"step": p.step, "val_loss": p.value, "train_seconds": self.train_s})

        def on_checkpoint(self, info) -> None:
            now = time.perf_counter()
            if self.last is not None:
                self.eval_s += now - self.last
            if self.evals:
                self.evals[-1].update(eval_seconds=self.eval_s, wall_seconds=now - self.start)
            self.last = now

        def on_event(self, kind, message, data=None) -> None:
            self.events.append(kind)

    config = TrainConfig(
        task="language_modeling",
        tokenizer={"kind": "char", "lowercase": False},
        model={
            "d_model": D_MODEL,
            "n_heads": N_HEADS,
            "n_layers": N_LAYERS,
            "dim_feedforward": D_FF,
            "dropout": 0.0,
            "max_length": CONTEXT,
        },
        training={
            "max_steps": steps,
            "batch_size": BATCH,
            "learning_rate": lr,
            "warmup_steps": WARMUP,
            "weight_decay": 0.1,
            "grad_clip": 1.0,
            "val_fraction": VAL_FRACTION,
            "seed": seed,
            "precision": precision,
            **({"eval_every": eval_every} if eval_every else {}),
        },
        device="cpu",
    )
    timer = Timer()
    with tempfile.TemporaryDirectory(prefix="bench-lm-") as out:
        result = train(config, path, out, timer)
    tokens = timer.steps_timed * BATCH * CONTEXT
    return {
        "steps": result.steps,
        "tokens_per_second": tokens / timer.train_s if timer.train_s > 0 else 0.0,
        "train_seconds": timer.train_s,
        "val_loss": result.metrics["val_loss"],
        "train_loss": result.metrics.get("train_loss"),
        # jobformer's own clock (first step included); it counts callback time, so an interleaved
        # partner's steps too: only meaningful in sequential mode.
        "own_tokens_per_second": result.tokens_per_second,
        "data": result.data,
        "evals": timer.evals,
        "eval_seconds": timer.eval_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps for each loop (default 2000)")
    p.add_argument("--quick", action="store_true", help="30 steps: a smoke run, numbers meaningless")
    p.add_argument("--json", action="store_true", help="also print one JSON object as the last line")
    p.add_argument("--only", choices=["reference", "jobformer"], help="run one loop only")
    p.add_argument(
        "--sequential",
        action="store_true",
        help="run the reference to the end, then jobformer (default: alternate them step by step)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="jobformer's training.precision ('auto' is float32 on the CPU); the reference is float32",
    )
    args = p.parse_args(argv)
    steps = 30 if args.quick else args.steps
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_file():
        p.error(f"{args.data} not found (the tiny Shakespeare file from ../shared/data)")
    print(
        f"tiny shakespeare char LM: {N_LAYERS} layers, {N_HEADS} heads, d_model {D_MODEL}, context "
        f"{CONTEXT}, batch {BATCH}, {steps} steps; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, jobformer precision {args.precision}, "
        f"{'sequential' if args.sequential or args.only else 'interleaved'}, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    out: dict = {"steps": steps, "threads": torch.get_num_threads(), "load_before": os.getloadavg()[0]}
    out["jobformer_precision"] = args.precision
    out["mode"] = "sequential" if args.sequential or args.only else "interleaved"
    if out["mode"] == "interleaved":
        ref = ReferenceLoop(args.data, steps, args.seed)
        out["jobformer"] = run_jobformer(args.data, steps, args.seed, args.precision, partner=ref)
        while not ref.done:  # only if jobformer stopped early
            ref.step()
        out["reference"] = ref.result()
    else:
        if args.only != "jobformer":
            ref = ReferenceLoop(args.data, steps, args.seed)
            while not ref.done:
                ref.step()
            out["reference"] = ref.result()
        if args.only != "reference":
            out["jobformer"] = run_jobformer(args.data, steps, args.seed, args.precision)
    for name in ("reference", "jobformer"):
        if name in out:
            r = out[name]
            print(
                f"{name}: tokens/s={r['tokens_per_second']:.0f} val_loss={r['val_loss']:.4f} "
                f"train_s={r['train_seconds']:.1f} steps={r['steps']}",
                flush=True,
            )
    out["load_after"] = os.getloadavg()[0]
    if "reference" in out and "jobformer" in out:
        d = out["jobformer"]["data"]
        if d.get("train_tokens", 0) + d.get("val_tokens", 0) != out["reference"]["stream_tokens"]:
            print(
                f"WARNING: the loops saw different token streams: jobformer {d.get('train_tokens')} + "
                f"{d.get('val_tokens')}, reference {out['reference']['stream_tokens']}"
            )
        ratio = out["jobformer"]["tokens_per_second"] / out["reference"]["tokens_per_second"]
        out["ratio_tokens_per_second"] = ratio
        print(f"ratio tokens/s jobformer/reference: {ratio:.2f}x")
        print(
            f"val_loss jobformer - reference: {out['jobformer']['val_loss'] - out['reference']['val_loss']:+.4f}"
        )
    print(f"load average after: {out['load_after']:.2f} (timings on a shared machine are noisy)")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
