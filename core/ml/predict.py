"""Use a trained checkpoint: classify texts, generate text from a prompt, or turn texts into texts
(``text_to_text``: greedy or beam search, core/ml/decode.py).

``Predictor.load`` reads only safetensors weights and JSON files (trainer_state.pt is not needed), so a
checkpoint downloaded from anywhere cannot run code when it is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from core.ml import checkpoint as ckpt
from core.ml import seq2seq
from core.ml.config import TrainConfig
from core.ml.decode import beam_search, greedy_decode
from core.ml.errors import ConfigError, Problem
from core.ml.tasks import encode_rows, pad_rows
from core.ml.tokenize import Vocab, build_tokenizer

PREDICT_BATCH = 64


class Predictor:
    """A model loaded from a checkpoint directory, ready for ``classify`` or ``generate``."""

    def __init__(self, config: TrainConfig, vocab: Vocab, labels: list[str], model, device: str, path: Path):
        self.config = config
        self.task: str = config.task
        self.vocab = vocab
        self.labels = labels
        self.model = model
        self.device = torch.device(device)
        self.path = path
        self.tokenizer = build_tokenizer(config.tokenizer, vocab)  # a BPE model travels in the vocabulary

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> Predictor:
        """Load a checkpoint directory, or a run directory (its best checkpoint)."""
        path = Path(path)
        if not (path / ckpt.MODEL_FILE).is_file():
            best = ckpt.best_checkpoint(path)
            if best is None:
                raise FileNotFoundError(
                    f"{path} is neither a checkpoint directory nor a run with checkpoints"
                )
            path = best
        saved = ckpt.load_checkpoint(path)  # the loading path a resumed training run takes too
        config = saved.train_config()
        if config.task == "text_to_text":  # two vocabularies: the source's, and the target's beside it
            model, vocab = seq2seq.load_model(saved, device)
            return cls(config, vocab, [], model.eval(), device, saved.path)
        model = saved.model(config, device).eval()
        return cls(config, saved.vocab, saved.labels, model, device, saved.path)

    def _require(self, task: str, method: str) -> None:
        if self.task != task:
            raise ConfigError(
                f"{method}() needs a {task} model; this checkpoint is {self.task}",
                problems=[Problem(["task"], f"is {self.task}")],
            )

    @torch.inference_mode()
    def classify(self, texts: Sequence[str]) -> list[dict]:
        """``[{"label": str, "probabilities": {label: p}}]``, one per text, in order."""
        self._require("classification", "classify")
        # Encoded and padded as training encodes them (core.ml.tasks).
        rows = encode_rows(self.vocab, self.tokenizer.tokenize(list(texts)), self.config.model.max_length)
        out: list[dict] = []
        for i in range(0, len(rows), PREDICT_BATCH):
            x, _ = pad_rows(rows[i : i + PREDICT_BATCH])  # (b, L)
            logits, _ = self.model(x.to(self.device))
            probs = F.softmax(logits.float(), dim=-1).cpu().tolist()
            for p in probs:
                best = max(range(len(p)), key=p.__getitem__)
                out.append(
                    {"label": self.labels[best], "probabilities": dict(zip(self.labels, p, strict=True))}
                )
        return out

    @torch.inference_mode()
    def probabilities(
        self, token_lists: Sequence[Sequence[str]], batch_size: int = PREDICT_BATCH
    ) -> torch.Tensor:
        """Class probabilities (N, K) of already tokenized texts, in their order. The rows are batched by
        length (little padding; padding is masked, so the numbers are those of one row at a time):
        the batch path of evaluations and batch predictions (core/ml/batch.py)."""
        self._require("classification", "probabilities")
        rows = encode_rows(self.vocab, token_lists, self.config.model.max_length)
        out = torch.empty(len(rows), len(self.labels))
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x, _ = pad_rows([rows[j] for j in idx])  # (b, L)
            logits, _ = self.model(x.to(self.device))
            out[idx] = F.softmax(logits.float(), dim=-1).cpu()
        return out

    @torch.inference_mode()
    def generate(
        self,
        prompt: str,
        *,
        max_new_tokens: int = 200,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> str:
        """Sample a continuation of ``prompt`` (the continuation only, without the prompt).

        Stops after ``max_new_tokens`` or at the end-of-document token. ``temperature`` 0 is greedy;
        ``seed`` makes the sample reproducible.
        """
        self._require("language_modeling", "generate")
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        ids = self.vocab.encode(self.tokenizer.tokenize([prompt])[0]) if prompt else []
        if not ids:  # an empty prompt starts a new document
            ids = [self.vocab.eos_id]
        gen = torch.Generator(device=self.device).manual_seed(seed) if seed is not None else None
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        out = self.model.generate(
            idx,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            stop_id=self.vocab.eos_id,
            generator=gen,
        )
        new = out[0, len(ids) :].tolist()
        if new and new[-1] == self.vocab.eos_id:
            new = new[:-1]
        return self.tokenizer.detokenize(self.vocab.decode(new))

    @torch.inference_mode()
    def text_to_text(
        self,
        texts: Sequence[str],
        *,
        beam_size: int = 1,
        length_penalty: float = 1.0,
        max_new_tokens: int | None = None,
        use_cache: bool = True,
    ) -> list[str]:
        """The output text of each input text, in order: greedy with ``beam_size`` 1, else beam search.

        ``max_new_tokens`` (default and at most: model.max_length) bounds each output. Inputs are batched
        by length; padding is masked, so each output is the one the text would get alone.
        """
        self._require("text_to_text", "text_to_text")
        if beam_size < 1:
            raise ValueError("beam_size must be >= 1")
        T = self.config.model.max_length
        limit = T if max_new_tokens is None else min(max_new_tokens, T)
        assert isinstance(self.vocab, seq2seq.PairVocab)
        source_tokenizer, target_tokenizer = seq2seq.tokenizers(self.config)
        rows = seq2seq.encode_sources(self.vocab, source_tokenizer.tokenize(list(texts)), T)
        rows = [r or [self.vocab.unk_id] for r in rows]  # an empty text: one unknown token, not no key
        tv = self.vocab.target
        out: list[str] = [""] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for i in range(0, len(order), PREDICT_BATCH):
            idx = order[i : i + PREDICT_BATCH]
            src, _ = pad_rows([rows[j] for j in idx])  # (b, S)
            src = src.to(self.device)
            common = dict(bos_id=tv.cls_id, eos_id=tv.eos_id, max_new_tokens=limit, use_cache=use_cache)
            if beam_size == 1:
                ids = greedy_decode(self.model, src, **common)
            else:
                ids = beam_search(
                    self.model, src, beam_size=beam_size, length_penalty=length_penalty, **common
                )
            for j, r in zip(idx, ids, strict=True):
                out[j] = target_tokenizer.detokenize(tv.decode(r))
        return out
