"""The training loop: one flat ``train()`` to read top to bottom, with a few helpers above it.

    data -> tokens -> vocabulary (training split only) -> tensors -> model -> AdamW loop
         -> evaluation + checkpoint (every ``eval_every`` steps and at each epoch end) -> TrainResult

Classification: each example is ``<cls>`` + its first ``max_length - 1`` tokens; batches are a seeded
shuffle per epoch, padded to the longest example in the batch. Language modelling: the documents are one
token stream with ``<eos>`` after each; steps train on random windows of ``max_length + 1`` tokens (as
nanoGPT's get_batch does), validation is the last ``val_fraction`` of the stream, read as fixed windows.

Resuming is exact: the data order is a function of (seed, epoch) for classification and a saved generator
state for language modelling; dropout's RNG, the optimizer, the loop counters and the partial train-loss
average are all in trainer_state.pt. N steps, a stop, then N more give the parameters of 2N straight.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from core.ml import checkpoint as ckpt
from core.ml.callbacks import Callbacks, MetricPoint, Progress
from core.ml.config import TrainConfig
from core.ml.data import load_texts, split_indices
from core.ml.errors import ConfigError, DataError, DivergedError, Problem
from core.ml.model import ARCHITECTURE, build_model
from core.ml.tokenize import Vocab, build_tokenizer

log = logging.getLogger(__name__)

LOG_EVERY = 10  # steps between train-loss reads (.item() syncs a GPU) and train_loss metric points
STOP_POLL_EVERY = 5  # steps between callbacks.should_stop() polls
DIVERGE_FACTOR = 10.0  # train loss above this multiple of the first one ...
DIVERGE_CHECKS = 3  # ... this many LOG_EVERY checks in a row: diverged
MIN_LR_RATIO = 0.1  # cosine decay ends at 10% of the peak learning rate
ADAM_BETAS = (0.9, 0.99)  # beta2 0.99: small batches make the second-moment estimate noisy (nanoGPT)
LM_EVAL_MAX_TOKENS = 1 << 17  # language-model validation reads at most this many tokens per evaluation
# Fields that must match to resume from an existing checkpoint (the rest of `training` may change).
_RESUME_FIELDS = ("task", "text_column", "label_column", "tokenizer", "model")


@dataclass
class TrainResult:
    """What ``train`` returns. ``checkpoint`` is the best checkpoint's absolute path (the latest if no
    evaluation ran); ``best`` is ``{"step", "metric", "value", "checkpoint"}`` (checkpoint = name)."""

    status: Literal["completed", "early_stopped", "stopped", "time_limit"]
    steps: int
    epoch: int
    metrics: dict[str, float]
    best: dict | None
    tokens_per_second: float
    data: dict
    checkpoint: str | None

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str) -> torch.device:
    """``auto``: cuda when present, else cpu. Refuses a device this machine does not have."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    missing = (dev.type == "cuda" and not torch.cuda.is_available()) or (
        dev.type == "mps" and not torch.backends.mps.is_available()
    )
    if dev.type == "cuda" and not missing and (dev.index or 0) >= torch.cuda.device_count():
        missing = True
    if missing:
        raise ConfigError(
            f"device {device!r} is not available on this machine; use 'auto' or 'cpu'",
            problems=[Problem(["config", "device"], f"{device!r} is not available")],
        )
    return dev


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warmup to ``peak`` over ``warmup`` steps, then cosine decay to MIN_LR_RATIO * peak at ``total``."""
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only: biases, LayerNorm gains and embeddings are not pulled towards zero."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _pad_rows(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids -> one right-padded (N, L) tensor (pad id 0) and their lengths (N,)."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.zeros(len(rows), int(lengths.max()) if rows else 1, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out, lengths


def _macro_f1(pred: torch.Tensor, true: torch.Tensor, num_classes: int) -> float:
    """Macro-F1 over the classes that occur in ``true`` or ``pred`` (scikit-learn's convention)."""
    conf = torch.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    conf = conf.view(num_classes, num_classes).double()  # rows: true, columns: predicted
    tp = conf.diag()
    support, predicted = conf.sum(1), conf.sum(0)
    present = (support + predicted) > 0
    f1 = 2 * tp / (support + predicted).clamp(min=1)
    return float(f1[present].mean()) if present.any() else 0.0


@torch.inference_mode()
def _evaluate_classifier(model, x, lengths, y, num_classes, batch_size, device, autocast) -> dict[str, float]:
    model.eval()
    order = torch.argsort(lengths)  # similar lengths together: less padding, same metrics
    loss_sum, preds = 0.0, torch.empty_like(y)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        xb = x[idx, : int(lengths[idx].max())].to(device)
        with autocast:
            logits, _ = model(xb)
        logits = logits.float().cpu()
        loss_sum += float(F.cross_entropy(logits, y[idx], reduction="sum"))
        preds[idx] = logits.argmax(-1)
    model.train()
    n = len(y)
    return {
        "val_loss": loss_sum / n,
        "val_accuracy": float((preds == y).double().mean()),
        "val_f1_macro": _macro_f1(preds, y, num_classes),
    }


@torch.inference_mode()
def _evaluate_lm(model, windows, batch_size, device, autocast) -> dict[str, float]:
    model.eval()
    loss_sum, n = 0.0, 0
    for i in range(0, len(windows), batch_size):
        w = windows[i : i + batch_size].to(device)  # (b, T + 1)
        with autocast:
            _, loss = model(w[:, :-1], w[:, 1:])
        loss_sum += float(loss) * len(w)
        n += len(w)
    model.train()
    val_loss = loss_sum / n
    return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50.0))}


