"""The tasks the Trainer trains (docs/design.md, "The training loop"). A task owns its data (the split, the
vocabulary, the tensors), its batches, its evaluation and its metric; the Trainer owns the rest.

Classification: each example is ``<cls>`` + its first ``max_length - 1`` tokens (``encode_rows``, shared
with prediction); batches are a seeded shuffle per epoch, padded to the longest example in the batch
(``pad_rows``). Language modelling: the documents are one token stream with ``<eos>`` after each; steps
train on random windows of ``max_length + 1`` tokens (as nanoGPT's get_batch does), validation is the last
``val_fraction`` of the stream, read as fixed windows.

Resuming is exact: a classification epoch's order is a function of (seed, epoch); the language model's
windows come from ``data_rng``, whose state the Trainer saves in every checkpoint.

Text to text: pairs of a source and a target (``core.ml.seq2seq``), batched as classification is (a
seeded shuffle per epoch, padded per batch); the best checkpoint has the highest validation BLEU. Its
model has two vocabularies, so the task builds it (``make_model``), which the Trainer asks for first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from core.ml import seq2seq
from core.ml.checkpoint import SavedRun
from core.ml.config import TrainConfig
from core.ml.data import TextData, split_indices
from core.ml.errors import DataError, Problem
from core.ml.evaluate import evaluate_classifier, evaluate_lm
from core.ml.tokenize import Vocab

LM_EVAL_MAX_TOKENS = 1 << 17  # language-model validation reads at most this many tokens per evaluation


@dataclass
class Batch:
    x: torch.Tensor  # (B, L) token ids, on the device
    y: torch.Tensor  # (B,) labels or (B, L) next tokens, on the device
    tokens: int  # real (not padding) input tokens, for tokens/s


class Task(Protocol):
    """What the Trainer asks of a task. Built from the config, the data read and its tokens, the device
    and the checkpoint being resumed (whose vocabulary and labels it keeps)."""

    metric: str  # the validation metric that picks the best checkpoint and drives early stopping
    higher_is_better: bool
    vocab: Vocab
    labels: list[str]  # class names; empty for a task without classes
    steps_per_epoch: int
    data_info: dict  # rows, train_rows, val_rows, skipped_rows (and more): the result's and the event's
    warnings: list[str]  # about the data, beyond those of reading it
    data_rng: torch.Generator  # the batches' randomness beyond the seed; saved in every checkpoint

    def batch(self, step: int) -> Batch:
        """The batch of optimizer step ``step`` (0-based)."""
        ...

    def evaluate(self, model: torch.nn.Module, autocast) -> dict[str, float]:
        """``val_loss`` and the task's other metrics (``metric`` among them) on the validation split."""
        ...


def encode_rows(vocab: Vocab, token_lists: Sequence[Sequence[str]], max_length: int) -> list[list[int]]:
    """The ids a classifier reads: ``<cls>`` first (every example has a token, and long texts keep their
    beginning), then the first ``max_length - 1`` tokens. Training and prediction both encode with this."""
    return [[vocab.cls_id, *vocab.encode(t[: max_length - 1])] for t in token_lists]


def task_vocab(
    config: TrainConfig, saved: SavedRun | None, vocab: Vocab | None, train_tokens: Iterable[Sequence[str]]
) -> Vocab:
    """A task's vocabulary: the resumed checkpoint's, else the one given (a BPE model's, or the init_from
    checkpoint's), else built from the training split's tokens."""
    if saved is not None:
        return saved.vocab
    if vocab is not None:
        return vocab
    tk = config.tokenizer
    return Vocab.build(train_tokens, min_freq=tk.min_freq, max_vocab=tk.max_vocab)


