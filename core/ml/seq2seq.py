"""Text to text's pieces that training and prediction share (docs/design.md, "Text to text"): the pair of
vocabularies, how pairs become ids, the model built from or loaded with them, and its evaluation.

The checkpoint format stays that of the other tasks: ``vocab.json`` is the source vocabulary's
``{"version": 1, "tokens": [...]}`` with, beside it, ``"target_tokens"`` (absent when the vocabulary is
shared), so ``checkpoint.load_checkpoint`` reads the source vocabulary unchanged and ``load_pair_vocab``
the pair.

A target is ``<cls>`` (the decoder's start token) + its first ``max_length - 1`` tokens + ``<eos>``; a
source is its first ``max_length`` tokens. Evaluation is the teacher-forced loss over the validation pairs,
then BLEU and chrF (sacrebleu, the standard implementation) of a fixed sample of them decoded greedily.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sacrebleu
import torch
import torch.nn.functional as F

from core.ml import checkpoint as ckpt
from core.ml.config import TrainConfig
from core.ml.decode import greedy_decode
from core.ml.model import PAD_ID, EncoderDecoder
from core.ml.tokenize import Tokenizer, Vocab, build_tokenizer

EVAL_SAMPLE = 200  # validation pairs decoded for BLEU and chrF at each evaluation (evenly spaced, fixed)
EVAL_BATCH = 64


class PairVocab(Vocab):
    """The source vocabulary (this object) and the target's (``target``: this object when shared)."""

    def __init__(self, itos: Sequence[str], target_itos: Sequence[str] | None = None) -> None:
        super().__init__(itos)
        self.target: Vocab = Vocab(target_itos) if target_itos is not None else self
        self.shared = target_itos is None

    def to_dict(self) -> dict:
        d = super().to_dict()
        if not self.shared:
            d["target_tokens"] = list(self.target.itos)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PairVocab:
        base = Vocab.from_dict(d)  # the same checks as every vocabulary
        target = d.get("target_tokens")
        return cls(base.itos, Vocab.from_dict({"tokens": target}).itos if target is not None else None)


def load_pair_vocab(path: str | Path) -> PairVocab:
    """The vocabularies of the text-to-text checkpoint directory ``path``."""
    return PairVocab.from_dict(ckpt.load_json(path, ckpt.VOCAB_FILE))


def tokenizers(config: TrainConfig) -> tuple[Tokenizer, Tokenizer]:
    """The source's and the target's tokenizers."""
    assert config.target_tokenizer is not None  # resolved by TrainConfig for text_to_text
    return build_tokenizer(config.tokenizer), build_tokenizer(config.target_tokenizer)


def encode_sources(vocab: Vocab, token_lists: Sequence[Sequence[str]], max_length: int) -> list[list[int]]:
    """A source's first ``max_length`` tokens as ids (training and prediction both encode with this)."""
    return [vocab.encode(t[:max_length]) for t in token_lists]


def encode_targets(vocab: Vocab, token_lists: Sequence[Sequence[str]], max_length: int) -> list[list[int]]:
    """``<cls>`` + the first ``max_length - 1`` tokens + ``<eos>``: the decoder reads all but the last."""
    return [[vocab.cls_id, *vocab.encode(t[: max_length - 1]), vocab.eos_id] for t in token_lists]


def build_model(config: TrainConfig, vocab: PairVocab) -> EncoderDecoder:
    return EncoderDecoder(
        config.model,
        len(vocab),
        len(vocab.target),
        shared_vocab=vocab.shared,
        label_smoothing=config.training.label_smoothing,
    )


def load_model(saved: ckpt.SavedRun, device: str | torch.device = "cpu") -> tuple[EncoderDecoder, PairVocab]:
    """The model of text-to-text checkpoint ``saved``, with its weights, on ``device``, and its vocabularies."""
    vocab = load_pair_vocab(saved.path)
    model = build_model(saved.train_config(), vocab)
    model.load_state_dict(ckpt.load_weights(saved.path))
    return model.to(device), vocab


def bleu_chrf(hypotheses: list[str], references: list[str]) -> tuple[float, float]:
    """Corpus BLEU and chrF (sacrebleu's defaults: 13a tokenization, chrF with character 6-grams).

    Hypotheses are detokenized by joining tokens with spaces ("il pleut ."); ``force`` silences sacrebleu's
    note about that: its 13a tokenizer splits the punctuation of the references the same way."""
    bleu = sacrebleu.corpus_bleu(hypotheses, [references], force=True).score
    chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
    return float(bleu), float(chrf)


def sample_indices(n: int, k: int = EVAL_SAMPLE) -> list[int]:
    """``k`` evenly spaced indices of ``range(n)`` (all of them when n <= k): the fixed decoded sample."""
    if n <= k:
        return list(range(n))
    return torch.linspace(0, n - 1, k).long().tolist()


@torch.no_grad()
def evaluate_text_to_text(
    model: EncoderDecoder,
    val_batches: list[tuple[torch.Tensor, torch.Tensor]],
    sample_batches: list[torch.Tensor],
    references: list[str],
    vocab: PairVocab,
    detokenize,
    device: torch.device,
    autocast,
) -> dict[str, float]:
    """``val_loss`` (per target token, teacher forced) over ``val_batches`` (padded source, target), and
    ``val_bleu`` and ``val_chrf`` of the sources ``sample_batches`` decoded greedily against
    ``references`` (their target texts, in order)."""
    was_training = model.training
    model.eval()
    loss_sum, n_tokens = 0.0, 0
    for src, tgt in val_batches:
        tgt = tgt.to(device)
        with autocast:
            logits, _ = model(src.to(device), tgt)
        # Plain cross-entropy (no label smoothing): comparable across runs and with the unigram entropy.
        loss_sum += float(
            F.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)),
                tgt[:, 1:].reshape(-1),
                ignore_index=PAD_ID,
                reduction="sum",
            )
        )
        n_tokens += int((tgt[:, 1:] != PAD_ID).sum())
    hypotheses: list[str] = []
    tv = vocab.target
    for src in sample_batches:
        with autocast:
            ids = greedy_decode(
                model,
                src.to(device),
                bos_id=tv.cls_id,
                eos_id=tv.eos_id,
                max_new_tokens=model.decoder.cfg.max_length,
            )
        hypotheses += [detokenize(tv.decode(r)) for r in ids]
    model.train(was_training)
    bleu, chrf = bleu_chrf(hypotheses, references)
    return {"val_loss": loss_sum / max(1, n_tokens), "val_bleu": bleu, "val_chrf": chrf}
