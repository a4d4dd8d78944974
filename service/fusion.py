"""Category fusion and constrained recognition (the Pailitao online path), pure numpy.

Public API::

    softmax(logits, axis=-1)
    search_vote(neighbour_categories (k,) int, similarities (k,), num_categories,
                *, temperature=0.1, k=None) -> (C,) distribution
    fuse(model_probs (C,), vote_probs (C,), weight) -> (C,)   weight = share of the vote
    allowed_categories(probs (C,), *, top_n=None, cum_prob=None) -> (C,) bool
    constrained_topk(sku_logits (S,), sku_category (S,) int, allowed (C,) bool, k,
                     eligible=None (S,) bool) -> (indices (k',) int64, probs (k',) float64)
    merge_with_neighbours(classifier_sku_ids, classifier_probs, neighbour_sku_ids,
                          neighbour_sims, *, k=5, weight=0.5, temperature=0.1,
                          known_sku_ids=None) -> list[MergedCandidate]

Conventions: a category or SKU index of ``-1`` (FAISS pads missing neighbours with -1) and an
empty or ``None`` SKU id are ignored wherever neighbours are read. Every ranking is stable:
equal scores keep their input order, so results are deterministic.

* **Search vote**: neighbour ``i`` votes for its category with weight
  ``exp((sim_i - max sim) / temperature)`` (``temperature=None``: weight ``max(sim_i, 0)``);
  the votes are normalised to a distribution. No usable neighbour → the uniform distribution
  (no evidence), so fusing it leaves the model's ranking unchanged.
* **Fusion**: ``(1 - weight) · model + weight · vote``, renormalised; the weight is tuned on a
  validation split and stored in config.
* **Constrained top-k**: SKU logits outside the allowed categories are set to -inf before the
  softmax and the top-k; probabilities are renormalised over the allowed SKUs. A SKU whose
  category index is outside ``[0, C)`` (unknown) is never suppressed; if no SKU is allowed
  the constraint is dropped (the classifier's plain top-k) rather than answering nothing.
* **Index check** (:func:`merge_with_neighbours`): the nearest catalog images vote for their SKU
  (same weights as the search vote) giving ``q(s)``; a SKU the classifier knows scores
  ``(1 - weight) · p(s) + weight · q(s)``; a SKU it does not know (``known_sku_ids`` given and
  the SKU not in it: added to the catalog after training) scores ``q(s)``, the index being
  its only evidence. Scores are renormalised over the candidates returned.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

# where a candidate SKU came from: the classifier's top-k, the index's neighbours, or both
CandidateSource = Literal["classifier", "index", "both"]

# share of the search vote in the category fusion, chosen on the emoji-catalog validation half
# (docs/results/online-path.md); an artifact's ``evaluation.fusion_weight`` overrides it
FUSION_WEIGHT = 0.7


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax; ``-inf`` entries get probability 0."""
    x = np.asarray(logits, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def _neighbour_weights(sims: np.ndarray, temperature: float | None) -> np.ndarray:
    if sims.size == 0:
        return sims
    if temperature is None:
        return np.clip(sims, 0.0, None)
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (or None for linear weights)")
    return np.exp((sims - sims.max()) / temperature)


def search_vote(
    neighbour_categories: np.ndarray | Sequence[int],
    similarities: np.ndarray | Sequence[float],
    num_categories: int,
    *,
    temperature: float | None = 0.1,
    k: int | None = None,
) -> np.ndarray:
    """``(C,)`` category distribution voted by the nearest catalog images (first ``k`` used;
    neighbours are expected nearest first, as FAISS returns them)."""
    if num_categories < 1:
        raise ValueError("num_categories must be >= 1")
    cats = np.asarray(neighbour_categories, dtype=np.int64).reshape(-1)
    sims = np.asarray(similarities, dtype=np.float64).reshape(-1)
    if cats.shape != sims.shape:
        raise ValueError(f"{cats.size} neighbour categories but {sims.size} similarities")
    if k is not None:
        cats, sims = cats[:k], sims[:k]
    ok = (cats >= 0) & (cats < num_categories) & np.isfinite(sims)
    cats, sims = cats[ok], sims[ok]
    votes = np.zeros(num_categories, dtype=np.float64)
    np.add.at(votes, cats, _neighbour_weights(sims, temperature))
    total = votes.sum()
    if total <= 0:
        return np.full(num_categories, 1.0 / num_categories)
    return votes / total


def fuse(model_probs: np.ndarray, vote_probs: np.ndarray, weight: float) -> np.ndarray:
    """Weighted average ``(1 - weight) · model + weight · vote`` over the last axis."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    p = np.asarray(model_probs, dtype=np.float64)
    q = np.asarray(vote_probs, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"model {p.shape} and vote {q.shape} distributions differ in shape")
    out = (1.0 - weight) * p + weight * q
    total = out.sum(axis=-1, keepdims=True)
    return out / np.where(total > 0, total, 1.0)


def allowed_categories(
    probs: np.ndarray, *, top_n: int | None = None, cum_prob: float | None = None
) -> np.ndarray:
    """Mask of the categories to search in. ``top_n``: the ``top_n`` most probable (ties with
    the last one kept are kept too); ``cum_prob``: the fewest most-probable categories whose
    probabilities add up to ``cum_prob``. Both: categories passing both rules. The most
    probable category is always allowed; neither: all categories."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.size == 0:
        return np.zeros(0, dtype=bool)
    allowed = np.ones(p.size, dtype=bool)
    order = np.argsort(-p, kind="stable")
    if top_n is not None:
        if top_n < 1:
            raise ValueError("top_n must be >= 1")
        cutoff = p[order[min(top_n, p.size) - 1]]
        allowed &= p >= cutoff
    if cum_prob is not None:
        if not 0.0 < cum_prob <= 1.0:
            raise ValueError("cum_prob must be in (0, 1]")
        cum = np.cumsum(p[order])
        n = int(np.searchsorted(cum, cum_prob * cum[-1] - 1e-12)) + 1
        by_cum = np.zeros(p.size, dtype=bool)
        by_cum[order[:n]] = True
        allowed &= by_cum
    allowed[order[0]] = True
    return allowed


def constrained_topk(
    sku_logits: np.ndarray,
    sku_category: np.ndarray | Sequence[int],
    allowed: np.ndarray,
    k: int,
    eligible: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` SKUs among the allowed categories → (indices, probabilities).

    ``eligible`` (S,) bool (a label filter): SKUs outside it are never returned but keep
    their share of the softmax, so a filter that lets one SKU through does not make it look
    certain; fewer than ``k`` come back when fewer are eligible."""
    if k < 1:
        raise ValueError("k must be >= 1")
    logits = np.asarray(sku_logits, dtype=np.float64).reshape(-1)
    cats = np.asarray(sku_category, dtype=np.int64).reshape(-1)
    mask = np.asarray(allowed, dtype=bool).reshape(-1)
    if logits.shape != cats.shape:
        raise ValueError(f"{logits.size} SKU logits but {cats.size} SKU categories")
    if logits.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    known = (cats >= 0) & (cats < mask.size)
    keep = ~known | mask[np.where(known, cats, 0)]
    if not keep.any():
        keep = np.ones_like(keep)
    masked = np.where(keep, logits, -np.inf)
    probs = softmax(masked)
    if eligible is not None:
        ok = np.asarray(eligible, dtype=bool).reshape(-1)
        if ok.shape != keep.shape:
            raise ValueError(f"{logits.size} SKU logits but {ok.size} eligibility flags")
        keep &= ok
        masked = np.where(keep, masked, -np.inf)
    n = min(k, int(keep.sum()))
    order = np.argsort(-masked, kind="stable")[:n]
    return order.astype(np.int64), probs[order]


@dataclass(frozen=True)
class MergedCandidate:
    sku_id: str
    score: float  # merged, renormalised over the returned candidates
    classifier_prob: float  # 0 when the classifier did not propose it
    index_vote: float  # share of the neighbour vote (0 when no neighbour is this SKU)
    source: CandidateSource


def _sku_vote(
    neighbour_sku_ids: Sequence[str | None], sims: np.ndarray, temperature: float | None
) -> dict[str, float]:
    pairs = [
        (s, float(v)) for s, v in zip(neighbour_sku_ids, sims, strict=True)
        if s and np.isfinite(v)
    ]
    if not pairs:
        return {}
    weights = _neighbour_weights(np.asarray([v for _, v in pairs]), temperature)
    vote: dict[str, float] = {}
    for (sku, _), wgt in zip(pairs, weights, strict=True):
        vote[sku] = vote.get(sku, 0.0) + float(wgt)
    total = sum(vote.values())
    return {s: v / total for s, v in vote.items()} if total > 0 else {}


def merge_with_neighbours(
    classifier_sku_ids: Sequence[str],
    classifier_probs: np.ndarray | Sequence[float],
    neighbour_sku_ids: Sequence[str | None],
    neighbour_sims: np.ndarray | Sequence[float],
    *,
    k: int = 5,
    weight: float = 0.5,
    temperature: float | None = 0.1,
    known_sku_ids: Container[str] | None = None,
) -> list[MergedCandidate]:
    """The classifier's candidates checked against the nearest catalog images (see the module
    docstring); best first, at most ``k``."""
    if k < 1:
        raise ValueError("k must be >= 1")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    probs = np.asarray(classifier_probs, dtype=np.float64).reshape(-1)
    if len(classifier_sku_ids) != probs.size:
        raise ValueError("classifier_sku_ids and classifier_probs differ in length")
    sims = np.asarray(neighbour_sims, dtype=np.float64).reshape(-1)
    if len(neighbour_sku_ids) != sims.size:
        raise ValueError("neighbour_sku_ids and neighbour_sims differ in length")
    p: dict[str, float] = {}
    for sku, pr in zip(classifier_sku_ids, probs, strict=True):
        if sku and sku not in p:
            p[sku] = float(pr)
    q = _sku_vote(neighbour_sku_ids, sims, temperature)
    ids = list(p) + [s for s in q if s not in p]  # classifier order, then neighbour order
    if not ids:
        return []
    scores = []
    for sku in ids:
        unknown = known_sku_ids is not None and sku not in known_sku_ids
        if unknown:
            scores.append(q.get(sku, 0.0))
        else:
            scores.append((1.0 - weight) * p.get(sku, 0.0) + weight * q.get(sku, 0.0))
    arr = np.asarray(scores)
    order = np.argsort(-arr, kind="stable")[:k]
    total = arr[order].sum()
    out = []
    for i in order:
        sku = ids[int(i)]
        source: CandidateSource = (
            "both" if sku in p and sku in q else ("classifier" if sku in p else "index"))
        score = float(arr[i] / total) if total > 0 else 1.0 / len(order)
        out.append(MergedCandidate(sku, score, p.get(sku, 0.0), q.get(sku, 0.0), source))
    return out
