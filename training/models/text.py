"""Title text for the semantic stream: tokenizer, vocabulary and word2vec initialisation.

- :func:`tokenize`: NFKC, lower-case, apostrophes removed, every other punctuation or symbol
  (emoji included) becomes a separator; Chinese/Japanese runs are segmented with ``jieba``
  when it is importable, else one token per character. Order is kept (the bi-LSTM baselines
  need it; the bilinear attention ignores it).
- :class:`Vocab`: PAD = 0, UNK = 1, words ordered by frequency; ``encode`` pads/truncates to a
  fixed length and returns a boolean mask; saved as JSON (with the segmenter it was built with,
  so inspection tokenizes exactly as training did).
- :func:`train_word2vec`: gensim skip-gram on the training titles, deterministic (one worker,
  fixed seed); returns the (V, dim) matrix that initialises the text encoders' embeddings.
"""

from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

log = logging.getLogger(__name__)

PAD, UNK = 0, 1
PAD_TOKEN, UNK_TOKEN = "<pad>", "<unk>"
Segmenter = Literal["jieba", "char"]

# CJK ideographs (+ extension A, compatibility) and Japanese kana: written without spaces.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_RUNS = re.compile(f"[{_CJK}]+|[^{_CJK}]+")
_IS_CJK = re.compile(f"[{_CJK}]")
_APOSTROPHES = str.maketrans("", "", "'\u2019\u02bc")


@lru_cache(maxsize=1)
def _jieba() -> Any | None:
    try:
        import jieba
    except ImportError:
        return None
    jieba.setLogLevel(logging.WARNING)  # it logs its dictionary loading at INFO otherwise
    return jieba


def default_segmenter() -> Segmenter:
    return "jieba" if _jieba() is not None else "char"


def _strip_punct(text: str) -> str:
    return "".join(
        " " if unicodedata.category(ch)[0] in "PSCZ" else ch for ch in text
    )


def tokenize(title: str, segmenter: Segmenter | None = None) -> list[str]:
    """Split a title into lower-case word tokens (see the module docstring)."""
    segmenter = segmenter or default_segmenter()
    text = _strip_punct(unicodedata.normalize("NFKC", title).lower().translate(_APOSTROPHES))
    tokens: list[str] = []
    for chunk in text.split():
        for run in _RUNS.findall(chunk):
            if not _IS_CJK.match(run):
                tokens.append(run)
            elif segmenter == "jieba" and (jb := _jieba()) is not None:
                tokens.extend(t for t in jb.lcut(run) if t.strip())
            else:
                tokens.extend(run)
    return tokens


