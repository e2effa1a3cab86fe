"""The Transformer, in one file, in reading order (after nanoGPT's model.py).

    sinusoidal_encoding -> SelfAttention -> MLP -> Block -> Backbone -> TextClassifier | LanguageModel

Both models share one pre-norm backbone: token embedding + sinusoidal positional encoding (DESIGN.md
section 5), ``n_layers`` blocks of multi-head self-attention (``F.scaled_dot_product_attention``, so the
fused kernels run on CPU and GPU) and a squared-ReLU MLP, then a final LayerNorm.

- ``TextClassifier``: a bidirectional encoder. Padding (id 0) is masked out of attention and of the mean
  pooling that feeds a linear head.
- ``LanguageModel``: a causal decoder whose output projection is the token embedding (tied weights).

Shapes: B batch, T time (tokens), C channels (d_model), nh heads, hs head size, V vocabulary, K classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.ml.config import ModelConfig

PAD_ID = 0  # Vocab.PAD is always id 0 (see core/ml/tokenize.py)
# Saved in every checkpoint's meta.json and checked on load: bumped when a change makes saved weights
# compute something else. 1: GELU MLP, N(0, 0.02) init (checkpoints without the field); 2: squared ReLU.
ARCHITECTURE = 2


def sinusoidal_encoding(max_length: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)). Shape (T, C)."""
    pos = torch.arange(max_length, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_length, d_model)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq[: d_model // 2])  # odd d_model: one cos column fewer
    return pe


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention: softmax(QK^T / sqrt(hs)) V per head."""

    def __init__(self, cfg: ModelConfig, causal: bool) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.causal = causal
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # q, k, v for all heads in one matmul
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)
        # attn_mask (B, 1, 1, T), True = may attend: padding keys are hidden from every query.
        dropout_p = self.dropout if self.training else 0.0
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # CPU bf16 autocast: attention's backward in bf16 runs ~3x slower than in fp32 on CPUs
            # (bench/README.md), while the matmuls around it gain ~4x; so attention alone stays fp32.
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(
                    q.float(),
                    k.float(),
                    v.float(),
                    attn_mask=attn_mask,
                    dropout_p=dropout_p,
                    is_causal=self.causal,
                ).to(q.dtype)  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=self.causal
            )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.proj(y))


class SquaredReLU(torch.autograd.Function):
    """relu(x)^2 with a hand-written backward: grad * 2 relu(x), from the one saved tensor relu(x).

    Autograd's own graph for ``r = relu(x); r * r`` keeps two references and runs four full-size passes
    backward (two products, their sum, relu's mask); this runs two. The MLP's hidden activation is the
    largest tensor of a step, so that is 3-5% of a CPU training step (bench/mlp_activation.py).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (r,) = ctx.saved_tensors
        return (grad * r).mul_(2.0)


class MLP(nn.Module):
    """Position-wise feed-forward: proj(relu(fc(x))^2).

    Squared ReLU (So et al. 2021, "Primer") instead of GELU: on tiny Shakespeare it lowers the validation
    loss by about 0.02-0.03 at equal steps, and on CPUs it is cheaper than GELU's erf (bench/README.md).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.dim_feedforward)
        self.proj = nn.Linear(cfg.dim_feedforward, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(SquaredReLU.apply(self.fc(x))))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x)). Pre-norm trains without a long warmup."""

    def __init__(self, cfg: ModelConfig, causal: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg, causal)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        x = x + self.mlp(self.ln_2(x))
        return x  # (B, T, C)


class Backbone(nn.Module):
    """Embeddings + positional encoding + blocks + final LayerNorm, shared by both task models."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, causal: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        # A buffer, not a parameter: moves with .to(device), is never trained, and is not saved
        # (persistent=False), so checkpoints hold only learned weights.
        self.register_buffer("pos_enc", sinusoidal_encoding(cfg.max_length, cfg.d_model), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, causal) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        # The embedding is initialised small (std 0.02) because it doubles as the LM output layer; the
        # classic sqrt(d_model) factor brings tokens to a scale comparable with the unit-amplitude encoding.
        self.emb_scale = math.sqrt(cfg.d_model)

    def forward(self, idx: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        T = idx.size(1)
        if idx.size(1) > self.cfg.max_length:
            raise ValueError(
                f"sequence of {T} tokens is longer than model.max_length ({self.cfg.max_length})"
            )
        x = self.tok_emb(idx) * self.emb_scale + self.pos_enc[:T]  # (B, T, C)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.ln_f(x)  # (B, T, C)


def _init_weights(model: nn.Module, n_layers: int) -> None:
    """Linear weights N(0, 1/fan_in) (LeCun), so a layer's outputs keep its inputs' scale at any width;
    residual projections also scaled by 1/sqrt(2 * n_layers) (GPT-2), so the residual stream's variance
    does not grow with depth. The output layers (the classifier head, the embedding that the language
    model's output shares) N(0, 0.02), so training starts from near-uniform predictions; zero biases,
    LayerNorm gains 1.

    GPT-2's fixed 0.02 for every matrix suits d_model 768 (1/sqrt(768) = 0.036) but starves narrow models:
    at d_model 128 its blocks start ~4x too quiet, and tiny Shakespeare's validation loss after 2000 steps
    was 1.90 with it against 1.76 with this (bench/README.md).
    """
    for name, p in model.named_parameters():
        if p.dim() < 2:
            if name.endswith("bias"):
                nn.init.zeros_(p)
            continue  # LayerNorm weights keep their 1.0
        if "emb" in name or name.startswith("head."):
            nn.init.normal_(p, mean=0.0, std=0.02)  # output layers: near-uniform predictions at step 0
            continue
        std = 1.0 / math.sqrt(p.size(1))  # (out, in): fan_in is the second dimension
        if name.endswith("proj.weight"):
            std /= math.sqrt(2 * n_layers)
        nn.init.normal_(p, mean=0.0, std=std)


class TextClassifier(nn.Module):
    """Encoder + masked mean pooling + linear head."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.backbone = Backbone(cfg, vocab_size, causal=False)
        self.head = nn.Linear(cfg.d_model, num_classes)
        _init_weights(self, cfg.n_layers)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids, padded with 0 on the right; targets (B,) class ids. -> logits (B, K), loss."""
        keep = idx != PAD_ID  # (B, T)
        attn_mask = keep[:, None, None, :]  # (B, 1, 1, T), broadcast over heads and queries
        h = self.backbone(idx, attn_mask)  # (B, T, C)
        # Mean over real tokens only; clamp guards an all-padding row (never produced by the loop).
        w = keep.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
        pooled = (h * w).sum(1) / w.sum(1).clamp(min=1.0)  # (B, C)
        logits = self.head(pooled)  # (B, K)
        loss = F.cross_entropy(logits.float(), targets) if targets is not None else None
        return logits, loss


class LanguageModel(nn.Module):
    """Causal decoder; the output projection shares the token embedding's weights."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.backbone = Backbone(cfg, vocab_size, causal=True)
        _init_weights(self, cfg.n_layers)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids; targets (B, T) the next token at each position. -> logits (B, T, V), loss."""
        h = self.backbone(idx)  # (B, T, C)
        # Tied weights (Press & Wolf 2017): F.linear with the embedding matrix rather than a second
        # nn.Linear sharing it, so the state dict holds one tensor and safetensors stores it once.
        logits = F.linear(h, self.backbone.tok_emb.weight)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        stop_id: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample ``max_new_tokens`` after ``idx`` (1, T); stops early at ``stop_id``. Returns (1, T + n)."""
        T_max = self.backbone.cfg.max_length
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -T_max:])  # the context is cropped to what the encoding covers
            logits = logits[:, -1, :].float()  # (1, V)
            if temperature <= 0:  # greedy
                next_id = logits.argmax(dim=-1, keepdim=True)  # (1, 1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                probs = F.softmax(logits, dim=-1)
                next_id = torch.multinomial(probs, num_samples=1, generator=generator)  # (1, 1)
            idx = torch.cat((idx, next_id), dim=1)
            if stop_id is not None and int(next_id) == stop_id:
                break
        return idx


def build_model(task: str, cfg: ModelConfig, vocab_size: int, num_classes: int = 0) -> nn.Module:
    """The model for ``task`` ("classification" needs ``num_classes`` >= 2)."""
    if task == "classification":
        return TextClassifier(cfg, vocab_size, num_classes)
    if task == "language_modeling":
        return LanguageModel(cfg, vocab_size)
    raise ValueError(f"unknown task {task!r}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
