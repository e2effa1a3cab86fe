"""The optimizer's settings and the learning-rate schedule of the loop (``core.ml.train``)."""

from __future__ import annotations

import math

import torch

MIN_LR_RATIO = 0.1  # cosine decay ends at 10% of the peak learning rate
ADAM_BETAS = (0.9, 0.99)  # beta2 0.99: small batches make the second-moment estimate noisy (nanoGPT)


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to MIN_LR_RATIO * peak at ``total``."""
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: biases, LayerNorm gains and embeddings are not pulled towards zero."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
