"""The Transformer, in one file, in reading order (after nanoGPT's model.py).

    sinusoidal_encoding -> Attention -> MLP -> Block -> Backbone
        -> TextClassifier | LanguageModel | EncoderDecoder

All models share one pre-norm backbone: token embedding + sinusoidal positional encoding
(docs/design.md, "Training config and the model"), ``n_layers`` blocks of multi-head self-attention (``F.scaled_dot_product_attention``, so the
fused kernels run on CPU and GPU) and a squared-ReLU MLP, then a final LayerNorm.

- ``TextClassifier``: a bidirectional encoder. Padding (id 0) is masked out of attention and of the mean
  pooling that feeds a linear head.
- ``LanguageModel``: a causal decoder whose output projection is the token embedding (tied weights).
- ``EncoderDecoder``: an encoder backbone over the source and a decoder backbone whose blocks add
  cross-attention to the encoder's output (docs/design.md, "Text to text").

Shapes: B batch, T time (tokens), C channels (d_model), nh heads, hs head size, V vocabulary, K classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from core.ml.config import ModelConfig

PAD_ID = 0  # Vocab.PAD is always id 0 (see core/ml/tokenize.py)
# Saved in every checkpoint's meta.json and checked on load: bumped when a change makes saved weights
# compute something else. 1: GELU MLP, N(0, 0.02) init (checkpoints without the field); 2: squared ReLU.
# (LOGIT_SCALE needed no bump: it is a tensor of the weights, and weights without it load at 1x.)
ARCHITECTURE = 2


def sinusoidal_encoding(max_length: int, d_model: int) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d)). Shape (T, C)."""
    pos = torch.arange(max_length, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(max_length, d_model)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq[: d_model // 2])  # odd d_model: one cos column fewer
    return pe


class Attention(nn.Module):
    """Multi-head scaled dot-product attention: softmax(QK^T / sqrt(hs)) V per head.

    Self-attention (queries, keys and values from ``x``) or, with ``cross``, cross-attention: queries from
    ``x``, keys and values from another sequence (``memory``, the encoder's output). One module for both
    (docs/design.md, "Text to text"), so the decoder's cross-attention is this code, not a second copy.

    ``cache`` (a dict, decoding only) keeps keys and values between steps: a self-attention layer appends
    this step's, a cross-attention layer computes the memory's once. With a cache ``x`` is the new tokens
    after those cached, and a single new query may attend to every cached key (no causal mask needed).
    """

    def __init__(self, cfg: ModelConfig, causal: bool, cross: bool = False) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.causal = causal
        self.cross = cross
        self.dropout = cfg.dropout
        if cross:
            self.q = nn.Linear(cfg.d_model, cfg.d_model)
            self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model)  # k, v of the memory in one matmul
        else:
            self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # q, k, v for all heads in one matmul
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, C = t.shape
        return t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, nh, T, hs)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        cache: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        if self.cross:
            assert memory is not None or (cache is not None and "k" in cache), "cross-attention needs memory"
            q = self._heads(self.q(x))  # (B, nh, T, hs)
            if cache is not None and "k" in cache:
                k, v = cache["k"], cache["v"]  # (B, nh, S, hs): the memory's, computed at the first step
            else:
                assert memory is not None
                k, v = (self._heads(t) for t in self.kv(memory).split(C, dim=2))  # (B, nh, S, hs)
                if cache is not None:
                    cache["k"], cache["v"] = k, v
        else:
            q, k, v = (self._heads(t) for t in self.qkv(x).split(C, dim=2))  # 3 x (B, nh, T, hs)
            if cache is not None:
                if "k" in cache:
                    assert T == 1, "a cached step decodes one token at a time"
                    k = torch.cat((cache["k"], k), dim=2)  # (B, nh, t + 1, hs)
                    v = torch.cat((cache["v"], v), dim=2)
                cache["k"], cache["v"] = k, v
        # attn_mask (B, 1, 1, S), True = may attend: padding keys are hidden from every query. Causal only
        # when queries and keys are the same positions (one query over a cache sees all of its keys).
        is_causal = self.causal and q.size(2) > 1
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
                    is_causal=is_causal,
                ).to(q.dtype)  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
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
    """Pre-norm residual block: x + attn(ln(x)), then x + mlp(ln(x)). Pre-norm trains without a long warmup.

    A decoder block of an encoder-decoder (``cross``) has a third residual step between the two:
    x + cross_attn(ln(x), memory), attention to the encoder's output."""

    def __init__(self, cfg: ModelConfig, causal: bool, cross: bool = False) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg, causal)
        if cross:
            self.ln_cross = nn.LayerNorm(cfg.d_model)
            self.cross_attn = Attention(cfg, causal=False, cross=True)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        cache: dict[str, dict[str, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, cache=cache["self"] if cache is not None else None)
        if hasattr(self, "cross_attn"):
            cross_cache = cache["cross"] if cache is not None else None
            x = x + self.cross_attn(self.ln_cross(x), memory_mask, memory, cross_cache)
        x = x + self.mlp(self.ln_2(x))
        return x  # (B, T, C)


class Backbone(nn.Module):
    """Embeddings + positional encoding + blocks + final LayerNorm, shared by all three task models.

    ``cross`` makes it an encoder-decoder's decoder: every block also attends to ``memory``.
    ``shared_emb``: another backbone's token embedding, read but not owned (not in this state dict)."""

    def __init__(
        self,
        cfg: ModelConfig,
        vocab_size: int,
        causal: bool,
        cross: bool = False,
        shared_emb: nn.Embedding | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        if shared_emb is None:
            self.tok_emb = nn.Embedding(vocab_size, cfg.d_model)
        else:  # unregistered: safetensors refuses a tensor saved under two names, so only its owner saves it
            object.__setattr__(self, "tok_emb", shared_emb)
        # A buffer, not a parameter: moves with .to(device), is never trained, and is not saved
        # (persistent=False), so checkpoints hold only learned weights.
        self.register_buffer("pos_enc", sinusoidal_encoding(cfg.max_length, cfg.d_model), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, causal, cross) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.gradient_checkpointing = cfg.gradient_checkpointing  # set_gradient_checkpointing changes it
        # The embedding is initialised small (std 0.02) because it doubles as the LM output layer; the
        # classic sqrt(d_model) factor brings tokens to a scale comparable with the unit-amplitude encoding.
        self.emb_scale = math.sqrt(cfg.d_model)

    def forward(
        self,
        idx: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        caches: list[dict] | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """``caches`` (one per block) and ``start`` (the position of idx's first token) for cached decoding."""
        T = idx.size(1)
        if start + T > self.cfg.max_length:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than model.max_length ({self.cfg.max_length})"
            )
        x = self.tok_emb(idx) * self.emb_scale + self.pos_enc[start : start + T]  # (B, T, C)
        x = self.drop(x)
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:  # docs/design.md, "One job on many processes": activations recomputed in backward
                x = checkpoint(block, x, attn_mask, memory, memory_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask, memory, memory_mask, caches[i] if caches is not None else None)
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


NGRAM_PRIME = 1_000_003  # the rolling hash's multiplier (ids are below 2**20: model.max_vocab's bound)
NGRAM_MOD = 2_147_483_647  # 2**31 - 1: the rolling hash stays below it, so no product leaves int64
NGRAM_SALT = 998_244_353  # added once per extra token, so a bigram and a unigram of equal hash part ways


def ngram_ids(idx: torch.Tensor, n: int, buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The hashed n-grams (1 to ``n`` tokens) of right-padded token ids ``idx`` (B, T): their buckets
    (B, n * T) and which are real (B, n * T).

    The k-token n-gram starting at t hashes as h = (h(k-1 tokens at t) * NGRAM_PRIME + idx[t + k - 1])
    mod NGRAM_MOD, then (h + (k - 1) * NGRAM_SALT) mod ``buckets``: integer arithmetic only, the same on every
    device and in an exported ONNX graph (deterministic: no Python ``hash``). An n-gram is real when its
    last token is (padding is only on the right); a text shorter than k tokens has no k-gram.
    """
    T = idx.size(1)
    # Padded with n - 1 ids more on the right, every order has T starts: no branch on the length, so an
    # exported graph takes any length (the extra starts hold padding and are masked out).
    idx = F.pad(idx, (0, n - 1), value=PAD_ID)  # (B, T + n - 1)
    keep = idx != PAD_ID
    h = idx
    parts, masks = [], []
    for k in range(n):
        if k:
            h = (h[:, :-1] * NGRAM_PRIME + idx[:, k:]) % NGRAM_MOD  # (B, T + n - 1 - k)
        parts.append(((h + k * NGRAM_SALT) % buckets)[:, :T])
        masks.append(keep[:, k:][:, :T])
    return torch.cat(parts, dim=1), torch.cat(masks, dim=1)


class NgramBag(nn.Module):
    """A bag of hashed token n-grams (fastText, Joulin et al. 2017): the mean of their embeddings, one
    vector per text (docs/design.md, "Training config and the model"). Word n-grams are what TF-IDF + a
    linear model score; beside the Transformer's pooled vector they let a small labelled set be learned
    as fast as that baseline learns it, and the Transformer adds to it. Its input is the classifier's
    own token ids, so prediction, evaluation and export compute it exactly as training does."""

    def __init__(self, n: int, buckets: int, dim: int) -> None:
        super().__init__()
        self.n, self.buckets = n, buckets
        self.emb = nn.Embedding(buckets, dim)  # "emb": no weight decay, N(0, 0.02) init (_init_weights)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        ids, real = ngram_ids(idx, self.n, self.buckets)  # (B, N), (B, N)
        w = real.unsqueeze(-1).to(self.emb.weight.dtype)  # (B, N, 1)
        return (self.emb(ids) * w).sum(1) / w.sum(1).clamp(min=1.0)  # (B, C)


class TextClassifier(nn.Module):
    """Encoder + masked mean pooling (+ the n-gram bag, ``model.ngrams`` > 0) + linear head."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.backbone = Backbone(cfg, vocab_size, causal=False)
        width = cfg.d_model
        if cfg.ngrams:
            self.ngram = NgramBag(cfg.ngrams, cfg.ngram_buckets, cfg.d_model)
            width += cfg.d_model
        self.head = nn.Linear(width, num_classes)  # over [pooled; n-gram bag]
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
        if hasattr(self, "ngram"):
            pooled = torch.cat((pooled, self.ngram(idx).to(pooled.dtype)), dim=-1)  # (B, 2C)
        logits = self.head(pooled)  # (B, K)
        loss = F.cross_entropy(logits.float(), targets) if targets is not None else None
        return logits, loss


# The language model's tied output multiplies its logits by this: the same loss in about half the steps early
# on (bench/lm_ablation.py, 1000 steps of tiny Shakespeare: val_loss 1.937 at 1x, 1.901 at 2x, 1.899 at 3x,
# 1.903 at 4x; bench/README.md). A buffer in the weights, so a checkpoint keeps the factor it was trained
# with; one saved before it existed was trained at 1x and loads with 1x (``_logit_scale_of_old_weights``).
LOGIT_SCALE = 2.0


def _logit_scale_of_old_weights(state_dict: dict, prefix: str, *_args: object) -> None:
    state_dict.setdefault(prefix + "logit_scale", torch.tensor(1.0))


class LanguageModel(nn.Module):
    """Causal decoder; the output projection shares the token embedding's weights."""

    def __init__(self, cfg: ModelConfig, vocab_size: int) -> None:
        super().__init__()
        self.backbone = Backbone(cfg, vocab_size, causal=True)
        _init_weights(self, cfg.n_layers)
        self.register_buffer("logit_scale", torch.tensor(LOGIT_SCALE))
        self._register_load_state_dict_pre_hook(_logit_scale_of_old_weights)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids; targets (B, T) the next token at each position. -> logits (B, T, V), loss."""
        h = self.backbone(idx)  # (B, T, C)
        # Tied weights (Press & Wolf 2017): F.linear with the embedding matrix rather than a second
        # nn.Linear sharing it, so the state dict holds one tensor and safetensors stores it once.
        logits = F.linear(h * self.logit_scale.to(h.dtype), self.backbone.tok_emb.weight)  # (B, T, V)
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


class EncoderDecoder(nn.Module):
    """Text to text (Vaswani et al. 2017): a bidirectional encoder over the source, and a causal decoder
    whose blocks also attend to the encoder's output; the decoder's output projection is its token
    embedding (tied). With ``shared_vocab`` the encoder reads the same embedding table too.

    Padding (id 0) is masked out of the encoder's self-attention and of the decoder's cross-attention;
    the decoder's own padding sits after every real token, so the causal mask already hides it, and the
    loss ignores it. Training is teacher forcing: ``forward(src, tgt)`` reads ``tgt[:, :-1]`` and is scored
    on ``tgt[:, 1:]``.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        src_vocab_size: int,
        tgt_vocab_size: int,
        *,
        shared_vocab: bool = False,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if shared_vocab and src_vocab_size != tgt_vocab_size:
            raise ValueError(f"a shared vocabulary has one size, got {src_vocab_size} and {tgt_vocab_size}")
        self.label_smoothing = label_smoothing
        self.decoder = Backbone(cfg, tgt_vocab_size, causal=True, cross=True)
        shared = self.decoder.tok_emb if shared_vocab else None  # one table for both sides and the output
        self.encoder = Backbone(cfg, src_vocab_size, causal=False, shared_emb=shared)
        _init_weights(self, cfg.n_layers)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) ids, right-padded -> memory (B, S, C) and its key mask (B, 1, 1, S)."""
        mask = (src != PAD_ID)[:, None, None, :]  # (B, 1, 1, S), True = a real token
        return self.encoder(src, mask), mask

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        caches: list[dict] | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """tgt (B, T) decoder input ids (after ``start`` cached ones) -> next-token logits (B, T, V)."""
        h = self.decoder(tgt, None, memory, memory_mask, caches, start)  # (B, T, C)
        return F.linear(h, self.decoder.tok_emb.weight)  # (B, T, V): tied output layer

    def new_caches(self) -> list[dict]:
        """Empty key/value caches, one per decoder block, for ``decode`` one token at a time."""
        return [{"self": {}, "cross": {}} for _ in self.decoder.blocks]

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) source ids; tgt (B, T + 1) target ids from the start token to <eos>, padded with 0.
        -> logits (B, T, V) for tgt[:, 1:], the loss (padding ignored, optionally label-smoothed)."""
        memory, mask = self.encode(src)
        logits = self.decode(tgt[:, :-1], memory, mask)  # (B, T, V)
        loss = F.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)),
            tgt[:, 1:].reshape(-1),
            ignore_index=PAD_ID,
            label_smoothing=self.label_smoothing,
        )
        return logits, loss


def build_model(task: str, cfg: ModelConfig, vocab_size: int, num_classes: int = 0) -> nn.Module:
    """The model for ``task`` ("classification" needs ``num_classes`` >= 2)."""
    if task == "classification":
        return TextClassifier(cfg, vocab_size, num_classes)
    if task == "language_modeling":
        return LanguageModel(cfg, vocab_size)
    if task == "text_to_text":
        raise ValueError("text_to_text models have two vocabularies: build an EncoderDecoder")
    raise ValueError(f"unknown task {task!r}")


def set_gradient_checkpointing(model: nn.Module, on: bool) -> None:
    """Turn activation recomputation on or off in every backbone of ``model`` (a training choice, not part
    of the weights: a checkpoint saved with either setting loads into both)."""
    for module in model.modules():
        if isinstance(module, Backbone):
            module.gradient_checkpointing = on


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