@dataclass
class Vocab:
    """Word ↔ id map; ``itos[0]`` is PAD, ``itos[1]`` is UNK."""

    itos: list[str]
    counts: list[int] = field(default_factory=list)  # training occurrences per id
    segmenter: Segmenter = "char"
    _stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.itos[:2] != [PAD_TOKEN, UNK_TOKEN]:
            raise ValueError(f"a vocabulary starts with {PAD_TOKEN!r}, {UNK_TOKEN!r}")
        self._stoi = {w: i for i, w in enumerate(self.itos)}
        if len(self._stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique")

    @classmethod
    def build(
        cls,
        titles: Iterable[str | Sequence[str]],
        min_count: int = 1,
        max_df: float = 1.0,
        max_size: int | None = None,
        segmenter: Segmenter | None = None,
    ) -> Vocab:
        """Words seen ``>= min_count`` times and in at most ``max_df`` of the titles (drops
        "free shipping"-like words that are everywhere), the ``max_size`` most frequent
        (PAD and UNK included). Titles may be strings or already tokenized lists."""
        if not 0.0 < max_df <= 1.0:
            raise ValueError("max_df is a fraction of titles in (0, 1]")
        seg = segmenter or default_segmenter()
        counts: Counter[str] = Counter()
        docs: Counter[str] = Counter()
        n = 0
        for t in titles:
            toks = tokenize(t, seg) if isinstance(t, str) else list(t)
            counts.update(toks)
            docs.update(set(toks))
            n += 1
        keep = [
            w for w, c in counts.items()
            if c >= min_count and docs[w] <= max_df * n and w not in (PAD_TOKEN, UNK_TOKEN)
        ]
        keep.sort(key=lambda w: (-counts[w], w))
        if max_size is not None:
            keep = keep[: max(0, max_size - 2)]
        log.info("vocabulary: %d of %d distinct words kept from %d titles", len(keep), len(counts), n)
        return cls([PAD_TOKEN, UNK_TOKEN, *keep], [0, 0, *(counts[w] for w in keep)], seg)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self._stoi

    def index(self, word: str) -> int:
        return self._stoi.get(word, UNK)

    def tokenize(self, title: str) -> list[str]:
        return tokenize(title, self.segmenter)

    def encode_tokens(self, tokens: Sequence[str]) -> list[int]:
        return [self._stoi.get(w, UNK) for w in tokens]

    def encode(
        self, titles: Sequence[str | Sequence[str]], max_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """→ ``ids`` (N, max_len) int64, right-padded with PAD, and ``mask`` (N, max_len) bool,
        True on real tokens. Unknown words map to UNK (they still count as words)."""
        if max_len < 1:
            raise ValueError("max_len must be >= 1")
        ids = torch.full((len(titles), max_len), PAD, dtype=torch.long)
        for row, t in enumerate(titles):
            toks = self.tokenize(t) if isinstance(t, str) else t
            enc = self.encode_tokens(toks)[:max_len]
            if enc:
                ids[row, : len(enc)] = torch.tensor(enc, dtype=torch.long)
        return ids, ids != PAD

    def to_dict(self) -> dict[str, Any]:
        return {"itos": self.itos, "counts": self.counts, "segmenter": self.segmenter}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocab:
        return cls(list(data["itos"]), list(data.get("counts", [])), data.get("segmenter", "char"))

    def save(self, path: str | os.PathLike[str]) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocab:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def train_word2vec(
    token_lists: Sequence[Sequence[str]],
    vocab: Vocab,
    dim: int = 128,
    epochs: int = 10,
    seed: int = 0,
    workers: int = 1,
    window: int = 5,
    sg: int = 1,
) -> np.ndarray:
    """Skip-gram word2vec on tokenized titles → float32 (len(vocab), dim) aligned with
    ``vocab``. PAD row = 0; UNK row = the mean word vector; vocabulary words that word2vec did
    not see get small seeded random vectors. ``workers=1`` + ``seed`` make it deterministic
    (gensim's threads otherwise race on the shared weights)."""
    from gensim.models import Word2Vec

    sentences = [list(t) for t in token_lists if len(t) > 0]
    if not sentences:
        raise ValueError("word2vec needs at least one non-empty title")
    w2v = Word2Vec(
        sentences=sentences, vector_size=dim, window=window, min_count=1, sg=sg,
        workers=workers, seed=seed, epochs=epochs, hashfxn=_stable_hash,
    )
    rng = np.random.default_rng(seed)
    out = np.zeros((len(vocab), dim), dtype=np.float32)
    known: list[int] = []
    for i, word in enumerate(vocab.itos[2:], start=2):
        if word in w2v.wv.key_to_index:
            out[i] = w2v.wv[word]
            known.append(i)
    scale = float(out[known].std()) if known else 0.1
    seen = set(known)
    missing = [i for i in range(2, len(vocab)) if i not in seen]
    if missing:
        out[missing] = rng.normal(0.0, scale, (len(missing), dim))
        log.info("word2vec: %d vocabulary words unseen, initialised at random", len(missing))
    if known:
        out[UNK] = out[known].mean(axis=0)
    return out


def _stable_hash(text: str) -> int:
    # Python's hash() of str changes per process (PYTHONHASHSEED); gensim seeds with it.
    import zlib

    return zlib.crc32(text.encode("utf-8"))