def _check_resume_config(config: TrainConfig, saved: dict, where: Path) -> None:
    current = config.model_dump(mode="json")
    for key in _RESUME_FIELDS:
        if current.get(key) != saved.get(key):
            raise ConfigError(
                f"{where} holds checkpoints trained with a different {key!r} ({saved.get(key)!r}, now "
                f"{current.get(key)!r}); use a new output directory, or the config it was trained with",
                problems=[Problem(["config", key], "differs from the checkpoint being resumed")],
            )


def train(
    config: TrainConfig,
    data_path: str | Path,
    out_dir: str | Path,
    callbacks: Callbacks | None = None,
) -> TrainResult:
    """Train a model as ``config`` says on the file ``data_path``, writing checkpoints under ``out_dir``.

    Resumes from the latest checkpoint in ``out_dir`` when there is one (same step counter, same loss
    curve; event "resumed"). Raises ConfigError, DataError, DivergedError or CheckpointError.
    """
    cb = callbacks or Callbacks()
    tc, mc = config.training, config.model
    classify = config.task == "classification"
    out_dir = Path(out_dir)
    device = resolve_device(config.device)
    use_bf16 = tc.precision == "bf16" or (tc.precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    resume_dir = ckpt.latest_checkpoint(out_dir)
    saved_meta: dict = {}
    if resume_dir is not None:
        _check_resume_config(config, ckpt.load_json(resume_dir, ckpt.CONFIG_FILE), out_dir)
        saved_meta = ckpt.load_json(resume_dir, ckpt.META_FILE)
        ckpt.check_architecture(saved_meta, resume_dir)
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    np.random.seed(tc.seed)

    # ---- data: read, split, tokenize; the vocabulary sees the training split only ----
    data = load_texts(data_path, config)
    tokenizer = build_tokenizer(config.tokenizer)
    token_lists = tokenizer.tokenize(data.texts)
    warnings = list(data.warnings)
    if classify:
        assert data.labels is not None
        train_idx, val_idx = split_indices(len(token_lists), tc.val_fraction, tc.seed, data.labels)
        if resume_dir is not None:
            vocab = Vocab.from_dict(ckpt.load_json(resume_dir, ckpt.VOCAB_FILE))
            label_names = list(saved_meta["labels"])
        else:
            vocab = Vocab.build(
                (token_lists[i] for i in train_idx),
                min_freq=config.tokenizer.min_freq,
                max_vocab=config.tokenizer.max_vocab,
            )
            label_names = sorted({data.labels[i] for i in train_idx})
        label_id = {name: i for i, name in enumerate(label_names)}
        unseen = [i for i in val_idx if data.labels[i] not in label_id]
        if unseen:
            warnings.append(f"{len(unseen)} validation rows have a label absent from training; not scored")
            val_idx = [i for i in val_idx if data.labels[i] in label_id]
        if len(label_names) < 2:
            raise DataError(
                f"classification needs at least 2 labels in the training split, found {label_names}",
                problems=[Problem(["config", "label_column"], "fewer than 2 distinct labels")],
            )
        # <cls> first: every example has at least one token, and long texts keep their beginning.
        rows = [[vocab.cls_id, *vocab.encode(t[: mc.max_length - 1])] for t in token_lists]
        truncated = sum(len(token_lists[i]) > mc.max_length - 1 for i in train_idx)
        if truncated > 0.1 * len(train_idx):
            warnings.append(
                f"{truncated} of {len(train_idx)} training texts are longer than model.max_length "
                f"({mc.max_length}) and were truncated; raise model.max_length to use more of each text"
            )
        train_x, train_len = _pad_rows([rows[i] for i in train_idx])
        train_y = torch.tensor([label_id[data.labels[i]] for i in train_idx])
        val_x, val_len = _pad_rows([rows[i] for i in val_idx])
        val_y = torch.tensor([label_id[data.labels[i]] for i in val_idx])
        n_train = len(train_idx)
        steps_per_epoch = math.ceil(n_train / tc.batch_size)
        data_info = {
            "rows": data.rows,
            "train_rows": len(train_idx),
            "val_rows": len(val_idx),
            "skipped_rows": data.skipped_rows,
        }
        metric_name, higher_is_better = "val_f1_macro", True
    else:
        label_names = []
        # One stream: doc tokens + <eos> after each. The cut is a token position; the vocabulary is built
        # from the tokens before it, so nothing about the validation text leaks into training.
        total = sum(len(t) + 1 for t in token_lists)
        cut = int(total * (1 - tc.val_fraction))
        if cut < mc.max_length + 1 or total - cut < mc.max_length + 1:
            raise DataError(
                f"too little text for language modelling: {total:,} tokens give {cut:,} for training and "
                f"{total - cut:,} for validation, each needs more than model.max_length ({mc.max_length}); "
                "add text or lower model.max_length",
                problems=[Problem(["config", "model", "max_length"], "longer than the data allows")],
            )
        train_docs, seen = [], 0
        for t in token_lists:
            if seen >= cut:
                break
            train_docs.append(t[: cut - seen])
            seen += len(t) + 1
        if resume_dir is not None:
            vocab = Vocab.from_dict(ckpt.load_json(resume_dir, ckpt.VOCAB_FILE))
        else:
            vocab = Vocab.build(
                train_docs, min_freq=config.tokenizer.min_freq, max_vocab=config.tokenizer.max_vocab
            )
        stream: list[int] = []
        for t in token_lists:
            stream += vocab.encode(t)
            stream.append(vocab.eos_id)
        ids = torch.tensor(stream, dtype=torch.long)
        train_stream, val_stream = ids[:cut], ids[cut:]
        # Fixed validation windows, stride T (each target read once), evenly thinned to LM_EVAL_MAX_TOKENS.
        T = mc.max_length
        starts = torch.arange(0, len(val_stream) - T, T)
        if len(starts) * T > LM_EVAL_MAX_TOKENS:
            starts = starts[torch.linspace(0, len(starts) - 1, LM_EVAL_MAX_TOKENS // T).long()]
        val_windows = val_stream[starts[:, None] + torch.arange(T + 1)]  # (n, T + 1)
        # The whole stream lives on the device (it is small next to the model's activations): a batch is
        # one gather, with no per-step host-to-device copy.
        train_stream, window_offsets = train_stream.to(device), torch.arange(T + 1, device=device)
        steps_per_epoch = max(1, len(train_stream) // (tc.batch_size * T))
        data_info = {
            "rows": data.rows,
            "train_rows": len(train_docs),
            "val_rows": len(token_lists) - len(train_docs) + (1 if seen > cut else 0),
            "skipped_rows": data.skipped_rows,
            "train_tokens": len(train_stream),
            "val_tokens": len(val_stream),
        }
        metric_name, higher_is_better = "val_loss", False
    total_steps = tc.max_steps if tc.max_steps is not None else tc.epochs * steps_per_epoch
    total_epochs = math.ceil(total_steps / steps_per_epoch)
    cb.on_event(
        "data_loaded",
        f"{data_info['train_rows']:,} training and {data_info['val_rows']:,} validation rows "
        f"({data.skipped_rows:,} skipped), vocabulary {len(vocab):,}",
        {**data_info, "vocab_size": len(vocab), "labels": label_names, "warnings": warnings},
    )
    # Drop the Python-object copies of the data (millions of strings and ints for a large file): the
    # tensors above hold all the loop needs, and the cyclic GC would otherwise rescan them for the
    # whole run (measured: ~20% fewer tokens/s on tiny_shakespeare).
    del data, token_lists
    if classify:
        del rows
    else:
        del stream, train_docs, ids
    gc.collect()
    for w in warnings:
        cb.on_event("warning", w)

    # ---- model and optimizer ----
    model = build_model(config.task, mc, len(vocab), len(label_names)).to(device)
    fused = device.type in ("cpu", "cuda")  # one kernel for the whole update instead of one per tensor
    optimizer = torch.optim.AdamW(
        _param_groups(model, tc.weight_decay), lr=tc.learning_rate, betas=ADAM_BETAS, fused=fused
    )
    data_gen = torch.Generator().manual_seed(tc.seed)  # LM windows; saved in checkpoints
    step = 0
    best: dict | None = None
    evals_since_best = 0
    first_loss: float | None = None
    high_loss_checks = 0
    loss_sum, loss_count = 0.0, 0  # the running train-loss average since the last LOG_EVERY step
    last_val: dict[str, float] = {}
    train_loss: float | None = None
    if resume_dir is not None:
        model.load_state_dict(ckpt.load_weights(resume_dir))
        state = ckpt.load_trainer_state(resume_dir)
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        best = state["best"]
        evals_since_best = state["evals_since_best"]
        first_loss = state["first_loss"]
        high_loss_checks = state["high_loss_checks"]
        loss_sum, loss_count = state["loss_sum"], state["loss_count"]
        last_val = dict(state["last_val"])
        train_loss = state["train_loss"]
        data_gen.set_state(state["data_rng"])
        ckpt.restore_rng_state(state["rng"])  # last: building the model above consumed the global RNG
        cb.on_event("resumed", f"resumed from {resume_dir.name} at step {step}", {"step": step})

    def current_metrics() -> dict[str, float]:
        return {**({"train_loss": train_loss} if train_loss is not None else {}), **last_val}

    def save(is_best: bool, metrics: dict[str, float]):
        trainer_state = {
            "optimizer": optimizer.state_dict(),
            # The schedule is a pure function of the step (lr_at); recorded for a reader, not restored.
            "scheduler": {
                "kind": "warmup_cosine",
                "warmup_steps": tc.warmup_steps,
                "total_steps": total_steps,
            },
            "step": step,
            "epoch": epoch,
            "best": best,
            "evals_since_best": evals_since_best,
            "first_loss": first_loss,
            "high_loss_checks": high_loss_checks,
            "loss_sum": float(loss_sum),
            "loss_count": loss_count,
            "last_val": last_val,
            "train_loss": train_loss,
            "data_rng": data_gen.get_state(),
            "rng": ckpt.capture_rng_state(),
        }
        info = ckpt.save_checkpoint(
            out_dir,
            step=step,
            epoch=epoch,
            model_state=model.state_dict(),
            vocab=vocab.to_dict(),
            config=config.model_dump(mode="json"),
            meta={
                "task": config.task,
                "labels": label_names,
                "vocab_size": len(vocab),
                "architecture": ARCHITECTURE,
            },
            trainer_state=trainer_state,
            metrics=metrics,
            is_best=is_best,
            best_name=best["checkpoint"] if best else None,
        )
        cb.on_checkpoint(info)
        return info

    # ---- the loop ----
    status: Literal["completed", "early_stopped", "stopped", "time_limit"] = "completed"
    epoch = min(total_epochs, step // steps_per_epoch + (1 if step % steps_per_epoch else 0))
    saved_step = step if resume_dir is not None else -1  # the step of the newest checkpoint on disk
    t_start = time.monotonic()
    start_step = step
    train_time, tokens_seen = 0.0, 0
    t_mark = time.monotonic()
    perm: torch.Tensor | None = None
    model.train()
    while step < total_steps:
        # -- one optimizer step --
        epoch_idx, pos = divmod(step, steps_per_epoch)
        lr = lr_at(step, tc.learning_rate, tc.warmup_steps, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if classify:
            if perm is None or pos == 0:  # the order of an epoch depends only on (seed, epoch): resumable
                g = torch.Generator().manual_seed(tc.seed * 1_000_003 + epoch_idx)
                perm = torch.randperm(n_train, generator=g)
            idx = perm[pos * tc.batch_size : (pos + 1) * tc.batch_size]
            lengths = train_len[idx]
            n_tok = int(lengths.sum())
            xb = train_x[idx, : int(lengths.max())].to(device, non_blocking=True)  # (B, L<=T)
            yb = train_y[idx].to(device, non_blocking=True)  # (B,)
        else:
            # Offsets drawn on the CPU generator (same stream on every device), gathered where the data is.
            ix = torch.randint(len(train_stream) - T, (tc.batch_size,), generator=data_gen).to(device)
            w = train_stream[ix[:, None] + window_offsets]  # (B, T + 1)
            xb, yb = w[:, :-1], w[:, 1:]
            n_tok = tc.batch_size * T
        with autocast:
            _, loss = model(xb, yb)
        loss.backward()
        if tc.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        epoch = epoch_idx + 1
        loss_sum += loss.detach()  # stays a tensor until the next LOG_EVERY read: no sync per step
        loss_count += 1
        tokens_seen += n_tok
        if first_loss is None:  # the reference for divergence: the loss before any update
            first_loss = float(loss.detach())

        # -- train loss, divergence --
        if step % LOG_EVERY == 0 or step == total_steps:
            train_loss = float(loss_sum) / loss_count
            loss_sum, loss_count = 0.0, 0
            if not math.isfinite(train_loss):
                raise DivergedError(
                    f"training diverged at step {step}: the loss became {train_loss}; lower "
                    f"training.learning_rate (now {tc.learning_rate:g}), e.g. to {tc.learning_rate / 10:g}",
                    step=step,
                )
            high_loss_checks = high_loss_checks + 1 if train_loss > DIVERGE_FACTOR * first_loss else 0
            if high_loss_checks >= DIVERGE_CHECKS:
                raise DivergedError(
                    f"training diverged at step {step}: the loss is {train_loss:.4g}, over "
                    f"{DIVERGE_FACTOR:g}x its first value {first_loss:.4g}; lower training.learning_rate "
                    f"(now {tc.learning_rate:g}), e.g. to {tc.learning_rate / 10:g}",
                    step=step,
                )
            cb.on_metrics([MetricPoint(step, epoch, "train", "loss", train_loss)])
        now = time.monotonic()
        train_time += now - t_mark
        t_mark = now
        tps = tokens_seen / train_time if train_time > 0 else 0.0
        done = step / total_steps
        eta = (total_steps - step) * train_time / (step - start_step)
        cb.on_progress(
            Progress(step, total_steps, epoch, total_epochs, round(100 * done, 2), eta, tps, train_loss)
        )

        # -- evaluation, checkpoint, early stopping --
        if (
            step % steps_per_epoch == 0
            or (tc.eval_every and step % tc.eval_every == 0)
            or step == total_steps
        ):
            if classify:
                bs = max(64, 2 * tc.batch_size)
                last_val = _evaluate_classifier(
                    model, val_x, val_len, val_y, len(label_names), bs, device, autocast
                )
            else:
                last_val = _evaluate_lm(model, val_windows, max(64, tc.batch_size), device, autocast)
            if not math.isfinite(last_val["val_loss"]):
                raise DivergedError(
                    f"training diverged at step {step}: the validation loss is {last_val['val_loss']}; "
                    f"lower training.learning_rate (now {tc.learning_rate:g})",
                    step=step,
                )
            points = [MetricPoint(step, epoch, "val", k[4:], v) for k, v in last_val.items()]
            points.append(MetricPoint(step, epoch, "train", "tokens_per_second", tps))
            cb.on_metrics(points)
            value = last_val[metric_name]
            is_best = best is None or (value > best["value"] if higher_is_better else value < best["value"])
            if is_best:
                best = {
                    "step": step,
                    "metric": metric_name,
                    "value": value,
                    "checkpoint": ckpt.checkpoint_name(step),
                }
                evals_since_best = 0
            else:
                evals_since_best += 1
            metrics = current_metrics()
            cb.on_event("evaluation", f"step {step}: {metric_name} {value:.4f}", {"step": step, **metrics})
            if step % steps_per_epoch == 0:
                cb.on_event(
                    "epoch_end",
                    f"epoch {epoch} ended at step {step}",
                    {"epoch": epoch, "step": step, **metrics},
                )
            save(is_best, metrics)
            saved_step = step
            patience = tc.early_stopping_patience
            if patience and evals_since_best >= patience and step < total_steps:
                status = "early_stopped"
                cb.on_event(
                    "early_stop",
                    f"no improvement of {metric_name} in {evals_since_best} evaluations; best {best['value']:.4f} at step {best['step']}",
                    {"step": step, "best": best},
                )
                break
            t_mark = time.monotonic()  # evaluation and saving are not training time

        # -- cooperative stop and wall-clock budget: both leave a checkpoint to resume from --
        stop = step % STOP_POLL_EVERY == 0 and cb.should_stop()
        over_time = tc.max_time_seconds is not None and time.monotonic() - t_start > tc.max_time_seconds
        if (stop or over_time) and step < total_steps:
            status = "stopped" if stop else "time_limit"
            if over_time:
                cb.on_event(
                    "time_limit", f"training.max_time_seconds ({tc.max_time_seconds:g}) spent at step {step}"
                )
            if saved_step != step:
                metrics = current_metrics()
                save(False, metrics)
                saved_step = step
            break

    final = current_metrics()
    if resume_dir is not None and not last_val:
        final = {**saved_meta.get("metrics", {}), **final}
    best_path = (
        (ckpt.checkpoints_root(out_dir) / best["checkpoint"]) if best else ckpt.latest_checkpoint(out_dir)
    )
    return TrainResult(
        status=status,
        steps=step,
        epoch=epoch,
        metrics=final,
        best=best,
        tokens_per_second=tokens_seen / train_time if train_time > 0 else 0.0,
        data=data_info,
        checkpoint=str(best_path.resolve()) if best_path else None,
    )
