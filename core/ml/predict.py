"""Use a trained checkpoint: classify texts, or generate text from a prompt.

``Predictor.load`` reads only safetensors weights and JSON files (trainer_state.pt is not needed), so a
checkpoint downloaded from anywhere cannot run code when it is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from core.ml import checkpoint as ckpt
from core.ml.config import TrainConfig
from core.ml.errors import ConfigError, Problem
from core.ml.model import build_model
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
        self.tokenizer = build_tokenizer(config.tokenizer)

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
        meta = ckpt.load_json(path, ckpt.META_FILE)
        ckpt.check_architecture(meta, path)
        config = TrainConfig.model_validate(ckpt.load_json(path, ckpt.CONFIG_FILE))
        vocab = Vocab.from_dict(ckpt.load_json(path, ckpt.VOCAB_FILE))
        labels = list(meta.get("labels") or [])
        model = build_model(config.task, config.model, len(vocab), len(labels))
        model.load_state_dict(ckpt.load_weights(path))
        model.to(device).eval()
        return cls(config, vocab, labels, model, device, path)

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
        max_len = self.config.model.max_length
        rows = [
            [self.vocab.cls_id, *self.vocab.encode(t[: max_len - 1])]
            for t in self.tokenizer.tokenize(list(texts))
        ]
        out: list[dict] = []
        for i in range(0, len(rows), PREDICT_BATCH):
            chunk = rows[i : i + PREDICT_BATCH]
            x = torch.zeros(len(chunk), max(len(r) for r in chunk), dtype=torch.long)
            for j, r in enumerate(chunk):
                x[j, : len(r)] = torch.tensor(r)
            logits, _ = self.model(x.to(self.device))
            probs = F.softmax(logits.float(), dim=-1).cpu().tolist()
            for p in probs:
                best = max(range(len(p)), key=p.__getitem__)
                out.append(
                    {"label": self.labels[best], "probabilities": dict(zip(self.labels, p, strict=True))}
                )
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
