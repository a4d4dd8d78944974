"""Seller-style noisy titles of training images, and statistics about their words.

A training title is the SKU's brand, product, variant and size, some category attributes and
promotion noise ("free shipping", "hot sale", "2026", ...), sometimes reordered, sometimes
missing a part, and now and then carrying words of another SKU of the same category (label
noise in the side information, as on real marketplaces).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from .spec import SkuSpec
from .vocab import ATTRIBUTES, PROMO_WORDS

OTHER_SKU_PROB = 0.10
PHRASE_SHUFFLE_PROB = 0.30
WORD_SALAD_PROB = 0.08


def _choose(rng: np.random.Generator, items: Sequence[str], lo: int, hi: int) -> list[str]:
    n = int(rng.integers(lo, min(hi, len(items)) + 1))
    return [items[i] for i in rng.choice(len(items), size=n, replace=False)] if n else []


def _other_sku_words(
    rng: np.random.Generator, spec: SkuSpec, specs: Sequence[SkuSpec]
) -> list[str]:
    same = [s for s in specs if s.category == spec.category and s.brand_index != spec.brand_index]
    if not same:
        return []
    other = same[int(rng.integers(len(same)))]
    parts = [other.product, other.variant, other.brand.name]
    return _choose(rng, parts, 1, 2)


def noisy_title(
    rng: np.random.Generator, spec: SkuSpec, specs: Sequence[SkuSpec]
) -> tuple[str, bool]:
    """(title, has words of another SKU)."""
    segs = [spec.brand.name, spec.product]
    if rng.random() < 0.85:
        segs.append(spec.variant)
    if rng.random() < 0.7:
        segs.append(spec.size)
    segs += _choose(rng, ATTRIBUTES[spec.category], 0, 2)
    if rng.random() < 0.3:
        segs.append(spec.family)
    other = _other_sku_words(rng, spec, specs) if rng.random() < OTHER_SKU_PROB else []
    segs += other
    segs += _choose(rng, PROMO_WORDS, 0, 3)
    u = rng.random()
    if u < WORD_SALAD_PROB:
        words = " ".join(segs).split()
        title = " ".join(words[i] for i in rng.permutation(len(words)))
    else:
        if u < WORD_SALAD_PROB + PHRASE_SHUFFLE_PROB:
            segs = [segs[i] for i in rng.permutation(len(segs))]
        title = " ".join(segs)
    if rng.random() < 0.3:
        title = title.lower()
    return title, bool(other)


_WORD = re.compile(r"[a-z0-9]+")
_PROMO = {w for p in PROMO_WORDS for w in _WORD.findall(p)}


def content_words(title: str) -> list[str]:
    return [w for w in _WORD.findall(title.lower()) if w not in _PROMO]


def head_tail_word_stats(titles: Sequence[tuple[str, bool]]) -> dict[str, float | int]:
    """Vocabulary overlap of head and tail titles: ``titles`` are (title, is_head)."""
    vh: set[str] = set()
    vt: set[str] = set()
    for title, head in titles:
        (vh if head else vt).update(content_words(title))
    inter = vh & vt
    return {
        "head_vocab": len(vh),
        "tail_vocab": len(vt),
        "shared_vocab": len(inter),
        "jaccard_head_tail": round(len(inter) / max(1, len(vh | vt)), 4),
        "frac_tail_vocab_in_head": round(len(inter) / max(1, len(vt)), 4),
    }


def has_promo(title: str) -> bool:
    low = title.lower()
    return any(p in low for p in PROMO_WORDS)