def pad_rows(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids -> one right-padded (N, L) tensor (pad id 0) and their lengths (N,)."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.zeros(len(rows), int(lengths.max()) if rows else 1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out, lengths


class ClassificationTask:
    """Texts with labels; the best checkpoint has the highest validation macro-F1."""

    metric, higher_is_better = "val_f1_macro", True

    def __init__(
        self,
        config: TrainConfig,
        data: TextData,
        token_lists: list[list[str]],
        device: torch.device,
        saved: SavedRun | None = None,
        vocab: Vocab | None = None,
    ) -> None:
        tc, max_length = config.training, config.model.max_length
        self.batch_size, self.seed, self.device = tc.batch_size, tc.seed, device
        self.eval_batch_size = max(64, 2 * tc.batch_size)
        self.data_rng = torch.Generator().manual_seed(tc.seed)  # unused by this task; saved all the same
        self.warnings: list[str] = []
        assert data.labels is not None
        train_idx, val_idx = split_indices(len(token_lists), tc.val_fraction, tc.seed, data.labels)
        self.vocab = task_vocab(config, saved, vocab, (token_lists[i] for i in train_idx))
        self.labels = saved.labels if saved is not None else sorted({data.labels[i] for i in train_idx})
        label_id = {name: i for i, name in enumerate(self.labels)}
        unseen = [i for i in val_idx if data.labels[i] not in label_id]
        if unseen:
            self.warnings.append(
                f"{len(unseen)} validation rows have a label absent from training; not scored"
            )
            val_idx = [i for i in val_idx if data.labels[i] in label_id]
        if len(self.labels) < 2:
            raise DataError(
                f"classification needs at least 2 labels in the training split, found {self.labels}",
                problems=[Problem(["config", "label_column"], "fewer than 2 distinct labels")],
            )
        rows = encode_rows(self.vocab, token_lists, max_length)
        truncated = sum(len(token_lists[i]) > max_length - 1 for i in train_idx)
        if truncated > 0.1 * len(train_idx):
            self.warnings.append(
                f"{truncated} of {len(train_idx)} training texts are longer than model.max_length "
                f"({max_length}) and were truncated; raise model.max_length to use more of each text"
            )
        self.train_x, self.train_len = pad_rows([rows[i] for i in train_idx])
        self.train_y = torch.tensor([label_id[data.labels[i]] for i in train_idx])
        self.val_x, self.val_len = pad_rows([rows[i] for i in val_idx])
        self.val_y = torch.tensor([label_id[data.labels[i]] for i in val_idx])
        self.steps_per_epoch = math.ceil(len(train_idx) / tc.batch_size)
        self.data_info = {
            "rows": data.rows,
            "train_rows": len(train_idx),
            "val_rows": len(val_idx),
            "skipped_rows": data.skipped_rows,
        }
        self._perm: torch.Tensor | None = None  # this epoch's order of the training rows

    def batch(self, step: int) -> Batch:
        epoch_idx, pos = divmod(step, self.steps_per_epoch)
        if self._perm is None or pos == 0:  # the order of an epoch depends only on (seed, epoch): resumable
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch_idx)
            self._perm = torch.randperm(len(self.train_y), generator=g)
        idx = self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]
        lengths = self.train_len[idx]
        x = self.train_x[idx, : int(lengths.max())].to(self.device, non_blocking=True)  # (B, L<=T)
        y = self.train_y[idx].to(self.device, non_blocking=True)  # (B,)
        return Batch(x, y, int(lengths.sum()))

    def evaluate(self, model: torch.nn.Module, autocast) -> dict[str, float]:
        return evaluate_classifier(
            model,
            self.val_x,
            self.val_len,
            self.val_y,
            len(self.labels),
            self.eval_batch_size,
            self.device,
            autocast,
        )


