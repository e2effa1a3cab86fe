"""Text to text against the PyTorch translation tutorial's model, in the same run (issue 13).

The reference is the classic GRU encoder-decoder with (Bahdanau) attention of the PyTorch tutorial
"NLP From Scratch: Translation with a Sequence to Sequence Network and Attention", written here in plain
PyTorch: an embedding + GRU encoder, a decoder GRU fed its previous token and an additive-attention
context, teacher forcing, Adam. Both models train on the same split of the same pairs (a random
--pairs of ../shared/data/translation; all 76k by default), with the same
tokenization and vocabularies, for the same wall time (--seconds each), then decode the same validation
sample greedily. Printed: BLEU and chrF (sacrebleu), training tokens/s, and for jobformer beam search and
decoding sentences/s with and without the KV cache.

    .venv/bin/python bench/seq2seq.py --seconds 150 --sample 500
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.ml import seq2seq  # noqa: E402
from core.ml.config import TrainConfig  # noqa: E402
from core.ml.data import load_texts, split_indices  # noqa: E402
from core.ml.decode import beam_search, greedy_decode  # noqa: E402
from core.ml.optim import lr_at  # noqa: E402
from core.ml.tasks import TextToTextTask, pad_rows  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "translation" / "eng_fra.tsv"


class GRUEncoder(nn.Module):
    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden, padding_idx=0)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)

    def forward(self, src):
        out, h = self.gru(self.emb(src))  # (B, S, H), (1, B, H)
        return out, h


class AttnDecoder(nn.Module):
    """The tutorial's AttnDecoderRNN: Bahdanau attention over the encoder outputs, one step at a time."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden, padding_idx=0)
        self.Wa, self.Ua, self.Va = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)
        self.gru = nn.GRU(2 * hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def step(self, tok, h, enc, mask):
        q = h.permute(1, 0, 2)  # (B, 1, H)
        scores = self.Va(torch.tanh(self.Wa(q) + self.Ua(enc))).squeeze(2)  # (B, S)
        scores = scores.masked_fill(~mask, float("-inf"))
        ctx = torch.bmm(F.softmax(scores, dim=-1).unsqueeze(1), enc)  # (B, 1, H)
        out, h = self.gru(torch.cat((self.emb(tok), ctx), dim=2), h)
        return self.out(out.squeeze(1)), h  # (B, V), (1, B, H)


def gru_loss(enc, dec, src, tgt):
    out, h = enc(src)
    mask = src != 0
    losses = []
    for t in range(tgt.size(1) - 1):  # teacher forcing, as the tutorial
        logits, h = dec.step(tgt[:, t : t + 1], h, out, mask)
        losses.append(F.cross_entropy(logits, tgt[:, t + 1], ignore_index=0, reduction="sum"))
    return torch.stack(losses).sum() / (tgt[:, 1:] != 0).sum()


@torch.no_grad()
def gru_greedy(enc, dec, src, bos, eos, max_len):
    out, h = enc(src)
    mask = src != 0
    tok = torch.full((src.size(0), 1), bos, dtype=torch.long)
    rows = []
    for _ in range(max_len):
        logits, h = dec.step(tok, h, out, mask)
        tok = logits.argmax(-1, keepdim=True)
        rows.append(tok)
    ids = torch.cat(rows, 1).tolist()
    return [r[: r.index(eos)] if eos in r else r for r in ids]


def train_for(seconds, params, loss_fn, batches, lr):
    opt = torch.optim.Adam(params, lr=lr)
    start, steps, tokens = time.monotonic(), 0, 0
    while time.monotonic() - start < seconds:
        src, tgt = batches(steps)
        lr_now = lr_at(steps, lr, 100, 10**9)
        for g in opt.param_groups:
            g["lr"] = lr_now
        loss = loss_fn(src, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        steps += 1
        tokens += int((src != 0).sum()) + int((tgt[:, 1:] != 0).sum())
    return steps, tokens / (time.monotonic() - start), float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=0, help="a random sample of this many pairs (0: all)")
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--sample", type=int, default=500)
    args = ap.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    tmp = Path("/tmp/jobformer_bench_seq2seq.tsv")
    # A random sample of the pairs (the file is sorted by English length: its first lines are one to three
    # words long, too short for BLEU's 4-grams to say anything).
    with DATA.open(encoding="utf-8") as f:
        lines = f.readlines()
    if 0 < args.pairs < len(lines):
        lines = random.Random(0).sample(lines, args.pairs)
    tmp.write_text("en\tfr\n" + "".join(lines), encoding="utf-8")
    config = TrainConfig.model_validate(
        {
            "task": "text_to_text",
            "source_column": "en",
            "target_column": "fr",
            "target_tokenizer": {"language": "fr"},
            "model": {
                "d_model": 128,
                "n_heads": 4,
                "n_layers": 2,
                "dim_feedforward": 512,
                "dropout": 0.1,
                "max_length": 24,
            },
            "training": {"batch_size": 64, "learning_rate": 2e-3, "seed": 0},
            "device": "cpu",
        }
    )
    data = load_texts(tmp, config)
    src_tok, _ = seq2seq.tokenizers(config)
    task = TextToTextTask(config, data, src_tok.tokenize(data.texts), torch.device("cpu"))
    _, val_idx = split_indices(len(data.texts), config.training.val_fraction, 0)
    sample = val_idx[: args.sample]
    T = config.model.max_length
    src_rows = seq2seq.encode_sources(task.vocab, src_tok.tokenize([data.texts[i] for i in sample]), T)
    refs = [data.targets[i].lower() for i in sample]
    tv = task.vocab.target

    def batches(step):
        b = task.batch(step)
        return b.x, b.y

    def bleu_of(decode):
        hyps = []
        for i in range(0, len(src_rows), 64):
            src, _ = pad_rows(src_rows[i : i + 64])
            hyps += [task.detokenize(tv.decode(r)) for r in decode(src)]
        return seq2seq.bleu_chrf(hyps, refs)

    print(
        f"{len(task.train_src):,} training pairs, {len(sample)} validation sentences decoded, "
        f"vocabularies {len(task.vocab):,} / {len(tv):,}, {args.seconds:g} s of training each, "
        f"{torch.get_num_threads()} threads"
    )
    # jobformer's Transformer
    model = seq2seq.build_model(config, task.vocab)
    model.train()
    steps, tps, loss = train_for(
        args.seconds,
        list(model.parameters()),
        lambda s, t: model(s, t)[1],
        batches,
        config.training.learning_rate,
    )
    model.eval()
    kw = dict(bos_id=tv.cls_id, eos_id=tv.eos_id, max_new_tokens=T)
    tf_bleu = bleu_of(lambda s: greedy_decode(model, s, **kw))
    beam_bleu = bleu_of(lambda s: beam_search(model, s, beam_size=4, length_penalty=1.0, **kw))
    speeds = {}
    for name, cache in (("cache", True), ("no_cache", False)):
        t0 = time.perf_counter()
        bleu_of(lambda s, c=cache: greedy_decode(model, s, use_cache=c, **kw))
        speeds[name] = len(sample) / (time.perf_counter() - t0)
    print(
        f"transformer: {steps} steps, {tps:,.0f} tokens/s, loss {loss:.3f}, greedy BLEU {tf_bleu[0]:.2f} "
        f"chrF {tf_bleu[1]:.2f}, beam 4 BLEU {beam_bleu[0]:.2f} chrF {beam_bleu[1]:.2f}"
    )
    print(
        f"transformer greedy decoding: {speeds['cache']:.1f} sentences/s with the KV cache, "
        f"{speeds['no_cache']:.1f} without ({speeds['cache'] / speeds['no_cache']:.2f}x)"
    )
    # the tutorial's GRU with attention (hidden 256, as the tutorial)
    torch.manual_seed(0)
    enc, dec = GRUEncoder(len(task.vocab), 256), AttnDecoder(len(tv), 256)
    params = [*enc.parameters(), *dec.parameters()]
    steps, gtps, loss = train_for(args.seconds, params, lambda s, t: gru_loss(enc, dec, s, t), batches, 1e-3)
    enc.eval()
    dec.eval()
    t0 = time.perf_counter()
    gru_bleu = bleu_of(lambda s: gru_greedy(enc, dec, s, tv.cls_id, tv.eos_id, T))
    gru_speed = len(sample) / (time.perf_counter() - t0)
    print(
        f"gru+attention: {steps} steps, {gtps:,.0f} tokens/s, loss {loss:.3f}, greedy BLEU {gru_bleu[0]:.2f} "
        f"chrF {gru_bleu[1]:.2f}, decoding {gru_speed:.1f} sentences/s"
    )
    print(
        f"ratio transformer/gru: BLEU {tf_bleu[0] / max(gru_bleu[0], 1e-9):.2f}x, tokens/s {tps / gtps:.2f}x"
    )


if __name__ == "__main__":
    main()
