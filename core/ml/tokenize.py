"""Tokenization (spaCy blank pipelines or characters) and the vocabulary.

Word level uses ``spacy.blank(language)``: the tokenizer only, no model download, any language spaCy
ships. Chinese (``zh``) is segmented into characters, spaCy's default for a blank Chinese pipeline, so
neither jieba nor pkuseg is needed (we pin the ``char`` segmenter so that a changed default never starts a
download). Texts go through ``nlp.tokenizer.pipe`` in batches; whitespace-only tokens are dropped.

Subword (``kind`` "bpe", docs/design.md, "Subword tokens and init_from"): Hugging Face ``tokenizers`` BPE,
trained on the training split (``Tokenizer.fit``). spaCy's word splitting is the pre-tokenizer, except for
languages written without spaces (Chinese: spaCy splits into characters, which leaves BPE nothing to
merge), where the library's own ``Whitespace`` pre-tokenizer runs, so pieces span several characters.
Pieces inside a spaCy word start with ``##``. The trained model is stored as JSON inside the vocabulary
(``Vocab.subword``, vocab.json's "bpe" key), so a checkpoint carries it and loads through
``checkpoint.load_checkpoint`` like any other.
"""

from __future__ import annotations

import json
import logging
import pkgutil
import re
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
# A code as spaCy names its languages ('en', 'grc', 'xx', or ISO 639-3 'eng'): letters only, because
# spacy.util.get_lang_class imports ``spacy.lang.<code>`` and a dotted code such as 'ja.tag_map' would
# import a submodule and fail outside its error handling.
_LANGUAGE_CODE = re.compile(r"[a-z]{2,3}")


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


@lru_cache(maxsize=1)
def _shipped_languages() -> frozenset[str]:
    """The language packages in ``spacy.lang`` ('en', 'zh', ...), listed without importing any."""
    import spacy.lang

    return frozenset(m.name for m in pkgutil.iter_modules(spacy.lang.__path__) if m.ispkg)


def spacy_language_code(language: str) -> str | None:
    """spaCy's code for ``language`` ('eng' gives 'en'), or None when spaCy has no such language.

    Looks the code up in spaCy's language registry (languages that plugins register), the packages
    spaCy ships, and spaCy's aliases; it imports nothing for a code that is not a language.
    """
    if not _LANGUAGE_CODE.fullmatch(language):
        return None
    from spacy.util import find_matching_language, registry

    if language in registry.languages or language in _shipped_languages():
        return language
    return find_matching_language(language)


def _blank(language: str):
    """``spacy.blank(language)``, cached per process (building one costs ~0.1-0.3 s)."""
    code = spacy_language_code(language)
    if code is None:
        fix = "use a code such as 'en', 'de', 'fr', 'es', 'zh', or tokenizer.kind 'char'"
        raise ConfigError(
            f"tokenizer.language {language!r} is not a language spaCy knows; {fix}",
            problems=[Problem(_LANG_LOC, f"unknown spaCy language {language!r}; {fix}")],
        )
    with _lock:
        try:
            return _blank_cached(code)
        except ImportError as e:
            # e.g. 'ja' needs sudachipy, 'ko' needs mecab, 'th' needs pythainlp, 'vi' needs pyvi.
            raise ConfigError(
                f"tokenizer.language {language!r} needs a package that is not installed ({e}); "
                "use tokenizer.kind 'char' or install it",
                problems=[Problem(_LANG_LOC, f"spaCy language {language!r} needs an extra package: {e}")],
            ) from None


