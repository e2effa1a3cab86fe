"""Tokenization (spaCy blank pipelines or characters) and the vocabulary.

Word level uses ``spacy.blank(language)``: the tokenizer only, no model download, any language spaCy
ships. Chinese (``zh``) is segmented into characters, spaCy's default for a blank Chinese pipeline, so
neither jieba nor pkuseg is needed (we pin the ``char`` segmenter so that a changed default never starts a
download). Texts go through ``nlp.tokenizer.pipe`` in batches; whitespace-only tokens are dropped.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache

from core.ml.config import TokenizerConfig
from core.ml.errors import ConfigError, Problem

log = logging.getLogger(__name__)

BATCH_SIZE = 1000
_LANG_LOC: list[str | int] = ["config", "tokenizer", "language"]
# Languages written without spaces between words: detokenize joins their tokens directly.
_NO_SPACES = {"zh", "ja", "th", "lo", "bo", "my", "km"}
_lock = threading.Lock()


def language_problem(language: str) -> Problem | None:
    """The problem with a spaCy language code, or None if ``spacy.blank(language)`` would work."""
    try:
        _blank(language)
    except ConfigError as e:
        return e.problems[0]
    return None


@lru_cache(maxsize=32)
def _blank_cached(language: str):
    import spacy

    # Chinese: pin character segmentation; the other segmenters need jieba/pkuseg and a download.
    config = {"nlp": {"tokenizer": {"segmenter": "char"}}} if language == "zh" else {}
    return spacy.blank(language, config=config)


def _blank(language: str):
    """``spacy.blank(language)``, cached per process (building one costs ~0.1-0.3 s)."""
    from spacy.util import get_lang_class

    try:
        get_lang_class(language)
    except (ImportError, KeyError):
        raise ConfigError(
            f"tokenizer.language {language!r} is not a language spaCy knows; use a code such as "
            "'en', 'de', 'fr', 'es', 'zh', or tokenizer.kind 'char'",
            problems=[Problem(_LANG_LOC, f"unknown spaCy language {language!r}")],
        ) from None
    with _lock:
        try:
            return _blank_cached(language)
        except ImportError as e:
            # e.g. 'ja' needs sudachipy, 'ko' needs mecab, 'th' needs pythainlp, 'vi' needs pyvi.
            raise ConfigError(
                f"tokenizer.language {language!r} needs a package that is not installed ({e}); "
                "use tokenizer.kind 'char' or install it",
                problems=[Problem(_LANG_LOC, f"spaCy language {language!r} needs an extra package: {e}")],
            ) from None


class Tokenizer:
    """Splits texts into string tokens: spaCy word level (``kind`` "spacy") or characters ("char")."""

    def __init__(self, kind: str = "spacy", language: str = "en", lowercase: bool = True):
        if kind not in ("spacy", "char"):
            raise ConfigError(
                f"tokenizer.kind {kind!r} is unknown; use 'spacy' or 'char'",
                problems=[Problem(["config", "tokenizer", "kind"], f"unknown tokenizer kind {kind!r}")],
            )
        self.kind = kind
        self.language = language
        self.lowercase = lowercase
        self._nlp = _blank(language) if kind == "spacy" else None

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """The tokens of each text, in one batched pass."""
        if self.lowercase:
            texts = [t.lower() for t in texts]
        if self._nlp is None:
            return [list(t) for t in texts]
        return [
            [tok.text for tok in doc if not tok.is_space]
            for doc in self._nlp.tokenizer.pipe(texts, batch_size=BATCH_SIZE)
        ]

    def detokenize(self, tokens: Sequence[str]) -> str:
        """Text from tokens. Char: exact. spaCy: best effort (spaces between tokens, none for zh/ja/th).

        ``<eos>`` becomes a line break; ``<pad>`` and ``<cls>`` are dropped.
        """
        lines: list[list[str]] = [[]]
        for t in tokens:
            if t == Vocab.EOS:
                lines.append([])
            elif t not in (Vocab.PAD, Vocab.CLS):
                lines[-1].append(t)
        sep = "" if self.kind == "char" or self.language in _NO_SPACES else " "
        return "\n".join(sep.join(line) for line in lines)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, language={self.language!r}, lowercase={self.lowercase})"


def build_tokenizer(cfg: TokenizerConfig) -> Tokenizer:
    """The tokenizer a config describes. Raises ConfigError for an unknown or unavailable language."""
    return Tokenizer(cfg.kind, cfg.language, cfg.lowercase)


class Vocab:
    """Token <-> id. The four special tokens always have ids 0-3; the rest by count desc, then token."""

    PAD, UNK, CLS, EOS = "<pad>", "<unk>", "<cls>", "<eos>"
    SPECIALS = (PAD, UNK, CLS, EOS)

    def __init__(self, itos: Sequence[str]):
        if tuple(itos[:4]) != self.SPECIALS:
            raise ValueError(f"a vocabulary must start with {list(self.SPECIALS)}, got {list(itos[:4])}")
        self.itos: list[str] = list(itos)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("a vocabulary must not repeat a token")

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], *, min_freq: int, max_vocab: int) -> Vocab:
        """Tokens seen at least ``min_freq`` times, the most frequent first, ``max_vocab`` in all (specials
        included). Ties are broken by the token itself, so the same data always gives the same ids."""
        if max_vocab < len(cls.SPECIALS):
            raise ValueError(f"max_vocab must be at least {len(cls.SPECIALS)}, got {max_vocab}")
        counts: Counter[str] = Counter()
        for tokens in token_lists:
            counts.update(tokens)
        for s in cls.SPECIALS:
            counts.pop(s, None)
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        return cls([*cls.SPECIALS, *kept[: max_vocab - len(cls.SPECIALS)]])

    def encode(self, tokens: Sequence[str]) -> list[int]:
        unk = 1
        get = self.stoi.get
        return [get(t, unk) for t in tokens]

    def decode(self, ids: Sequence[int]) -> list[str]:
        itos = self.itos
        n = len(itos)
        return [itos[i] if 0 <= i < n else self.UNK for i in ids]

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and other.itos == self.itos

    __hash__ = None  # type: ignore[assignment]

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    @property
    def cls_id(self) -> int:
        return 2

    @property
    def eos_id(self) -> int:
        return 3

    def to_dict(self) -> dict:
        """JSON-safe form: ``{"version": 1, "tokens": [...]}`` (ids are list positions)."""
        return {"version": 1, "tokens": list(self.itos)}

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        if not isinstance(d, dict) or not isinstance(d.get("tokens"), list):
            raise ValueError("a vocabulary dict needs a 'tokens' list")
        if not all(isinstance(t, str) for t in d["tokens"]):
            raise ValueError("vocabulary tokens must be strings")
        return cls(d["tokens"])
