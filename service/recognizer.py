"""The online path, composed from the core's pure functions (no web framework here):

decode (caller) → localize the main product (or the client's ROI) → crop with a margin →
SICoT visual path (embedding, SKU logits, category logits) → nearest catalog images (FAISS) →
category fusion (model + search vote) → category-constrained SKU top-k → index check (merge
with the neighbours' SKUs) → SKU metadata from Redis in one round trip.

Scores: a candidate's score is ``(1 - w)·p_classifier + w·q_index`` (``q`` for a SKU the
classifier does not know), not renormalised over the returned list, so ``min_score`` means the
same whatever ``top_k`` is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from service.artifact import Artifact
from service.fusion import (
    FUSION_WEIGHT,
    allowed_categories,
    constrained_topk,
    fuse,
    merge_with_neighbours,
    search_vote,
    softmax,
)
from service.localize import (
    PREDICTED_BOX_MARGIN,
    LocalizerConfig,
    expand_box,
    postprocess,
    select_main_box,
)
from service.preprocess import preprocess

RunFn = Callable[[np.ndarray], dict[str, np.ndarray]]


class UnknownCategory(ValueError):
    """The client's category hint names no category of the model or the index."""


class VectorSearch(Protocol):
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class SkuLookup(Protocol):
    def get_skus(
        self, version: str, sku_ids: Sequence[str], *, published: bool = False
    ) -> list[dict[str, Any] | None]: ...


@dataclass
class IndexSnapshot:
    """One published index version as the service holds it: immutable once loaded, swapped
    whole when a new version is published (requests keep the snapshot they started with)."""

    version: str
    built_at: str
    index: VectorSearch
    row_sku_ids: np.ndarray  # (rows,) str: the SKU of each indexed catalog image
    row_categories: np.ndarray  # (rows,) str
    model_version: str = ""


@dataclass(frozen=True)
class RecognizeOptions:
    top_k: int = 5
    category: str | None = None
    roi: tuple[float, float, float, float] | None = None
    min_score: float = 0.0


@dataclass(frozen=True)
class OnlineConfig:
    """Knobs of the online path (the service's settings fill them)."""

    margin: float = PREDICTED_BOX_MARGIN
    search_k: int = 30
    fusion_weight: float = FUSION_WEIGHT  # share of the search vote in the category fusion
    vote_temperature: float = 0.1  # category vote: softmax temperature over cosine sims
    index_temperature: float = 0.03  # SKU index check: sharp, a near-duplicate should decide
    category_top_n: int | None = 3
    category_cum_prob: float | None = 0.95
    index_weight: float = 0.5  # share of the neighbours in the final SKU score
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)


@dataclass
class Candidate:
    sku_id: str
    score: float
    source: str
    metadata: dict[str, Any]


@dataclass
class Recognition:
    candidates: list[Candidate]
    best: Candidate | None
    category_names: list[str]
    category_model: np.ndarray
    category_vote: np.ndarray
    category_fused: np.ndarray
    constrained_to: list[str]
    box: tuple[float, float, float, float]
    box_source: str
    box_score: float | None
    image_size: tuple[int, int]
    timings_ms: dict[str, float]


