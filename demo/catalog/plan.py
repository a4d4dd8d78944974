"""Everything but pixels: long-tail counts, training titles, query order and distractors.

Deterministic from the seed; nothing here depends on ``jobs``.  Counts follow a Zipf-Mandelbrot
law over a seeded popularity rank, ``count = clip(Poisson(max * (q / (x + q)) ** a), min, max)``
with ``x = (rank - 0.5) / n_skus``, so the *shape* of the long tail is the same at any catalog
size (the emoji-catalog benchmark uses the same law).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from .spec import S_COUNT, S_OTHER, S_QORDER, S_RANK, S_TITLE, SkuSpec, rng_for
from .titles import noisy_title


@dataclass(frozen=True, slots=True)
class TailLaw:
    max_per_sku: int = 100
    min_per_sku: int = 1
    a: float = 1.6
    q: float = 0.08

    def __post_init__(self) -> None:
        if not 1 <= self.min_per_sku <= self.max_per_sku:
            raise ValueError(
                f"need 1 <= min_per_sku <= max_per_sku, got {self.min_per_sku}, {self.max_per_sku}"
            )
        if self.a <= 0 or self.q <= 0:
            raise ValueError(f"zipf a and q must be > 0, got {self.a}, {self.q}")


@dataclass(frozen=True, slots=True)
class TrainItem:
    sku: int
    k: int
    title: str
    other_words: bool


@dataclass(frozen=True, slots=True)
class QueryItem:
    sku: int
    k: int
    pos: int  # file number: queries/q{pos:05d}.jpg
    distractors: tuple[int, ...]


@dataclass(slots=True)
class Plan:
    specs: list[SkuSpec]
    rank: np.ndarray
    counts: np.ndarray
    train: list[TrainItem] = field(default_factory=list)
    queries: list[QueryItem] = field(default_factory=list)


def popularity_rank(n: int, seed: int) -> np.ndarray:
    """1 = most popular; every SKU draws its own score, so a smaller catalog keeps the order."""
    scores = np.array([rng_for(seed, S_RANK, i).random() for i in range(n)])
    rank = np.empty(n, np.int64)
    rank[np.argsort(-scores, kind="stable")] = np.arange(1, n + 1)
    return rank


def train_counts(rank: np.ndarray, seed: int, law: TailLaw) -> np.ndarray:
    n = rank.shape[0]
    x = (rank - 0.5) / n
    lam = law.max_per_sku * (law.q / (x + law.q)) ** law.a
    counts = [rng_for(seed, S_COUNT, i).poisson(lam[i]) for i in range(n)]
    return np.clip(np.asarray(counts, np.int64), law.min_per_sku, law.max_per_sku)


def _distractors(
    rng: np.random.Generator, i: int, specs: list[SkuSpec], siblings: list[int]
) -> tuple[int, ...]:
    """0-3 other SKUs; half of them from the same brand, as on a real shelf."""
    n = len(specs)
    out: list[int] = []
    for _ in range(int(rng.integers(0, 4))):
        sib = [j for j in siblings if j != i]
        if sib and rng.random() < 0.5:
            out.append(sib[int(rng.integers(len(sib)))])
        elif n > 1:
            j = int(rng.integers(n - 1))
            out.append(j + 1 if j >= i else j)
    return tuple(out)


def make_plan(specs: list[SkuSpec], seed: int, law: TailLaw, queries_per_sku: int) -> Plan:
    n = len(specs)
    rank = popularity_rank(n, seed)
    counts = train_counts(rank, seed, law)
    plan = Plan(specs, rank, counts)
    by_cat: dict[str, list[SkuSpec]] = defaultdict(list)
    by_brand: dict[int, list[int]] = defaultdict(list)
    for s in specs:
        by_cat[s.category].append(s)
        by_brand[s.brand_index].append(s.index)
    for s in specs:
        for k in range(int(counts[s.index])):
            title, other = noisy_title(rng_for(seed, S_TITLE, s.index, k), s, by_cat[s.category])
            plan.train.append(TrainItem(s.index, k, title, other))
    order = rng_for(seed, S_QORDER).permutation(n * queries_per_sku)
    for pos, j in enumerate(order.tolist()):
        i, k = divmod(j, queries_per_sku)
        d = _distractors(rng_for(seed, S_OTHER, i, k), i, specs, by_brand[specs[i].brand_index])
        plan.queries.append(QueryItem(i, k, pos, d))
    return plan
