"""The training config (docs/design.md, "Training config and the model"): a validated pydantic model
with documented defaults.

Every field has a default except ``task``. Unknown fields are refused, so a typo never silently
falls back to a default. ``TrainConfig.model_validate(d)`` is the one way a dict becomes a config;
``config.model_dump(mode="json")`` is the fully resolved form stored with jobs and checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.ml.errors import ConfigError, Problem, format_problems


class FieldError(ValueError):
    """A model validator's error about one field: ``problems_from_validation_error`` puts it at ``loc``."""

    def __init__(self, loc: tuple[str, ...], msg: str) -> None:
        super().__init__(msg)
        self.loc = loc


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TokenizerConfig(_Strict):
    kind: Literal["spacy", "char", "bpe"] = Field(
        "spacy",
        description="'spacy' word level, 'char' character level, 'bpe' subwords learned on the training "
        "split (Hugging Face tokenizers; max_vocab pieces at most, a merge seen max(2, min_freq) times).",
    )
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
    ngrams: int = Field(
        2,
        ge=0,
        le=4,
        description="Classification: besides the Transformer, a bag of hashed token n-grams of 1 to this "
        "many tokens (fastText-style) feeds the head; 0 turns it off. Unset, 3 where the tokens are "
        "characters (tokenizer.kind 'char', or language 'zh'), else 2. Other tasks ignore it.",
    )
    ngram_buckets: int = Field(
        1 << 17,
        ge=1,
        le=1 << 24,
        description="Hash buckets (rows of the embedding table) of the n-gram bag (model.ngrams).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute each block's activations in the backward pass instead of keeping them: "
        "less memory for deep models, about a third more compute; the same gradients.",
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
        """Parameter count for a vocabulary of ``vocab_size`` (used to refuse absurd models up front); a
        classifier's (``num_classes`` > 0) includes its n-gram bag."""
        d, f, n = self.d_model, self.dim_feedforward, self.n_layers
        per_block = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d  # attention, MLP, two LayerNorms
        head = d * num_classes + num_classes if num_classes else 0
        if num_classes and self.ngrams:  # a classifier's n-gram bag: its table and its half of the head
            head += self.ngram_buckets * d + d * num_classes
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
    warmup_steps: int = Field(
        100,
        ge=0,
        description="Linear warmup steps, then cosine decay to 10% (classification: at most a quarter of "
        "the run's steps).",
    )
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
    label_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Text to text: share of each target's probability spread over the vocabulary.",
    )
    grad_accum_steps: int = Field(
        1,
        ge=1,
        le=4096,
        description="Split each batch of batch_size examples into this many micro-batches, one backward "
        "pass each, one optimizer step: the same gradients with a fraction of the activation memory.",
    )

    @model_validator(mode="after")
    def _micro_batches_fit(self) -> TrainingConfig:
        if self.grad_accum_steps > self.batch_size:
            raise FieldError(
                ("grad_accum_steps",),
                f"grad_accum_steps ({self.grad_accum_steps}) splits a batch of batch_size "
                f"({self.batch_size}) examples into micro-batches; make it at most batch_size",
            )
        return self


class ResourcesConfig(_Strict):
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description='Data-parallel processes the worker runs the job on (torchrun; docs/design.md, "A job '
        'on many processes in the service"): one per GPU, or on CPU each with a share of the cores. '
        "training.batch_size must be divisible by it.",
    )
    memory_gb: float | None = Field(
        None,
        gt=0,
        le=65536,
        description="GiB of memory each process of the job needs (GPU memory on a GPU worker, RAM on a CPU "
        "one): only workers with that much take it. Unset: estimated from the model and the batch "
        '(docs/design.md, "Memory"); set it when the estimate is far off.',
    )


_BPE = "'bpe' "


