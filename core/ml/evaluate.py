"""Evaluation on the validation split: loss, accuracy and macro-F1 for classification, loss and
perplexity for language modelling. The model is put in eval mode for the pass and back in train mode."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def macro_f1(pred: torch.Tensor, true: torch.Tensor, num_classes: int) -> float:
    """Macro-F1 over the classes that occur in ``true`` or ``pred`` (scikit-learn's convention)."""
    conf = torch.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    conf = conf.view(num_classes, num_classes).double()  # rows: true, columns: predicted
    tp = conf.diag()
    support, predicted = conf.sum(1), conf.sum(0)
    present = (support + predicted) > 0
    f1 = 2 * tp / (support + predicted).clamp(min=1)
    return float(f1[present].mean()) if present.any() else 0.0


@torch.inference_mode()
def evaluate_classifier(model, x, lengths, y, num_classes, batch_size, device, autocast) -> dict[str, float]:
    """``val_loss``, ``val_accuracy`` and ``val_f1_macro`` of a classifier on the padded rows ``x`` (their
    ``lengths``) with labels ``y``, in batches of ``batch_size`` under the ``autocast`` context."""
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
        "val_f1_macro": macro_f1(preds, y, num_classes),
    }


@torch.inference_mode()
def evaluate_lm(model, windows, batch_size, device, autocast) -> dict[str, float]:
    """``val_loss`` (mean cross-entropy per token) and ``val_perplexity`` of a language model over the fixed
    validation ``windows`` (n, T + 1), in batches of ``batch_size`` under the ``autocast`` context."""
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
