"""The training config (DESIGN.md section 5): a validated pydantic model with documented defaults.

Every field has a default except ``task``. Unknown fields are refused, so a typo never silently
falls back to a default. ``TrainConfig.model_validate(d)`` is the one way a dict becomes a config;
``config.model_dump(mode="json")`` is the fully resolved form stored with jobs and checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.ml.errors import ConfigError, Problem


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TokenizerConfig(_Strict):
    kind: Literal["spacy", "char"] = Field("spacy", description="'spacy' word level, 'char' character level.")
    language: str = Field(
        "en",
        min_length=2,
        max_length=10,
        description="spaCy language code for spacy.blank(), e.g. 'en', 'zh', 'de' (tokenizer only).",
    )
    lowercase: bool = Field(True, description="Lowercase text before tokenizing.")
    min_freq: int = Field(1, ge=1, le=1_000_000, description="Tokens seen fewer times map to <unk>.")
    max_vocab: int = Field(30000, ge=10, le=1_000_000, description="Vocabulary size cap, specials included.")


class ModelConfig(_Strict):
    d_model: int = Field(128, ge=8, le=8192, description="Embedding / hidden width.")
    n_heads: int = Field(4, ge=1, le=128, description="Attention heads; must divide d_model.")
    n_layers: int = Field(2, ge=1, le=96, description="Transformer blocks.")
    dim_feedforward: int = Field(512, ge=8, le=65536, description="Hidden width of each block's MLP.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout probability.")
    max_length: int = Field(
        128, ge=2, le=8192, description="Tokens per example (classification) or context (LM)."
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads}); "
                f"for example n_heads {_divisor_hint(self.d_model, self.n_heads)}"
            )
        return self

    def estimate_parameters(self, vocab_size: int, num_classes: int = 0) -> int:
        """Parameter count for a vocabulary of ``vocab_size`` (used to refuse absurd models up front)."""
        d, f, n = self.d_model, self.dim_feedforward, self.n_layers
        per_block = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d  # attention, MLP, two LayerNorms
        head = d * num_classes + num_classes if num_classes else 0
        return vocab_size * d + n * per_block + 2 * d + head


def _divisor_hint(d_model: int, n_heads: int) -> int:
    candidates = [h for h in range(1, min(d_model, 128) + 1) if d_model % h == 0]
    return min(candidates, key=lambda h: abs(h - n_heads))


class TrainingConfig(_Strict):
    epochs: int = Field(3, ge=1, le=10_000, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps (overrides epochs).")
    batch_size: int = Field(32, ge=1, le=65536, description="Examples per step.")
    learning_rate: float = Field(1e-3, gt=0, le=10, description="Peak AdamW learning rate.")
    weight_decay: float = Field(0.01, ge=0, le=10, description="AdamW weight decay.")
    warmup_steps: int = Field(100, ge=0, description="Linear warmup steps, then cosine decay to 10%.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this; null: no clip.")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="Share of the data held out for validation.")
    eval_every: int | None = Field(
        None, ge=1, description="Also evaluate every N steps (always at epoch ends)."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop after N evaluations without improvement of the validation metric."
    )
    seed: int = Field(0, ge=0, description="Seed for the split, the initialisation and the batches.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="'auto': bf16 autocast on CUDA, float32 on CPU."
    )
    max_time_seconds: float | None = Field(
        None, gt=0, description="Wall-clock budget: stop cleanly (with a checkpoint) once it is spent."
    )


class TrainConfig(_Strict):
    task: Literal["classification", "language_modeling"] = Field(
        description="'classification' (encoder + pooled head) or 'language_modeling' (causal decoder)."
    )
    text_column: str | int = Field(
        "text", description="Column name, or 0-based index for files without header."
    )
    label_column: str | int | None = Field(
        None, description="Classification only; defaults to 'label'. Ignored for language modelling."
    )
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="'auto': cuda when present, else cpu."
    )

    @model_validator(mode="after")
    def _resolve(self) -> TrainConfig:
        if self.task == "classification":
            if self.label_column is None:
                object.__setattr__(self, "label_column", "label")
            if self.label_column == self.text_column:
                raise ValueError("label_column must differ from text_column")
        return self


def parse_config(data: dict | str | Path) -> TrainConfig:
    """Build a config from a dict, a JSON/YAML file path, or an inline JSON string.

    Raises ConfigError listing every problem with its field path.
    """
    if isinstance(data, Path) or (isinstance(data, str) and not data.lstrip().startswith("{")):
        path = Path(data)
        if not path.is_file():
            raise ConfigError(
                f"config file {str(path)!r} not found", problems=[Problem(["config"], "not found")]
            )
        text = path.read_text(encoding="utf-8")
        data = _parse_text(text, yaml_ok=path.suffix.lower() in (".yaml", ".yml"))
    elif isinstance(data, str):
        data = _parse_text(data, yaml_ok=False)
    if not isinstance(data, dict):
        raise ConfigError("config must be a JSON object", problems=[Problem(["config"], "must be an object")])
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        problems = problems_from_validation_error(e)
        summary = "; ".join(f"{'.'.join(map(str, p.loc))}: {p.msg}" for p in problems)
        raise ConfigError(f"invalid config: {summary}", problems=problems) from None


def _parse_text(text: str, yaml_ok: bool) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if yaml_ok:
            import yaml

            try:
                return yaml.safe_load(text)
            except yaml.YAMLError as ye:
                raise ConfigError(f"config is not valid YAML: {ye}") from None
        raise ConfigError(
            f"config is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
            problems=[Problem(["config"], f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}")],
        ) from None


def problems_from_validation_error(e: ValidationError, prefix: tuple[str, ...] = ()) -> list[Problem]:
    out = []
    for err in e.errors(include_url=False):
        loc = [*prefix, *err["loc"]]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        out.append(Problem(loc, msg, err["type"]))
    return out