class _Clock:
    def __init__(self) -> None:
        self.t0 = self.last = time.perf_counter()
        self.ms: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self.last) * 1000.0
        self.last = now


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

    # -- stages -------------------------------------------------------------------------
    def locate(self, img: Image.Image) -> tuple[tuple[float, float, float, float], str, float | None]:
        """The main product's box in pixels, where it came from, and its score."""
        w, h = img.size
        if self.localizer is None:
            return (0.0, 0.0, float(w), float(h)), "full_image", None
        loc = self.localizer
        x = preprocess(img, loc.preprocess)[None]
        cfg = self.config.localizer
        dets = postprocess(
            loc.model.run(x), image_size=(w, h), preprocess=loc.preprocess,
            model_cfg=loc.config.model, score_threshold=cfg.score_threshold,
            nms_iou=cfg.nms_iou, max_detections=cfg.max_detections,
        )
        i = select_main_box(
            dets, (w, h), size_power=cfg.size_power, center_power=cfg.center_power
        )
        if i is None:
            return (0.0, 0.0, float(w), float(h)), "full_image", None
        box = tuple(float(v) for v in dets.boxes[i])
        return box, "localizer", float(dets.scores[i])  # type: ignore[return-value]

    def resolve_category(self, hint: str, snap: IndexSnapshot) -> str:
        name = self._cat_lookup.get(hint.casefold())
        if name is not None:
            return name
        for c in np.unique(snap.row_categories):
            if str(c).casefold() == hint.casefold():
                return str(c)
        raise UnknownCategory(f"unknown category {hint!r}")

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

        if opts.roi is not None:
            box, src, box_score = clip_roi(opts.roi, (w, h)), "roi", None
        else:
            box, src, box_score = self.locate(img)
        clock.lap("localize")

        crop_px = expand_box(box, cfg.margin, (w, h)) if src == "localizer" else box
        crop = img.crop(tuple(int(round(v)) for v in crop_px))  # type: ignore[arg-type]
        out = self._run_sicot(preprocess(crop, self.sicot.preprocess)[None])
        emb = out["embedding"].astype(np.float32)
        sku_logits = out["sku_logits"][0]
        cat_logits = out["category_logits"][0]
        clock.lap("recognize")

        sims, rows = snap.index.search(emb, cfg.search_k)
        sims, rows = sims[0], rows[0]
        ok = rows >= 0
        sims, rows = sims[ok], rows[ok]
        n_skus, n_cats = snap.row_sku_ids[rows], snap.row_categories[rows]
        if hint is not None:  # the client knows the category: only its neighbours count
            keep = n_cats == hint
            sims, n_skus, n_cats = sims[keep], n_skus[keep], n_cats[keep]
        clock.lap("search")

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
            sku_logits, self.sku_category, allowed, k=max(opts.top_k * 2, 10)
        )
        if hint is not None and not allowed.any():  # hint only known to the index
            idx, probs = idx[:0], probs[:0]
        merged = merge_with_neighbours(
            [self.sku_ids[i] for i in idx], probs, list(n_skus), sims,
            k=opts.top_k + 5, weight=cfg.index_weight, temperature=cfg.index_temperature,
            known_sku_ids=self.known_skus,
        )
        clock.lap("fuse")

        metas = store.get_skus(snap.version, [m.sku_id for m in merged], published=True)
        candidates: list[Candidate] = []
        for m, meta in zip(merged, metas, strict=True):
            if meta is None:  # the SKU left the catalog after the model was trained
                continue
            unknown = m.sku_id not in self.known_skus
            raw = m.index_vote if unknown else (
                (1 - cfg.index_weight) * m.classifier_prob + cfg.index_weight * m.index_vote
            )
            candidates.append(Candidate(m.sku_id, float(np.clip(raw, 0, 1)), m.source, meta))
        candidates.sort(key=lambda c: -c.score)
        candidates = candidates[: opts.top_k]
        best = candidates[0] if candidates and candidates[0].score >= opts.min_score else None
        clock.lap("metadata")
        clock.ms["total"] = (time.perf_counter() - clock.t0) * 1000.0
        return Recognition(
            candidates=candidates, best=best, category_names=list(self.categories),
            category_model=p_model, category_vote=p_vote, category_fused=p_fused,
            constrained_to=[c for c, a in zip(self.categories, allowed, strict=True) if a],
            box=box if src != "localizer" else crop_px, box_source=src, box_score=box_score,
            image_size=(w, h), timings_ms=clock.ms,
        )


def clip_roi(
    roi: tuple[float, float, float, float], size: tuple[int, int]
) -> tuple[float, float, float, float]:
    w, h = size
    x0, y0, x1, y1 = roi
    out = (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1))
    if out[2] - out[0] < 1 or out[3] - out[1] < 1:
        raise ValueError(f"roi {list(roi)} does not overlap the {w}x{h} image")
    return out
