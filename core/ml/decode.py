"""Decoding an ``EncoderDecoder``: greedy and beam search, batched, with or without the key/value cache
(docs/design.md, "Text to text").

Both take a batch of right-padded sources (B, S) and return, for each, the target ids generated after the
start token, without it and without the ``<eos>`` that ended them. The source is encoded once. With the
cache (the default), each step runs the decoder on the newest token only, its self-attention reading the
keys and values of the earlier ones from the cache and its cross-attention the memory's, computed at the
first step; without it, each step reruns the decoder over the whole prefix (the same tokens, slower:
bench/seq2seq.py measures both).

Beam search keeps ``beam_size`` hypotheses per source ranked by their summed log-probability; a finished
one (it produced ``<eos>``) keeps its score and continues with padding at no cost. At the end each source's
hypotheses are ranked by score / lp(length), GNMT's length penalty lp(n) = ((5 + n) / 6) ** length_penalty
(Wu et al. 2016): 0 ranks by raw score (favours short outputs), larger values favour longer ones. A
``beam_size`` of 1 is greedy decoding.
"""

from __future__ import annotations

import torch

from core.ml.model import PAD_ID, EncoderDecoder


def _max_steps(model: EncoderDecoder, max_new_tokens: int) -> int:
    # The decoder reads the start token plus all but the last generated token: max_length positions.
    return max(0, min(max_new_tokens, model.decoder.cfg.max_length))


def _cut(rows: list[list[int]], eos_id: int) -> list[list[int]]:
    out = []
    for r in rows:
        if eos_id in r:
            r = r[: r.index(eos_id)]
        out.append([t for t in r if t != PAD_ID])
    return out


@torch.inference_mode()
def greedy_decode(
    model: EncoderDecoder,
    src: torch.Tensor,
    *,
    bos_id: int,
    eos_id: int,
    max_new_tokens: int,
    use_cache: bool = True,
) -> list[list[int]]:
    """The likeliest next token at every step, for each source of ``src`` (B, S)."""
    B = src.size(0)
    memory, mask = model.encode(src)  # (B, S, C), (B, 1, 1, S)
    out = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1 + t)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    caches = model.new_caches() if use_cache else None
    for t in range(_max_steps(model, max_new_tokens)):
        if caches is not None:
            logits = model.decode(out[:, -1:], memory, mask, caches, start=t)[:, -1]  # (B, V)
        else:
            logits = model.decode(out, memory, mask)[:, -1]  # (B, V)
        nxt = logits.argmax(dim=-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, PAD_ID), nxt)
        out = torch.cat((out, nxt[:, None]), dim=1)
        done |= nxt == eos_id
        if bool(done.all()):  # one sync per step: stop as soon as every row has ended
            break
    return _cut(out[:, 1:].tolist(), eos_id)


@torch.inference_mode()
def beam_search(
    model: EncoderDecoder,
    src: torch.Tensor,
    *,
    bos_id: int,
    eos_id: int,
    max_new_tokens: int,
    beam_size: int = 4,
    length_penalty: float = 1.0,
    use_cache: bool = True,
) -> list[list[int]]:
    """The best of ``beam_size`` hypotheses per source of ``src`` (B, S), after the length penalty."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    B, K, dev = src.size(0), beam_size, src.device
    memory, mask = model.encode(src)
    memory = memory.repeat_interleave(K, dim=0)  # (B*K, S, C): beam k of source b is row b*K + k
    mask = mask.repeat_interleave(K, dim=0)  # (B*K, 1, 1, S)
    out = torch.full((B * K, 1), bos_id, dtype=torch.long, device=dev)
    scores = torch.full((B, K), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all beams start equal: keep one, or the first step picks K copies of one token
    done = torch.zeros(B * K, dtype=torch.bool, device=dev)
    lengths = torch.zeros(B * K, dtype=torch.long, device=dev)  # tokens up to and with <eos>
    caches = model.new_caches() if use_cache else None
    base = (torch.arange(B, device=dev) * K)[:, None]  # (B, 1): each source's first row
    for t in range(_max_steps(model, max_new_tokens)):
        if caches is not None:
            logits = model.decode(out[:, -1:], memory, mask, caches, start=t)[:, -1]  # (B*K, V)
        else:
            logits = model.decode(out, memory, mask)[:, -1]  # (B*K, V)
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B*K, V)
        # A finished beam continues with padding at no cost, and only with padding.
        ended = torch.full_like(logp, float("-inf"))
        ended[:, PAD_ID] = 0.0
        logp = torch.where(done[:, None], ended, logp)
        V = logp.size(-1)
        cand = (scores.view(-1, 1) + logp).view(B, K * V)  # (B, K*V)
        scores, flat = cand.topk(K, dim=-1)  # (B, K)
        rows = (base + flat // V).view(-1)  # (B*K,) the beam each new hypothesis extends
        nxt = (flat % V).view(-1)  # (B*K,)
        out = torch.cat((out[rows], nxt[:, None]), dim=1)
        lengths = torch.where(done[rows], lengths[rows], lengths[rows] + 1)
        done = done[rows] | (nxt == eos_id)
        if caches is not None:  # the self-attention caches follow their beams; the memory's are equal
            for c in caches:
                c["self"]["k"] = c["self"]["k"][rows]
                c["self"]["v"] = c["self"]["v"][rows]
        if bool(done.all()):
            break
    penalty = ((5.0 + lengths.view(B, K).float()) / 6.0) ** length_penalty
    best = (scores / penalty).argmax(dim=-1)  # (B,)
    picked = out[(base.view(-1) + best)]  # (B, 1 + t)
    return _cut(picked[:, 1:].tolist(), eos_id)
