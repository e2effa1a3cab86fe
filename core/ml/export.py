"""A checkpoint exported to ONNX, to run outside jobformer (docs/design.md, "Evaluations and batch
predictions").

``export_onnx(checkpoint, out_dir)`` writes::

    model.onnx    input ``input_ids`` (batch, length) int64, padded with 0 on the right;
                  classifier: output ``probabilities`` (batch, classes); language model: ``logits``
                  (batch, length, vocabulary)
    vocab.json    the token list: a token's id is its index (``<pad>`` 0, ``<unk>``, ``<cls>``, ``<eos>``)
    labels.json   the class names in the order of the probabilities (classifier)
    config.json   the training config (the tokenizer's settings are what a caller must reproduce)
    README.md     how to tokenize and run it

The graph comes from ``torch.onnx.export`` (the torch.export-based exporter, which needs the ``onnx`` and
``onnxscript`` packages: the ``onnx`` extra). Without them ``OnnxUnavailable`` says which extra to install.
tests/core/ml/test_export.py runs the file in onnxruntime against ``Predictor``.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from core.ml.errors import JobformerError
from core.ml.predict import Predictor

log = logging.getLogger(__name__)

OPSET = 18
FILES = ("model.onnx", "vocab.json", "labels.json", "config.json", "README.md")


@dataclass
class OnnxUnavailable(JobformerError):
    """The packages ONNX export needs are not installed."""

    code: str = "onnx_unavailable"


class _Probabilities(torch.nn.Module):
    """The classifier with its softmax: the exported graph gives what ``Predictor.classify`` gives."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model(input_ids)  # (B, K)
        return torch.softmax(logits.float(), dim=-1)


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model(input_ids)  # (B, T, V)
        return logits.float()


def require_onnx() -> None:
    """Raise OnnxUnavailable unless the exporter's packages import."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise OnnxUnavailable(
            f"ONNX export needs the onnx and onnxscript packages ({e.name} is missing): "
            "pip install 'jobformer[onnx]'"
        ) from None


def export_onnx(checkpoint: str | Path, out_dir: str | Path) -> list[Path]:
    """Export the checkpoint (or a run's best one) to ``out_dir``; returns the files written."""
    require_onnx()
    predictor = Predictor.load(checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classifier = predictor.task == "classification"
    if not classifier:  # the causal models' attention branches on the length: not exportable yet
        raise JobformerError(
            f"ONNX export supports classifiers; this checkpoint is {predictor.task}",
            code="export_unsupported",
        )
    module = (_Probabilities if classifier else _Logits)(predictor.model).eval()
    T = predictor.config.model.max_length
    example = torch.full((2, min(T, 8)), predictor.vocab.cls_id if classifier else predictor.vocab.eos_id)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=T)
    with warnings.catch_warnings():  # the exporter's own deprecation notices are not the caller's concern
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(out / "model.onnx"),
            input_names=["input_ids"],
            output_names=["probabilities" if classifier else "logits"],
            dynamic_shapes=({0: batch, 1: length},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,  # one self-contained file: the weights inside model.onnx
            verbose=False,
        )
    (out / "vocab.json").write_text(json.dumps(predictor.vocab.to_dict(), ensure_ascii=False), "utf-8")
    (out / "labels.json").write_text(json.dumps(predictor.labels, ensure_ascii=False), "utf-8")
    (out / "config.json").write_text(predictor.config.model_dump_json(indent=2), "utf-8")
    (out / "README.md").write_text(_readme(predictor), "utf-8")
    log.info("exported %s to %s", predictor.path, out)
    return [out / name for name in FILES]


def _readme(p: Predictor) -> str:
    tk, T = p.config.tokenizer, p.config.model.max_length
    split = {
        "spacy": f"spaCy's blank('{tk.language}') tokenizer (`spacy.blank('{tk.language}').tokenizer(text)`), "
        "whitespace tokens dropped",
        "char": "characters (`list(text)`)",
        # core.ml.tokenize.Tokenizer._subwords: spaCy words first (not for zh/ja/th), then the trained BPE.
        "bpe": f"spaCy's blank('{tk.language}') tokenizer into words (whitespace tokens dropped; for zh, ja and "
        "th skip this step), then the BPE tokenizer saved in `vocab.json` under `bpe`: "
        "`bpe = tokenizers.Tokenizer.from_str(json.dumps(vocab['bpe']))`, "
        "`bpe.encode(words, is_pretokenized=True, add_special_tokens=False).tokens` "
        "(without the word step: `bpe.encode(text, add_special_tokens=False).tokens`)",
    }.get(tk.kind, tk.kind)
    ids = (
        f"`[<cls>] + ids of the first {T - 1} tokens` (one row per text; pad rows with 0 on the right to "
        "the longest in the batch)"
        if p.task == "classification"
        else f"the ids of up to {T} tokens; a document ends with `<eos>`"
    )
    output = (
        "`probabilities` (batch, classes): the classes in the order of `labels.json`"
        if p.task == "classification"
        else "`logits` (batch, length, vocabulary): the next token's scores at each position"
    )
    bag = (
        f" The classifier's bag of hashed 1-{p.config.model.ngrams}-grams is computed inside the graph from "
        "`input_ids`: nothing more to prepare."
        if p.task == "classification" and p.config.model.ngrams
        else ""
    )
    return f"""# {p.task} model exported from jobformer

Checkpoint: `{p.path.name}`. Files: `model.onnx`, `vocab.json` (`tokens`: a token's id is its index;
unknown tokens map to `<unk>`), `labels.json`, `config.json` (the training config).

## Tokenize
1. {"Lowercase the text, then split" if tk.lowercase else "Split"} it into tokens with {split}.
2. Ids: {ids}. `<pad>` is id 0.

## Run
Input `input_ids`: int64 (batch, length), length at most {T}. Output: {output}.{bag}

```python
import json, numpy as np, onnxruntime as ort
itos = json.load(open("vocab.json"))["tokens"]
stoi = {{t: i for i, t in enumerate(itos)}}
session = ort.InferenceSession("model.onnx")
ids = [stoi["<cls>"]] + [stoi.get(t, stoi["<unk>"]) for t in tokens][: {T - 1}]
out = session.run(None, {{"input_ids": np.array([ids], dtype=np.int64)}})[0]
```
"""