class TrainConfig(_Strict):
    task: Literal["classification", "language_modeling", "text_to_text"] = Field(
        description="'classification' (encoder + pooled head), 'language_modeling' (causal decoder) or "
        "'text_to_text' (encoder-decoder: translation, summarization)."
    )
    text_column: str | int = Field(
        "text", description="Column name, or 0-based index for files without header."
    )
    label_column: str | int | None = Field(
        None, description="Classification only; defaults to 'label'. Ignored for language modelling."
    )
    source_column: str | int | None = Field(
        None, description="Text to text only: the input column; defaults to 0, the first column."
    )
    target_column: str | int | None = Field(
        None, description="Text to text only: the output column; defaults to 1, the second column."
    )
    tokenizer: TokenizerConfig = Field(
        default_factory=TokenizerConfig, description="The texts' tokenizer (text to text: the source's)."
    )
    target_tokenizer: TokenizerConfig | None = Field(
        None, description="Text to text only: the target's tokenizer; null: the same as tokenizer."
    )
    shared_vocabulary: bool = Field(
        False,
        description="Text to text only: one vocabulary and embedding for source and target (related languages).",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    init_from: str | None = Field(
        None,
        max_length=4096,
        description="Start from another model's weights and vocabulary: the API takes a finished job's id "
        "(of the same owner; its best checkpoint), the CLI a checkpoint directory. A classifier can start "
        "from a language model's backbone; the model fields must match the checkpoint's.",
    )
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$", description="'auto': cuda when present, else cpu."
    )
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig, description="What the worker gives the job: processes."
    )

    @model_validator(mode="after")
    def _resolve(self) -> TrainConfig:
        self._check_processes()
        if self.task == "classification":
            if "ngrams" not in self.model.model_fields_set and (
                self.tokenizer.kind == "char" or self.tokenizer.language == "zh"
            ):  # character tokens: 1-3-grams, as a character TF-IDF takes them
                object.__setattr__(self.model, "ngrams", 3)
            if self.label_column is None:
                object.__setattr__(self, "label_column", "label")
            if self.label_column == self.text_column:
                raise ValueError("label_column must differ from text_column")
        elif self.task == "text_to_text":
            self._resolve_text_to_text()
        if self.task == "text_to_text":
            target = self.target_tokenizer
            for field, unsupported in (
                (("tokenizer", "kind"), self.tokenizer.kind == "bpe"),
                (("target_tokenizer", "kind"), target is not None and target.kind == "bpe"),
                (("init_from",), self.init_from is not None),
            ):
                if unsupported:
                    raise FieldError(
                        field,
                        f"text_to_text does not take {'.'.join(field)} {_BPE if len(field) > 1 else ''}"
                        "yet; use tokenizer.kind 'spacy' or 'char', and no init_from",
                    )
        return self

    def _check_processes(self) -> None:
        """Every process takes an equal share of each batch (core.ml.distributed.check_processes)."""
        n, batch, accum = self.resources.processes, self.training.batch_size, self.training.grad_accum_steps
        if batch % n:
            lower, upper = batch - batch % n, batch + n - batch % n
            raise FieldError(
                ("resources", "processes"),
                f"training.batch_size ({batch}) must be divisible by resources.processes ({n}): each "
                f"process takes an equal share of the batch; make batch_size {lower or upper} or {upper}, "
                "or change processes",
            )
        if batch // n < accum:
            raise FieldError(
                ("resources", "processes"),
                f"training.grad_accum_steps ({accum}) is more than each of the {n} processes' {batch // n} "
                "examples; lower grad_accum_steps or processes",
            )

    def _resolve_text_to_text(self) -> None:
        """Defaults (columns 0 and 1, the target tokenizer the source's) and columns meant for other tasks."""
        # text_column's default ("text") comes back in a stored config: only another value is a mistake.
        if self.label_column is not None or self.text_column != "text":
            raise FieldError(
                ("label_column",) if self.label_column is not None else ("text_column",),
                "text_to_text reads source_column and target_column; "
                "remove text_column and label_column and name the two columns there",
            )
        if self.source_column is None:
            object.__setattr__(self, "source_column", 0)
        if self.target_column is None:
            object.__setattr__(self, "target_column", 1)
        if str(self.source_column) == str(self.target_column):
            raise FieldError(
                ("target_column",),
                f"source_column and target_column are the same ({self.source_column!r}); "
                "name the input and the output column",
            )
        if self.target_tokenizer is None:
            object.__setattr__(self, "target_tokenizer", self.tokenizer.model_copy())


def config_from_dict(data: object, *, prefix: tuple[str, ...] = ()) -> TrainConfig:
    """Validate a parsed config (a JSON object). Raises ConfigError listing every problem, each with its
    field path under ``prefix`` (the API passes ``("config",)``)."""
    where = [*prefix] or ["config"]
    if not isinstance(data, dict):
        raise ConfigError(
            'config must be a JSON object such as {"task": "classification"}',
            problems=[Problem(where, "must be a JSON object", "dict_type")],
        )
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        problems = problems_from_validation_error(e, prefix=prefix)
        raise ConfigError(
            f"invalid config: {format_problems(problems, limit=5)}", problems=problems
        ) from None


def config_from_text(text: str, *, yaml_ok: bool = False, prefix: tuple[str, ...] = ()) -> TrainConfig:
    """A config written as JSON (or YAML, with ``yaml_ok``) text."""
    return config_from_dict(_parse_text(text, yaml_ok, [*prefix] or ["config"]), prefix=prefix)


def config_from_file(path: str | Path) -> TrainConfig:
    """A config file: JSON, or YAML when its name ends in .yaml or .yml."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found", problems=[Problem(["config"], "not found")])
    text = path.read_text(encoding="utf-8")
    return config_from_text(text, yaml_ok=path.suffix.lower() in (".yaml", ".yml"))


def parse_config(arg: str | Path) -> TrainConfig:
    """The CLI's ``--config``: inline JSON (it starts with ``{``), else the path of a JSON or YAML file."""
    if isinstance(arg, str) and arg.lstrip().startswith("{"):
        return config_from_text(arg)
    return config_from_file(arg)


def _parse_text(text: str, yaml_ok: bool, where: list[str | int]) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if yaml_ok:
            import yaml

            try:
                return yaml.safe_load(text)
            except yaml.YAMLError as ye:
                raise ConfigError(f"config is not valid YAML: {ye}") from None
        position = f"{e.msg} at line {e.lineno} column {e.colno}"
        raise ConfigError(
            f"config is not valid JSON: {position}",
            problems=[Problem(where, f"not valid JSON: {position}", "json_invalid")],
        ) from None


def problems_from_validation_error(e: ValidationError, prefix: tuple[str, ...] = ()) -> list[Problem]:
    out = []
    for err in e.errors(include_url=False):
        loc = [*prefix, *err["loc"]]
        msg = err["msg"]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):  # a model validator's error about one field: put it there
            loc, msg = [*prefix, *err["loc"], *cause.loc], str(cause)
        if err["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling"
        out.append(Problem(loc, msg, err["type"]))
    return out
