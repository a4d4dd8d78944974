"""The online path, composed from the core's pure functions (no web framework here):

decode (caller) → localize the products (or take the client's ROI) → crop each with a margin →
SICoT visual path on every crop in one batched call (embedding, SKU logits, category logits) →
nearest catalog images (FAISS, one batched search) → per object: category fusion (model +
search vote) → category-constrained SKU top-k → index check (merge with the neighbours' SKUs)
→ the context view: the objects whose best candidate scores below ``context_below`` are
recognized once more, in a second batched call, from their box grown by ``context_margin``,
and the surer of the two views answers (a box on a part of a large product sees the whole) →
SKU metadata of every object from Redis in one round trip → each candidate's nearest catalog
image.

A label ``filter`` removes SKUs before any top-k: the classifier's candidates (never returned,
though they keep their share of the softmax) and the index neighbours alike, searched deeper
when the filter is selective (:meth:`Recognizer.search_depth`).

Scores: a candidate's score is ``(1 - w)·p_classifier + w·q_index`` (``q`` for a SKU the
classifier does not know), not renormalised over the returned list, so ``min_score`` means the
same whatever ``top_k`` is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from service.artifact import Artifact
from service.fusion import (
    MergedCandidate,
    allowed_categories,
    constrained_topk,
    fuse,
    merge_with_neighbours,
    search_vote,
    softmax,
)
from service.localize import locate_products
from service.preprocess import crop_rect, preprocess
from service.recognition import (
    FilterStats,
    IndexSnapshot,
    Located,
    ObjectRecognition,
    OnlineConfig,
    Recognition,
    RecognizeOptions,
    ScoredCandidate,
    SkuLookup,
    UnknownCategory,
)
from service.sku_table import FilterMask, SkuTable

RunFn = Callable[[np.ndarray], dict[str, np.ndarray]]


class _Clock:
    def __init__(self) -> None:
        self.t0 = self.last = time.perf_counter()
        self.ms: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self.last) * 1000.0
        self.last = now


@dataclass
class _Ranked:
    merged: list[MergedCandidate]
    p_model: np.ndarray
    p_vote: np.ndarray
    p_fused: np.ndarray
    allowed: np.ndarray
    shortlist: list[str]


class Recognizer:
    """Holds the models; :meth:`recognize` is thread-safe (ONNX Runtime sessions are)."""

    def __init__(
        self,
        sicot: Artifact,
        localizer: Artifact | None = None,
        config: OnlineConfig | None = None,
        *,
        run_sicot: RunFn | None = None,
    ) -> None:
        if sicot.config.labels is None:
            raise ValueError(f"{sicot.path}: a SICoT artifact needs labels")
        self.sicot = sicot
        self.localizer = localizer
        self.config = config or OnlineConfig()
        self._run_sicot = run_sicot or sicot.model.run
        labels = sicot.config.labels
        self.sku_ids = labels.sku_ids
        self.known_skus = frozenset(labels.sku_ids)
        self.categories = labels.categories
        self.sku_category = np.asarray(labels.sku_category, dtype=np.int64)
        self._cat_index = {c: i for i, c in enumerate(self.categories)}
        self._cat_lookup = {c.casefold(): c for c in self.categories}
        self._class_pos: tuple[SkuTable, np.ndarray] | None = None

    # -- stages -------------------------------------------------------------------------
    def locate_all(self, img: Image.Image, max_objects: int = 1) -> list[Located]:
        """Up to ``max_objects`` product boxes in pixels (the localizer's detections after NMS
        and the score threshold), with where they came from and their score, ordered by the
        main-box rule: the main product first.  No localizer or no detection: the photo."""
        w, h = img.size
        found = (locate_products(self.localizer, img, self.config.localizer, max_objects)
                 if self.localizer is not None else [])
        if not found:
            return [((0.0, 0.0, float(w), float(h)), "full_image", None)]
        return [(box, "localizer", score) for box, score in found]

    @property
    def crop_margin(self) -> float:
        """The margin of a crop around a localizer box: the artifact's, unless overridden."""
        margin = self.config.margin
        return self.sicot.preprocess.crop_margin if margin is None else margin

    @property
    def view_margins(self) -> tuple[float, ...]:
        """The margins a localizer box is cropped with: the crop margin first, then the
        configured test-time extras (duplicates dropped)."""
        return tuple(dict.fromkeys((self.crop_margin, *self.config.extra_margins)))

    def crop_rects(self, box: tuple[float, float, float, float], source: str,
                   size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """The crops an object is recognized from: a localizer box at every view margin (the
        first is the object's reported crop), a client ROI or the whole photo as it is."""
        margins = self.view_margins if source == "localizer" else (0.0,)
        return [crop_rect(box, m, size) for m in margins]

    def locate(self, img: Image.Image) -> Located:
        """The main product's box in pixels, where it came from, and its score."""
        return self.locate_all(img, 1)[0]

    def resolve_category(self, hint: str, snap: IndexSnapshot) -> str:
        name = self._cat_lookup.get(hint.casefold())
        if name is not None:
            return name
        for c in np.unique(snap.row_categories):
            if str(c).casefold() == hint.casefold():
                return str(c)
        raise UnknownCategory(f"unknown category {hint!r}")

    def search_depth(self, snap: IndexSnapshot, mask: FilterMask | None) -> int:
        """Neighbours to search: ``search_k``, deeper when a filter removes rows."""
        k = self.config.search_k
        if mask is None:
            return k
        share = mask.row_share
        if share <= 0.0:
            return 0
        return int(min(len(snap.row_sku_ids), max(k, self.config.filter_max_search_k),
                       math.ceil(k / share)))

    def eligible_classes(self, snap: IndexSnapshot, mask: FilterMask) -> np.ndarray:
        """(S,) bool: the model's SKUs the filter lets through (a SKU the served version
        does not hold has no labels, so no filter passes it)."""
        table = snap.skus
        assert table is not None
        cached = self._class_pos
        if cached is None or cached[0] is not table:
            cached = self._class_pos = (table, table.positions(self.sku_ids))
        return np.append(mask.skus, False)[cached[1]]

    # -- the whole path -----------------------------------------------------------------
    def recognize(
        self,
        img: Image.Image,
        snap: IndexSnapshot,
        store: SkuLookup,
        options: RecognizeOptions | None = None,
    ) -> Recognition:
        opts = options or RecognizeOptions()
        cfg = self.config
        clock = _Clock()
        w, h = img.size
        hint = self.resolve_category(opts.category, snap) if opts.category else None
        mask = None
        if opts.filter is not None:
            if snap.skus is None:
                raise ValueError("the served index version holds no labels to filter on")
            mask = snap.skus.mask(opts.filter)

        if opts.roi is not None:
            located: list[Located] = [(clip_roi(opts.roi, (w, h)), "roi", None)]
        else:
            located = self.locate_all(img, opts.max_objects)
        views = [self.crop_rects(box, src, (w, h)) for box, src, _ in located]
        crops = [(float(x0), float(y0), float(x1), float(y1))
                 for x0, y0, x1, y1 in (rects[0] for rects in views)]
        clock.lap("localize")

        eligible = self.eligible_classes(snap, mask) if mask is not None else None
        emb, ranked, depth = self._score_views(img, views, snap, mask, hint, eligible,
                                               opts.top_k, clock)
        if cfg.context_margin is not None:  # a second look, wider, at objects it is unsure of
            sure = [best_score(r.merged, cfg, self.known_skus) for r in ranked]
            unsure = [i for i, (_, src, _) in enumerate(located)
                      if src == "localizer" and sure[i] < cfg.context_below]
            if unsure:
                wide = [[crop_rect(located[i][0], cfg.context_margin, (w, h))] for i in unsure]
                emb2, ranked2, _ = self._score_views(img, wide, snap, mask, hint, eligible,
                                                     opts.top_k, None)
                for j, i in enumerate(unsure):
                    if best_score(ranked2[j].merged, cfg, self.known_skus) > sure[i]:
                        emb[i], ranked[i] = emb2[j], ranked2[j]
                        x0, y0, x1, y1 = wide[j][0]
                        crops[i] = (float(x0), float(y0), float(x1), float(y1))
                clock.lap("context")  # the stage exists only for requests that took it

        wanted = list(dict.fromkeys(m.sku_id for r in ranked for m in r.merged))
        metas = dict(zip(wanted, store.get_skus(snap.version, wanted, published=True),
                         strict=True))
        objects = [
            self._object(r, metas, emb[i], snap, located[i], crops[i], opts)
            for i, r in enumerate(ranked)
        ]
        clock.lap("metadata")
        clock.ms["total"] = (time.perf_counter() - clock.t0) * 1000.0
        stats = FilterStats(mask.skus_passing, depth) if mask is not None else None
        return Recognition(objects=objects, category_names=list(self.categories),
                           image_size=(w, h), timings_ms=clock.ms, filter=stats)

    def _score_views(self, img: Image.Image, views: list[list[tuple[int, int, int, int]]],
                     snap: IndexSnapshot, mask: FilterMask | None, hint: str | None,
                     eligible: np.ndarray | None, top_k: int, clock: _Clock | None
                     ) -> tuple[np.ndarray, list[_Ranked], int]:
        """Objects given as their crops → (embeddings, ranked candidates, search depth): the
        model on every crop in one batched call (outputs pooled per object), one batched
        index search, then fusion, the constrained top-k and the index check per object
        (stages timed on ``clock`` when given)."""
        lap = clock.lap if clock is not None else (lambda stage: None)
        cfg = self.config
        owner = np.repeat(np.arange(len(views)), [len(rects) for rects in views])
        batch = np.stack([preprocess(img.crop(r), self.sicot.preprocess)
                          for rects in views for r in rects])
        out = pool_views(self._run_sicot(batch), owner, len(views))  # one model call
        emb = out["embedding"].astype(np.float32)
        lap("recognize")

        depth = self.search_depth(snap, mask)
        if depth > 0:
            all_sims, all_rows = snap.index.search(emb, depth)
        else:
            all_sims = np.zeros((len(views), 0), np.float32)
            all_rows = np.zeros((len(views), 0), np.int64)
        lap("search")

        ranked = []
        for i in range(len(views)):
            sims, rows = all_sims[i], all_rows[i]
            keep = rows >= 0
            if mask is not None:
                keep &= mask.rows[np.where(keep, rows, 0)]
            sims, rows = sims[keep][: cfg.search_k], rows[keep][: cfg.search_k]
            ranked.append(self._rank(out["sku_logits"][i], out["category_logits"][i], sims,
                                     rows, snap, hint, eligible, top_k))
        lap("fuse")
        return emb, ranked, depth

    def _rank(self, sku_logits: np.ndarray, cat_logits: np.ndarray, sims: np.ndarray,
              rows: np.ndarray, snap: IndexSnapshot, hint: str | None,
              eligible: np.ndarray | None, top_k: int) -> _Ranked:
        """Category fusion, constrained top-k and the index check of one object."""
        cfg = self.config
        n_skus, n_cats = snap.row_sku_ids[rows], snap.row_categories[rows]
        if hint is not None:  # the client knows the category: only its neighbours count
            keep = n_cats == hint
            sims, n_skus, n_cats = sims[keep], n_skus[keep], n_cats[keep]
        cat_ids = np.asarray([self._cat_index.get(str(c), -1) for c in n_cats], dtype=np.int64)
        p_model = softmax(cat_logits.astype(np.float64))
        p_vote = search_vote(cat_ids, sims, len(self.categories), temperature=cfg.vote_temperature)
        p_fused = fuse(p_model, p_vote, cfg.fusion_weight)
        if hint is not None:
            allowed = np.asarray([c == hint for c in self.categories], dtype=bool)
        else:
            allowed = allowed_categories(
                p_fused, top_n=cfg.category_top_n, cum_prob=cfg.category_cum_prob
            )
        idx, probs = constrained_topk(
            sku_logits, self.sku_category, allowed, k=max(top_k * 2, 10), eligible=eligible
        )
        if hint is not None and not allowed.any():  # hint only known to the index
            idx, probs = idx[:0], probs[:0]
        merged = merge_with_neighbours(
            [self.sku_ids[i] for i in idx], probs, list(n_skus), sims,
            k=top_k + 5, weight=cfg.index_weight, temperature=cfg.index_temperature,
            known_sku_ids=self.known_skus,
        )
        return _Ranked(merged, p_model, p_vote, p_fused, allowed,
                       [self.sku_ids[i] for i in top_n(sku_logits, cfg.shortlist_size(len(self.sku_ids)))])

    def _object(self, r: _Ranked, metas: dict[str, dict[str, Any] | None], emb: np.ndarray,
                snap: IndexSnapshot, located: Located, crop: tuple[float, float, float, float],
                opts: RecognizeOptions) -> ObjectRecognition:
        cfg = self.config
        candidates: list[ScoredCandidate] = []
        for m in r.merged:
            meta = metas[m.sku_id]
            if meta is None:  # the SKU left the catalog after the model was trained
                continue
            score = candidate_score(m, cfg, self.known_skus)
            candidates.append(ScoredCandidate(m.sku_id, score, m.source, meta))
        candidates.sort(key=lambda c: -c.score)
        candidates = candidates[: opts.top_k]
        if snap.skus is not None and snap.embeddings is not None:
            for c in candidates:
                c.match = snap.skus.nearest_image(c.sku_id, emb, snap.embeddings)
        best = candidates[0] if candidates and candidates[0].score >= opts.min_score else None
        box, src, box_score = located
        return ObjectRecognition(
            candidates=candidates, best=best, category_model=r.p_model,
            category_vote=r.p_vote, category_fused=r.p_fused,
            constrained_to=[c for c, a in zip(self.categories, r.allowed, strict=True) if a],
            box=crop if src == "localizer" else box, box_source=src, box_score=box_score,
            detection=box if src == "localizer" else None, shortlist=r.shortlist,
        )


def candidate_score(m: MergedCandidate, cfg: OnlineConfig, known_skus: frozenset[str]) -> float:
    """A candidate's score: ``(1 - w)·p_classifier + w·q_index``, or ``q_index`` alone for a
    SKU the classifier does not know (added to the catalog after training)."""
    raw = m.index_vote if m.sku_id not in known_skus else (
        (1 - cfg.index_weight) * m.classifier_prob + cfg.index_weight * m.index_vote)
    return float(np.clip(raw, 0, 1))


def best_score(merged: list[MergedCandidate], cfg: OnlineConfig,
               known_skus: frozenset[str]) -> float:
    """The score of an object's best candidate (0 when it has none): how sure the online
    path is of it, what the context view is gated and chosen on."""
    return max((candidate_score(m, cfg, known_skus) for m in merged), default=0.0)


def pool_views(out: dict[str, np.ndarray], owner: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """The model's outputs over several crops of an object → one row per object: logits and
    embeddings averaged over the object's crops (``owner[i]`` = object of row ``i``), the
    embedding L2-normalised again so the index sees a unit vector as with one crop."""
    if len(owner) == n:
        return out
    counts = np.bincount(owner, minlength=n).astype(np.float32)
    pooled = {}
    for name, value in out.items():
        acc = np.zeros((n, *value.shape[1:]), np.float32)
        np.add.at(acc, owner, value.astype(np.float32))
        pooled[name] = acc / counts.reshape((n,) + (1,) * (value.ndim - 1))
    emb = pooled["embedding"]
    pooled["embedding"] = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return pooled


def top_n(scores: np.ndarray, n: int) -> list[int]:
    """Indices of the ``n`` largest ``scores``, largest first."""
    x = np.asarray(scores).reshape(-1)
    n = min(n, x.size)
    if n <= 0:
        return []
    part = np.argpartition(-x, n - 1)[:n]
    return [int(i) for i in part[np.argsort(-x[part], kind="stable")]]


def clip_roi(
    roi: tuple[float, float, float, float], size: tuple[int, int]
) -> tuple[float, float, float, float]:
    w, h = size
    x0, y0, x1, y1 = roi
    out = (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))
    if out[2] - out[0] < 1 or out[3] - out[1] < 1:
        raise ValueError(f"roi {list(roi)} does not overlap the {w}x{h} image")
    return out
