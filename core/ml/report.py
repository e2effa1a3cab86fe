"""Evaluation reports from predictions (docs/design.md, "Evaluations and batch predictions").

``classification_report`` turns the true labels and the predicted probabilities of a test set into
accuracy, macro-F1, cross-entropy, per-class precision/recall/F1/support, the confusion matrix and the
examples the model got most confidently wrong. ``lm_report`` turns a summed token loss into loss and
perplexity; ``text_to_text_report`` holds loss, BLEU, chrF and the first outputs beside their references. Both are plain JSON-ready dicts: what ``jobformer evaluate --json`` prints, what the service
stores and the dashboard draws.

The conventions are scikit-learn's (tests/core/ml/test_report.py checks them against it): macro-F1 averages
the classes that occur among the true or the predicted labels; a class never predicted has precision 0.
Rows whose label training never saw cannot be predicted right or wrong by a model that does not know
the class: they are counted under ``unseen_labels`` and left out of every other number.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import torch

WRONG_EXAMPLES = 10  # most confidently wrong examples kept in a report
EXAMPLE_CHARS = 300  # an example's text is cut to this many characters


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b > 0, a / b.clamp(min=1e-300), torch.zeros_like(a))


def classification_report(
    labels: Sequence[str],
    true: Sequence[str],
    probs: torch.Tensor,
    texts: Sequence[str],
    *,
    wrong_examples: int = WRONG_EXAMPLES,
) -> dict:
    """The report of a classifier with classes ``labels`` on rows with labels ``true`` (strings), predicted
    probabilities ``probs`` (N, K) and texts ``texts`` (for the wrong examples), all in row order."""
    k = len(labels)
    label_id = {name: i for i, name in enumerate(labels)}
    unseen = Counter(t for t in true if t not in label_id)
    keep = [i for i, t in enumerate(true) if t in label_id]
    p = probs.double()[keep] if keep else torch.zeros(0, k, dtype=torch.float64)  # (n, K)
    y = torch.tensor([label_id[true[i]] for i in keep], dtype=torch.long)  # (n,)
    pred = p.argmax(-1) if len(keep) else torch.zeros(0, dtype=torch.long)
    conf = torch.bincount(y * k + pred, minlength=k * k).view(k, k)  # rows: true, columns: predicted
    tp = conf.diag().double()
    support, predicted = conf.sum(1).double(), conf.sum(0).double()
    precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = (support + predicted) > 0
    n = len(keep)
    true_p = p[torch.arange(n), y] if n else torch.zeros(0, dtype=torch.float64)
    report = {
        "task": "classification",
        "rows": len(true),
        "scored_rows": n,
        "labels": list(labels),
        "accuracy": float((pred == y).double().mean()) if n else None,
        "f1_macro": float(f1[present].mean()) if bool(present.any()) else None,
        # Cross-entropy, with probabilities clipped as scikit-learn's log_loss clips them.
        "loss": float(-true_p.clamp(min=1e-15).log().mean()) if n else None,
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(labels)
        },
        "confusion_matrix": conf.tolist(),
        "unseen_labels": dict(sorted(unseen.items())),
        "most_confidently_wrong": [],
    }
    wrong = (pred != y).nonzero().flatten()
    if len(wrong):
        confidence = p[wrong, pred[wrong]]
        top = wrong[torch.argsort(confidence, descending=True, stable=True)[:wrong_examples]]
        report["most_confidently_wrong"] = [
            {
                "row": keep[int(j)],  # 0-based among the file's usable rows
                "text": texts[keep[int(j)]][:EXAMPLE_CHARS],
                "label": labels[int(y[j])],
                "predicted": labels[int(pred[j])],
                "confidence": float(p[j, pred[j]]),
            }
            for j in top
        ]
    return report


def lm_report(loss_sum: float, tokens: int, rows: int) -> dict:
    """The report of a language model: mean cross-entropy per predicted token and its perplexity."""
    loss = loss_sum / tokens if tokens else None
    return {
        "task": "language_modeling",
        "rows": rows,
        "tokens": tokens,
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)) if loss is not None else None,
    }


def text_to_text_report(
    loss_sum: float,
    tokens: int,
    sources: Sequence[str],
    references: Sequence[str],
    outputs: Sequence[str],
    bleu: float | None,
    chrf: float | None,
    *,
    examples: int = WRONG_EXAMPLES,
) -> dict:
    """The report of a text-to-text model (docs/design.md "Text to text"): loss per target token,
    sacrebleu's corpus BLEU and chrF (0-100), and the first ``examples`` pairs with their outputs."""
    cut = EXAMPLE_CHARS
    return {
        "task": "text_to_text",
        "rows": len(sources),
        "tokens": tokens,
        "loss": loss_sum / tokens if tokens else None,
        "bleu": bleu,
        "chrf": chrf,
        "examples": [
            {"source": s[:cut], "reference": r[:cut], "output": o[:cut]}
            for s, r, o in zip(sources[:examples], references, outputs, strict=False)
        ],
    }


def format_report(report: dict) -> str:
    """The report as text for a terminal: the headline numbers, the per-class table, the confusion
    matrix and the wrong examples."""
    if report["task"] == "language_modeling":
        if report["loss"] is None:
            return f"rows {report['rows']}: no token to score"
        return (
            f"rows {report['rows']}, tokens {report['tokens']:,}: "
            f"loss {report['loss']:.4f}, perplexity {report['perplexity']:.2f}"
        )
    if report["task"] == "text_to_text":
        if report["loss"] is None:
            return f"rows {report['rows']}: no pair to score"
        lines = [
            f"rows {report['rows']}, target tokens {report['tokens']:,}: loss {report['loss']:.4f}, "
            f"BLEU {report['bleu']:.2f}, chrF {report['chrf']:.2f}"
        ]
        for ex in report["examples"]:
            lines.append(f"  {ex['source']!r} -> {ex['output']!r} (reference {ex['reference']!r})")
        return "\n".join(lines)
    lines = [f"rows {report['rows']}, scored {report['scored_rows']}"]
    if report["accuracy"] is not None:
        lines.append(
            f"accuracy {report['accuracy']:.4f}  macro-F1 {report['f1_macro']:.4f}  loss {report['loss']:.4f}"
        )
    labels = report["labels"]
    width = max([5, *(len(x) for x in labels)])
    lines += ["", f"{'class':<{width}}  precision  recall      f1  support"]
    for name, c in report["per_class"].items():
        lines.append(
            f"{name:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7d}"
        )
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    cell = max([6, *(len(x) for x in labels)])
    lines.append(" " * width + "  " + " ".join(f"{x:>{cell}}" for x in labels))
    for name, row in zip(labels, report["confusion_matrix"], strict=True):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:>{cell}d}" for v in row))
    if report["unseen_labels"]:
        unseen = ", ".join(f"{k!r} ({v})" for k, v in report["unseen_labels"].items())
        lines += ["", f"labels training never saw (rows not scored): {unseen}"]
    if report["most_confidently_wrong"]:
        lines += ["", "most confidently wrong"]
        for w in report["most_confidently_wrong"]:
            text = w["text"].replace("\n", " ")[:80]
            lines.append(f"  {w['confidence']:.3f} {w['predicted']} (true {w['label']}): {text}")
    return "\n".join(lines)
