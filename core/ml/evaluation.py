"""A trained model evaluated on a file it never saw (docs/design.md, "Evaluations and batch predictions").

``evaluate_file(predictor, path)`` reads the file with the training config's columns (or the ones given),
runs the model over it in chunks and returns the report of ``core.ml.report``: for a classifier the
probabilities of every row (batched by length through ``Predictor.probabilities``), for a language model
the cross-entropy of every token of the file read as one stream with ``<eos>`` after each document, as
training reads its validation split; for text to text (docs/design.md "Text to text") the teacher-forced
cross-entropy per target token over every pair, then BLEU and chrF (sacrebleu) of every source decoded
greedily against its target (lowercased when the target tokenizer lowercases), as training's evaluation
scores its sample. The run's ``text_column`` and ``label_column`` name the source and the target column.

``on_progress(done, total)`` is called after each chunk; the service's callback raises to cancel.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from core.ml import seq2seq
from core.ml.config import TrainConfig
from core.ml.data import FileFormat, load_texts
from core.ml.model import PAD_ID
from core.ml.predict import Predictor
from core.ml.report import classification_report, lm_report, text_to_text_report

CHUNK_ROWS = 2048  # texts tokenized and scored per chunk (and per progress call)
LM_BATCH = 32  # language-model windows per forward pass

OnProgress = Callable[[int, int], None]


def eval_config(
    config: TrainConfig, text_column: str | int | None, label_column: str | int | None
) -> TrainConfig:
    """The training config with the test file's columns, when they are named differently there (text to
    text: ``text_column`` is the source column, ``label_column`` the target column)."""
    update: dict = {}
    if config.task == "text_to_text":
        if text_column is not None:
            update["source_column"] = text_column
        if label_column is not None:
            update["target_column"] = label_column
    elif text_column is not None:
        update["text_column"] = text_column
    if label_column is not None and config.task == "classification":
        update["label_column"] = label_column
    return TrainConfig.model_validate({**config.model_dump(mode="json"), **update}) if update else config


@torch.inference_mode()
def evaluate_file(
    predictor: Predictor,
    path: str | Path,
    *,
    text_column: str | int | None = None,
    label_column: str | int | None = None,
    file_format: FileFormat | None = None,
    on_progress: OnProgress | None = None,
) -> dict:
    """The evaluation report of ``predictor`` on the file at ``path``.

    Raises DataError (with ``problems`` at ``config.text_column``/``config.label_column``) when the file
    lacks a column the evaluation needs."""
    config = eval_config(predictor.config, text_column, label_column)
    data = load_texts(path, config, file_format=file_format)
    if config.task == "classification":
        report = _classify(predictor, data, on_progress)
    elif config.task == "text_to_text":
        report = _text_to_text(predictor, config, data.texts, data.targets or [], on_progress)
    else:
        report = _language_model(predictor, data.texts, on_progress)
    report["skipped_rows"] = data.skipped_rows
    report["warnings"] = list(data.warnings)
    return report


def _classify(predictor: Predictor, data, on_progress: OnProgress | None) -> dict:
    n = len(data.texts)
    probs = torch.empty(n, len(predictor.labels))  # (N, K): a few floats a row, the texts weigh more
    for i in range(0, n, CHUNK_ROWS):
        chunk = data.texts[i : i + CHUNK_ROWS]
        probs[i : i + len(chunk)] = predictor.probabilities(predictor.tokenizer.tokenize(chunk))
        if on_progress is not None:
            on_progress(i + len(chunk), n)
    return classification_report(predictor.labels, data.labels, probs, data.texts)


def _text_to_text(
    predictor: Predictor,
    config: TrainConfig,
    sources: list[str],
    targets: list[str],
    on_progress: OnProgress | None,
) -> dict:
    """Loss per target token (teacher forced, no label smoothing: training's ``val_loss``), then every
    source decoded greedily, chunk by chunk; BLEU and chrF of the outputs against the targets."""
    T, vocab = config.model.max_length, predictor.vocab
    assert isinstance(vocab, seq2seq.PairVocab)
    source_tokenizer, target_tokenizer = seq2seq.tokenizers(config)
    lower = config.target_tokenizer is not None and config.target_tokenizer.lowercase
    references = [t.lower() for t in targets] if lower else list(targets)
    loss_sum, tokens, outputs = 0.0, 0, []
    n = len(sources)
    for i in range(0, n, CHUNK_ROWS):
        src_rows = seq2seq.encode_sources(vocab, source_tokenizer.tokenize(sources[i : i + CHUNK_ROWS]), T)
        tgt_rows = seq2seq.encode_targets(
            vocab.target, target_tokenizer.tokenize(targets[i : i + CHUNK_ROWS]), T
        )
        order = sorted(range(len(src_rows)), key=lambda j: len(src_rows[j]))  # batches of like length
        for b in range(0, len(order), LM_BATCH):
            idx = order[b : b + LM_BATCH]
            src = _pad([src_rows[j] or [vocab.unk_id] for j in idx]).to(predictor.device)
            tgt = _pad([tgt_rows[j] for j in idx]).to(predictor.device)
            logits, _ = predictor.model(src, tgt)
            gold = tgt[:, 1:]
            loss_sum += float(
                F.cross_entropy(
                    logits.float().reshape(-1, logits.size(-1)),
                    gold.reshape(-1),
                    ignore_index=PAD_ID,
                    reduction="sum",
                )
            )
            tokens += int((gold != PAD_ID).sum())
        outputs += predictor.text_to_text(sources[i : i + CHUNK_ROWS])
        if on_progress is not None:
            on_progress(min(n, i + CHUNK_ROWS), n)
    bleu, chrf = seq2seq.bleu_chrf(outputs, references) if outputs else (None, None)
    return text_to_text_report(loss_sum, tokens, sources, references, outputs, bleu, chrf)


def _pad(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows], dtype=torch.long)


def _language_model(predictor: Predictor, texts: list[str], on_progress: OnProgress | None) -> dict:
    """Every token after the first of the stream is predicted once, from up to ``max_length`` tokens
    before it (windows of max_length + 1 with stride max_length, the last one shorter)."""
    T, eos = predictor.config.model.max_length, predictor.vocab.eos_id
    stream: list[int] = []
    for i in range(0, len(texts), CHUNK_ROWS):
        for tokens in predictor.tokenizer.tokenize(texts[i : i + CHUNK_ROWS]):
            stream += predictor.vocab.encode(tokens)
            stream.append(eos)
    ids = torch.tensor(stream, dtype=torch.long)
    starts = list(range(0, max(len(ids) - 1, 0), T))
    loss_sum, tokens = 0.0, 0
    for b in range(0, len(starts), LM_BATCH):
        group = starts[b : b + LM_BATCH]
        full = [s for s in group if s + T + 1 <= len(ids)]
        windows = [ids[s : s + T + 1] for s in full]
        if len(full) < len(group):  # the stream's tail: one shorter window
            windows_tail = ids[group[-1] :]
            loss_sum, tokens = _add_window_loss(predictor, windows_tail[None], loss_sum, tokens)
        if windows:
            loss_sum, tokens = _add_window_loss(predictor, torch.stack(windows), loss_sum, tokens)
        if on_progress is not None:
            on_progress(min(len(ids), (group[-1] + T)), len(ids))
    return lm_report(loss_sum, tokens, len(texts))


def _add_window_loss(
    predictor: Predictor, w: torch.Tensor, loss_sum: float, tokens: int
) -> tuple[float, int]:
    w = w.to(predictor.device)  # (b, t + 1)
    _, loss = predictor.model(w[:, :-1], w[:, 1:])  # mean over b * t targets
    n = w.size(0) * (w.size(1) - 1)
    return loss_sum + float(loss) * n, tokens + n
