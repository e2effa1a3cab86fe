"""Ablations of jobformer's language model on the tiny Shakespeare bench: which choice moves val_loss.

Runs jobformer's loop (``core.ml.train.train``, the settings of ``bench/lm_shakespeare.py``) with a
variant of the model in ``core/ml/model.py`` rebuilt below with switches, and prints one JSON line with
the validation loss. The variants are comma-separated flags::

    python bench/lm_ablation.py gelu,std=0.02,logitmul=1 # the model before squared ReLU and fan-in init
    python bench/lm_ablation.py relu2,fanin               # jobformer's model (same numbers as core/ml/model.py)
    python bench/lm_ablation.py relu2,std=0.08,seed=1     # fixed N(0, 0.08) for every hidden matrix, seed 1

Flags: ``gelu`` | ``relu2`` (MLP activation, default relu2); ``fanin`` (hidden weights N(0, 1/fan_in)) or
``std=S`` (N(0, S), GPT-2 style; default 0.02); ``noresscale`` (no 1/sqrt(2 n_layers) on residual
projections); ``nobias``; ``rms`` (RMSNorm for LayerNorm); ``zeroproj`` (residual projections start at 0);
``qknorm``; ``pelearn`` (a learned table added to the sinusoidal encoding); ``pemul=X``, ``embmul=X``,
``logitmul=X`` (scale the encoding, the token embedding's input factor, the output logits: default
core/ml/model.py's LOGIT_SCALE, 2; ``logitmul=1`` is the model before it); ``minlr=X``
(cosine floor as a fraction of the peak); ``warmup=N``; ``seed=N``; ``steps=N``.

Only the validation loss is meant to be read: a run takes ~1 minute on 2 cores; run one per core with
``--threads 1`` to try two at once (the thread count moves the loss a little, ~0.002 seen).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import lm_shakespeare as bench  # noqa: E402

import core.ml.optim as optim  # noqa: E402
import core.ml.trainer as loop  # noqa: E402
from core.ml.model import LOGIT_SCALE, SquaredReLU, sinusoidal_encoding  # noqa: E402


class Variant:
    def __init__(self, spec: str) -> None:
        self.flags = {f for f in spec.split(",") if f and "=" not in f}
        self.values = dict(f.split("=", 1) for f in spec.split(",") if "=" in f)

    def __contains__(self, flag: str) -> bool:
        return flag in self.flags

    def get(self, key: str, default: float | None) -> float | None:
        return float(self.values[key]) if key in self.values else default


def build_lm(v: Variant):
    bias = "nobias" not in v

    def norm(d: int) -> nn.Module:
        return nn.RMSNorm(d) if "rms" in v else nn.LayerNorm(d, bias=bias)

    class Attention(nn.Module):
        def __init__(self, cfg) -> None:
            super().__init__()
            self.nh = cfg.n_heads
            self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=bias)
            self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=bias)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v_ = (t.view(B, T, self.nh, C // self.nh).transpose(1, 2) for t in self.qkv(x).split(C, 2))
            if "qknorm" in v:
                q, k = F.rms_norm(q, (q.size(-1),)), F.rms_norm(k, (k.size(-1),))
            y = F.scaled_dot_product_attention(q, k, v_, is_causal=True)
            return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class MLP(nn.Module):
        def __init__(self, cfg) -> None:
            super().__init__()
            self.fc = nn.Linear(cfg.d_model, cfg.dim_feedforward, bias=bias)
            self.proj = nn.Linear(cfg.dim_feedforward, cfg.d_model, bias=bias)

        def forward(self, x):
            h = self.fc(x)
            return self.proj(F.gelu(h) if "gelu" in v else SquaredReLU.apply(h))

    class Block(nn.Module):
        def __init__(self, cfg) -> None:
            super().__init__()
            self.ln_1, self.attn, self.ln_2, self.mlp = (
                norm(cfg.d_model),
                Attention(cfg),
                norm(cfg.d_model),
                MLP(cfg),
            )

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class LM(nn.Module):
        def __init__(self, cfg, vocab_size: int) -> None:
            super().__init__()
            self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
            self.register_buffer(
                "pos_enc", sinusoidal_encoding(cfg.max_length, cfg.d_model), persistent=False
            )
            if "pelearn" in v:
                self.pe_extra = nn.Parameter(torch.zeros(cfg.max_length, cfg.d_model))
            self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
            self.ln_f = norm(cfg.d_model)
            self.emb_scale = math.sqrt(cfg.d_model) * v.get("embmul", 1.0)
            std = v.get("std", 0.02)
            for name, p in self.named_parameters():  # the order of core/ml/model.py: same draws
                if p.dim() < 2:
                    if name.endswith("bias"):
                        nn.init.zeros_(p)
                    continue
                if name == "pe_extra":
                    continue
                if name == "tok_emb.weight":
                    nn.init.normal_(p, std=0.02)
                    continue
                if "zeroproj" in v and name.endswith("proj.weight"):
                    nn.init.zeros_(p)
                    continue
                s = 1 / math.sqrt(p.size(1)) if "fanin" in v else std
                if name.endswith("proj.weight") and "noresscale" not in v:
                    s /= math.sqrt(2 * cfg.n_layers)
                nn.init.normal_(p, std=s)

        def forward(self, idx, targets=None):
            T = idx.size(1)
            pe = self.pos_enc[:T] * v.get("pemul", 1.0)
            if "pelearn" in v:
                pe = pe + self.pe_extra[:T]
            x = self.tok_emb(idx) * self.emb_scale + pe
            for block in self.blocks:
                x = block(x)
            logits = F.linear(self.ln_f(x) * v.get("logitmul", LOGIT_SCALE), self.tok_emb.weight)
            loss = None
            if targets is not None:
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
            return logits, loss

    return LM


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variant", help="comma-separated flags, e.g. relu2,fanin (see the module docstring)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    v = Variant(args.variant)
    LM = build_lm(v)
    loop.build_model = lambda task, cfg, vocab_size, num_classes=0: LM(cfg, vocab_size)
    if v.get("minlr", None) is not None:
        optim.MIN_LR_RATIO = v.get("minlr", None)
    if v.get("warmup", None) is not None:
        bench.WARMUP = int(v.get("warmup", None))
    t0 = time.perf_counter()
    r = bench.run_jobformer(bench.DATA, int(v.get("steps", 2000)), int(v.get("seed", 0)))
    out = {
        "variant": args.variant,
        "val_loss": round(r["val_loss"], 4),
        "seconds": round(time.perf_counter() - t0),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