class LanguageModelingTask:
    """One token stream; the best checkpoint has the lowest validation loss."""

    metric, higher_is_better = "val_loss", False

    def __init__(
        self,
        config: TrainConfig,
        data: TextData,
        token_lists: list[list[str]],
        device: torch.device,
        saved: SavedRun | None = None,
        vocab: Vocab | None = None,
    ) -> None:
        tc, T = config.training, config.model.max_length
        self.batch_size, self.T, self.device = tc.batch_size, T, device
        self.eval_batch_size = max(64, tc.batch_size)
        self.data_rng = torch.Generator().manual_seed(tc.seed)  # the training windows' offsets
        self.labels: list[str] = []
        self.warnings: list[str] = []
        # One stream: doc tokens + <eos> after each. The cut is a token position; the vocabulary is built
        # from the tokens before it, so nothing about the validation text leaks into training.
        total = sum(len(t) + 1 for t in token_lists)
        cut = int(total * (1 - tc.val_fraction))
        if cut < T + 1 or total - cut < T + 1:
            raise DataError(
                f"too little text for language modelling: {total:,} tokens give {cut:,} for training and "
                f"{total - cut:,} for validation, each needs more than model.max_length ({T}); "
                "add text or lower model.max_length",
                problems=[Problem(["config", "model", "max_length"], "longer than the data allows")],
            )
        train_docs, seen = [], 0
        for t in token_lists:
            if seen >= cut:
                break
            train_docs.append(t[: cut - seen])
            seen += len(t) + 1
        self.vocab = task_vocab(config, saved, vocab, train_docs)
        stream: list[int] = []
        for t in token_lists:
            stream += self.vocab.encode(t)
            stream.append(self.vocab.eos_id)
        ids = torch.tensor(stream, dtype=torch.long)
        train_stream, val_stream = ids[:cut], ids[cut:]
        self.val_windows = _val_windows(val_stream, T)
        # The whole stream lives on the device (it is small next to the model's activations): a batch is
        # one gather, with no per-step host-to-device copy.
        self.train_stream, self.offsets = train_stream.to(device), torch.arange(T + 1, device=device)
        self.steps_per_epoch = max(1, len(train_stream) // (tc.batch_size * T))
        self.data_info = {
            "rows": data.rows,
            "train_rows": len(train_docs),
            "val_rows": len(token_lists) - len(train_docs) + (1 if seen > cut else 0),
            "skipped_rows": data.skipped_rows,
            "train_tokens": len(train_stream),
            "val_tokens": len(val_stream),
        }

    def batch(self, step: int) -> Batch:
        # Offsets drawn on the CPU generator (same stream on every device), gathered where the data is.
        ix = torch.randint(len(self.train_stream) - self.T, (self.batch_size,), generator=self.data_rng)
        w = self.train_stream[ix.to(self.device)[:, None] + self.offsets]  # (B, T + 1)
        return Batch(w[:, :-1], w[:, 1:], self.batch_size * self.T)

    def evaluate(self, model: torch.nn.Module, autocast) -> dict[str, float]:
        return evaluate_lm(model, self.val_windows, self.eval_batch_size, self.device, autocast)


def _val_windows(val_stream: torch.Tensor, T: int) -> torch.Tensor:
    """Fixed validation windows (n, T + 1), stride T (each target read once), evenly thinned to
    LM_EVAL_MAX_TOKENS."""
    starts = torch.arange(0, len(val_stream) - T, T)
    if len(starts) * T > LM_EVAL_MAX_TOKENS:
        starts = starts[torch.linspace(0, len(starts) - 1, LM_EVAL_MAX_TOKENS // T).long()]
    return val_stream[starts[:, None] + torch.arange(T + 1)]


class TextToTextTask:
    """Pairs of a source and a target text; the best checkpoint has the highest validation BLEU."""

    metric, higher_is_better = "val_bleu", True

    def __init__(
        self,
        config: TrainConfig,
        data: TextData,
        token_lists: list[list[str]],
        device: torch.device,
        saved: SavedRun | None = None,
    ) -> None:
        tc, T = config.training, config.model.max_length
        self.config, self.batch_size, self.seed, self.device = config, tc.batch_size, tc.seed, device
        self.data_rng = torch.Generator().manual_seed(tc.seed)  # unused by this task; saved all the same
        self.labels: list[str] = []
        self.warnings: list[str] = []
        assert data.targets is not None
        _, target_tokenizer = seq2seq.tokenizers(config)
        self.detokenize = target_tokenizer.detokenize
        tgt_tokens = target_tokenizer.tokenize(data.targets)
        train_idx, val_idx = split_indices(len(token_lists), tc.val_fraction, tc.seed, None)
        if saved is not None:
            self.vocab = seq2seq.load_pair_vocab(saved.path)
        else:
            self.vocab = self._build_vocab(
                config, [token_lists[i] for i in train_idx], [tgt_tokens[i] for i in train_idx]
            )
        src_rows = seq2seq.encode_sources(self.vocab, token_lists, T)
        tgt_rows = seq2seq.encode_targets(self.vocab.target, tgt_tokens, T)
        truncated = sum(len(token_lists[i]) > T or len(tgt_tokens[i]) > T - 1 for i in train_idx)
        if truncated:
            self.warnings.append(
                f"{truncated:,} of {len(train_idx):,} training pairs are longer than model.max_length ({T}) "
                "and were truncated; raise model.max_length to keep them whole"
            )
        self.train_src, self.train_src_len = pad_rows([src_rows[i] for i in train_idx])
        self.train_tgt, self.train_tgt_len = pad_rows([tgt_rows[i] for i in train_idx])
        eb = seq2seq.EVAL_BATCH
        val_src, val_tgt = [src_rows[i] for i in val_idx], [tgt_rows[i] for i in val_idx]
        self.val_batches = [
            (pad_rows(val_src[i : i + eb])[0], pad_rows(val_tgt[i : i + eb])[0])
            for i in range(0, len(val_src), eb)
        ]
        sample = seq2seq.sample_indices(len(val_idx))
        self.sample_batches = [
            pad_rows([val_src[j] for j in sample[i : i + eb]])[0] for i in range(0, len(sample), eb)
        ]
        lower = config.target_tokenizer is not None and config.target_tokenizer.lowercase
        self.references = [
            data.targets[val_idx[j]].lower() if lower else data.targets[val_idx[j]] for j in sample
        ]
        self.steps_per_epoch = math.ceil(len(train_idx) / tc.batch_size)
        self.data_info = {
            "rows": data.rows,
            "train_rows": len(train_idx),
            "val_rows": len(val_idx),
            "skipped_rows": data.skipped_rows,
            "truncated_pairs": truncated,
            "target_vocab_size": len(self.vocab.target),
        }
        self._perm: torch.Tensor | None = None

    @staticmethod
    def _build_vocab(config: TrainConfig, src: list[list[str]], tgt: list[list[str]]) -> seq2seq.PairVocab:
        tk, tt = config.tokenizer, config.target_tokenizer
        assert tt is not None
        if config.shared_vocabulary:
            both = Vocab.build([*src, *tgt], min_freq=tk.min_freq, max_vocab=tk.max_vocab)
            return seq2seq.PairVocab(both.itos)
        source = Vocab.build(src, min_freq=tk.min_freq, max_vocab=tk.max_vocab)
        target = Vocab.build(tgt, min_freq=tt.min_freq, max_vocab=tt.max_vocab)
        return seq2seq.PairVocab(source.itos, target.itos)

    def make_model(self, saved: SavedRun | None) -> torch.nn.Module:
        """The encoder-decoder for these vocabularies (with ``saved``'s weights when resuming)."""
        if saved is not None:
            return seq2seq.load_model(saved, self.device)[0]
        return seq2seq.build_model(self.config, self.vocab).to(self.device)

    def batch(self, step: int) -> Batch:
        epoch_idx, pos = divmod(step, self.steps_per_epoch)
        if self._perm is None or pos == 0:  # the order of an epoch depends only on (seed, epoch): resumable
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch_idx)
            self._perm = torch.randperm(len(self.train_src), generator=g)
        idx = self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]
        s_len, t_len = self.train_src_len[idx], self.train_tgt_len[idx]
        src = self.train_src[idx, : int(s_len.max())].to(self.device, non_blocking=True)  # (B, S)
        tgt = self.train_tgt[idx, : int(t_len.max())].to(self.device, non_blocking=True)  # (B, T + 1)
        return Batch(src, tgt, int(s_len.sum()) + int(t_len.sum()) - len(idx))

    def evaluate(self, model: torch.nn.Module, autocast) -> dict[str, float]:
        return seq2seq.evaluate_text_to_text(
            model,  # type: ignore[arg-type]
            self.val_batches,
            self.sample_batches,
            self.references,
            self.vocab,
            self.detokenize,
            self.device,
            autocast,
        )


TASKS: dict[str, type[ClassificationTask] | type[LanguageModelingTask] | type[TextToTextTask]] = {
    "classification": ClassificationTask,
    "language_modeling": LanguageModelingTask,
    "text_to_text": TextToTextTask,
}


def make_task(
    config: TrainConfig,
    data: TextData,
    token_lists: list[list[str]],
    device: torch.device,
    saved: SavedRun | None = None,
    vocab: Vocab | None = None,
) -> Task:
    """The task ``config.task`` names, with its data set up. ``vocab``: the vocabulary to use rather than
    one built from the training split (a BPE model's, or the init_from checkpoint's)."""
    if vocab is not None:
        return TASKS[config.task](config, data, token_lists, device, saved, vocab)
    return TASKS[config.task](config, data, token_lists, device, saved)


def training_texts(config: TrainConfig, data: TextData) -> list[str]:
    """The texts of the training split, before tokenizing (what a BPE model is trained on). Classification:
    the split ``split_indices`` makes. Language modelling: the documents before the last ``val_fraction``
    of the characters (the task cuts its token stream at the same share, so at most the document that
    straddles the cut is seen by both)."""
    tc = config.training
    if config.task == "classification":
        train_idx, _ = split_indices(len(data.texts), tc.val_fraction, tc.seed, data.labels)
        return [data.texts[i] for i in train_idx]
    cut = int(sum(len(t) + 1 for t in data.texts) * (1 - tc.val_fraction))
    out, seen = [], 0
    for t in data.texts:
        if seen >= cut:
            break
        out.append(t[: cut - seen])
        seen += len(t) + 1
    return out