class Tokenizer:
    """Splits texts into string tokens: spaCy word level (``kind`` "spacy"), characters ("char") or BPE
    subwords ("bpe": ``subword`` is a trained model's JSON, or None until ``fit``)."""

    def __init__(
        self, kind: str = "spacy", language: str = "en", lowercase: bool = True, subword: str | None = None
    ):
        if kind not in ("spacy", "char", "bpe"):
            raise ConfigError(
                f"tokenizer.kind {kind!r} is unknown; use 'spacy', 'char' or 'bpe'",
                problems=[Problem(["config", "tokenizer", "kind"], f"unknown tokenizer kind {kind!r}")],
            )
        self.kind = kind
        self.language = language
        self.lowercase = lowercase
        # bpe: spaCy's words, except where spaCy gives characters (no spaces): the BPE model splits those.
        words = kind == "spacy" or (kind == "bpe" and language not in _NO_SPACES)
        self._nlp = _blank(language) if words else None
        if kind == "bpe" and self._nlp is None:
            _blank(language)  # the language must exist all the same
        self._bpe = _bpe_from_json(subword) if subword is not None else None

    def fit(self, texts: Sequence[str], *, max_vocab: int, min_freq: int) -> Vocab:
        """Train the BPE model on ``texts`` (the training split) and return its vocabulary, the specials
        first. A merge needs at least ``max(2, min_freq)`` occurrences, so rare words are split into
        pieces rather than kept whole (or lost to ``<unk>``)."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, pre_tokenizers, trainers

        if self.kind != "bpe":
            raise ValueError(f"only a 'bpe' tokenizer is trained, this one is {self.kind!r}")
        # spaCy's words come joined by single spaces: WhitespaceSplit gives them back (and is a no-op on a
        # pre-tokenized word); without spaCy the library's Whitespace splits runs of letters from punctuation.
        # Without spaces between words a piece needs no mark of continuing one: a character seen anywhere in
        # training is then known everywhere.
        spacy_words = self._nlp is not None
        prefix = {"continuing_subword_prefix": _CONTINUE} if spacy_words else {}
        bpe = HFTokenizer(models.BPE(unk_token=Vocab.UNK, **prefix))
        bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit() if spacy_words else pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(
            vocab_size=max_vocab,
            min_frequency=max(2, min_freq),
            special_tokens=list(Vocab.SPECIALS),
            show_progress=False,
            **prefix,
        )
        if spacy_words:
            corpus: Iterable[str] = (" ".join(words) for words in self._words(texts))
        else:
            corpus = (t.lower() for t in texts) if self.lowercase else texts
        bpe.train_from_iterator(corpus, trainer=trainer)
        self._bpe = bpe
        vocab = bpe.get_vocab()
        subword = json.dumps(json.loads(bpe.to_str()))  # the form vocab.json gives back (Vocab.from_dict)
        return Vocab(sorted(vocab, key=vocab.__getitem__), subword=subword)

    def _words(self, texts: Sequence[str]) -> list[list[str]]:
        assert self._nlp is not None
        if self.lowercase:
            texts = [t.lower() for t in texts]
        return [
            [tok.text for tok in doc if not tok.is_space]
            for doc in self._nlp.tokenizer.pipe(texts, batch_size=BATCH_SIZE)
        ]

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        """The tokens of each text, in one batched pass."""
        if self.kind == "bpe":
            return self._subwords(texts)
        if self._nlp is not None:
            return self._words(texts)
        if self.lowercase:
            texts = [t.lower() for t in texts]
        return [list(t) for t in texts]

    def _subwords(self, texts: Sequence[str]) -> list[list[str]]:
        if self._bpe is None:
            raise ValueError("a 'bpe' tokenizer is trained (fit) or loaded from a vocabulary before use")
        if self._nlp is not None:
            words = self._words(texts)
            encodings = self._bpe.encode_batch(words, is_pretokenized=True, add_special_tokens=False)
        else:
            texts = [t.lower() for t in texts] if self.lowercase else list(texts)
            encodings = self._bpe.encode_batch(texts, add_special_tokens=False)
        return [e.tokens for e in encodings]

    def detokenize(self, tokens: Sequence[str]) -> str:
        """Text from tokens. Char: exact. spaCy: best effort (spaces between tokens, none for zh/ja/th).
        BPE: as spaCy, with a ``##`` piece joined to the one before it.

        ``<eos>`` becomes a line break; ``<pad>`` and ``<cls>`` are dropped.
        """
        lines: list[list[str]] = [[]]
        for t in tokens:
            if t == Vocab.EOS:
                lines.append([])
            elif t not in (Vocab.PAD, Vocab.CLS):
                lines[-1].append(t)
        sep = "" if self.kind == "char" or self.language in _NO_SPACES else " "
        if self.kind == "bpe":
            return "\n".join(_join_pieces(line, sep) for line in lines)
        return "\n".join(sep.join(line) for line in lines)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, language={self.language!r}, lowercase={self.lowercase})"


_CONTINUE = "##"  # the prefix of a BPE piece that continues a word


def _join_pieces(pieces: Sequence[str], sep: str) -> str:
    out = ""
    for p in pieces:
        if p.startswith(_CONTINUE) and len(p) > len(_CONTINUE):
            out += p[len(_CONTINUE) :]
        else:
            out += (sep if out else "") + p
    return out


def _bpe_from_json(subword: str):
    from tokenizers import Tokenizer as HFTokenizer

    return HFTokenizer.from_str(subword)


def build_tokenizer(cfg: TokenizerConfig, vocab: Vocab | None = None) -> Tokenizer:
    """The tokenizer a config describes; a "bpe" one takes its trained model from ``vocab`` (a checkpoint's)
    or is left to ``fit``. Raises ConfigError for an unknown or unavailable language."""
    subword = vocab.subword if vocab is not None and cfg.kind == "bpe" else None
    return Tokenizer(cfg.kind, cfg.language, cfg.lowercase, subword)


class Vocab:
    """Token <-> id. The four special tokens always have ids 0-3; the rest by count desc, then token."""

    PAD, UNK, CLS, EOS = "<pad>", "<unk>", "<cls>", "<eos>"
    SPECIALS = (PAD, UNK, CLS, EOS)

    def __init__(self, itos: Sequence[str], subword: str | None = None):
        self.subword = subword  # a BPE tokenizer's model, as JSON (Tokenizer.fit), saved with the tokens
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
        return isinstance(other, Vocab) and other.itos == self.itos and other.subword == self.subword

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
        """JSON-safe form: ``{"version": 1, "tokens": [...]}`` (ids are list positions), and a BPE
        tokenizer's model under "bpe" (its JSON, parsed)."""
        d: dict = {"version": 1, "tokens": list(self.itos)}
        if self.subword is not None:
            d["bpe"] = json.loads(self.subword)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Vocab:
        if not isinstance(d, dict) or not isinstance(d.get("tokens"), list):
            raise ValueError("a vocabulary dict needs a 'tokens' list")
        if not all(isinstance(t, str) for t in d["tokens"]):
            raise ValueError("vocabulary tokens must be strings")
        bpe = d.get("bpe")
        if bpe is not None and not isinstance(bpe, dict):
            raise ValueError("a vocabulary's 'bpe' must be a tokenizer's JSON object")
        return cls(d["tokens"], json.dumps(bpe) if bpe is not None else None)
