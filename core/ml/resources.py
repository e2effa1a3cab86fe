"""What a job needs from a worker (docs/design.md, "Memory"): the memory each of its processes uses while
training, estimated from the config alone (no torch, no data: the API and the worker's main process
route jobs with it), unless the job states it (``resources.memory_gb``).

The estimate is an upper bound meant for routing, not a promise: the model state AdamW keeps (weights,
gradients and two moments in float32), the activations one micro-batch keeps for the backward pass
(attention scores included, as PyTorch's CPU path materialises them), the logits over the vocabulary for
generative tasks, and the runtime itself. ``tests/core/ml/test_memory_estimate.py`` holds it against the
peak resident memory of real training runs.
"""

from __future__ import annotations

import math

from core.ml.config import TrainConfig

GIB = 1024**3
# What a process holds before the model: the interpreter, torch's libraries and allocator pools, the
# data (on a GPU: the CUDA context). Measured on CPU at about 0.45 GiB (tests/core/ml/test_memory_estimate).
RUNTIME_BYTES = int(0.6 * GIB)
# AdamW in float32: the weight, its gradient and two moments.
STATE_BYTES_PER_PARAMETER = 16
# float32 values one block keeps per token for the backward pass, per unit of width: attention (input
# norm, q k v, output, projection, dropouts, residuals) about 14 x d_model, the MLP (fc output,
# activation, dropout) 3 x dim_feedforward; the scores, probabilities, dropout mask and output of
# attention 4 x heads x keys (fitted to the CPU runs of tests/core/ml/test_memory_estimate.py).
WIDTH_FACTOR, FFN_FACTOR, SCORE_FACTOR = 14, 3, 4
# The logits, their softmax and its gradient, per token and vocabulary entry (language models, decoders).
LOGIT_FACTOR = 3


def estimate_memory_bytes(config: TrainConfig) -> int:
    """Bytes one process of the job uses at its peak while training (an upper bound; module docstring)."""
    model, training = config.model, config.training
    vocab = config.tokenizer.max_vocab
    generative = config.task != "classification"
    bag = config.task == "classification" and model.ngrams > 0
    params = model.estimate_parameters(vocab, num_classes=2 if bag else 0)
    if config.task == "text_to_text":  # a decoder as deep as the encoder, with cross-attention
        params += model.n_layers * (6 * model.d_model**2 + 2 * model.d_model * model.dim_feedforward)
    state = params * STATE_BYTES_PER_PARAMETER

    micro = math.ceil(training.batch_size / config.resources.processes / training.grad_accum_steps)
    tokens = micro * model.max_length
    d, f, keys = model.d_model, model.dim_feedforward, model.max_length
    per_token_block = 4 * (WIDTH_FACTOR * d + FFN_FACTOR * f + SCORE_FACTOR * model.n_heads * keys)
    blocks = model.n_layers * (3 if config.task == "text_to_text" else 1)  # decoder: self + cross
    if model.gradient_checkpointing:  # each block's input kept; in the backward pass, one block's
        activations = tokens * (blocks * 4 * d + 2 * per_token_block)  # activations and their gradients
    else:
        activations = tokens * blocks * per_token_block
    logits = tokens * vocab * 4 * LOGIT_FACTOR if generative else 0
    return RUNTIME_BYTES + state + activations + logits


def memory_gib(config: TrainConfig) -> float:
    """GiB one process of the job needs: ``resources.memory_gb`` when the job states it, else the estimate."""
    stated = config.resources.memory_gb
    return float(stated) if stated is not None else estimate_memory_bytes(config) / GIB
