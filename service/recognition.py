"""The values of the online path: what a request asks (:class:`RecognizeOptions`), the index
version it is answered from (:class:`IndexSnapshot`), the path's knobs (:class:`OnlineConfig`)
and what comes back (:class:`Recognition`, one :class:`ObjectRecognition` per object).
:mod:`service.recognizer` computes them; these are plain data."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from service.fusion import FUSION_WEIGHT, CandidateSource
from service.label_filter import Node
from service.localize import LocalizerConfig
from service.sku_table import MatchedRow, SkuTable


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
    skus: SkuTable | None = None  # labels and catalog images per SKU (filters, matched image)
    embeddings: np.ndarray | None = None  # (rows, d) the indexed vectors (matched image)


@dataclass(frozen=True)
class RecognizeOptions:
    top_k: int = 5
    category: str | None = None
    roi: tuple[float, float, float, float] | None = None
    min_score: float = 0.0
    max_objects: int = 1  # detections recognised (main first); a roi means one object
    filter: Node | None = None  # parsed label filter (service.label_filter.parse_filter)
    filter_text: str | None = None  # the filter as the client wrote it (echoed back)


@dataclass(frozen=True)
class OnlineConfig:
    """Knobs of the online path (the service's settings fill them)."""

    margin: float | None = None  # crop margin around a localizer box; None: the artifact's
    # test-time crops: each localizer box is also cropped with these margins and the model's
    # outputs are averaged over its crops (embedding re-normalised); () = one crop
    extra_margins: tuple[float, ...] = ()
    # context view: an object whose best candidate scores below ``context_below`` is
    # recognized once more from its box grown by ``context_margin`` (one crop, a second
    # model call for those objects only), and the view whose best candidate scores higher
    # answers: a box on a salient *part* of a large product sees the whole. None (or
    # context_below 0) = off. 0.5 / 0.5 chosen on the dev and harsh selection sets among
    # margins 0.5, 1, 3 x thresholds 0.3, 0.5, 0.7, always (docs/results/accuracy-study.md,
    # section 9: +1.1 points top-1 there, the second call on 21-33 % of the photos)
    context_margin: float | None = 0.5
    context_below: float = 0.5
    search_k: int = 30
    # a selective filter removes neighbours: search ceil(search_k / share of rows passing)
    # deep, at most this many, so about search_k passing neighbours remain
    filter_max_search_k: int = 2000
    fusion_weight: float = FUSION_WEIGHT  # share of the search vote in the category fusion
    vote_temperature: float = 0.1  # category vote: softmax temperature over cosine sims
    index_temperature: float = 0.03  # SKU index check: sharp, a near-duplicate should decide
    category_top_n: int | None = 3
    category_cum_prob: float | None = 0.95
    index_weight: float = 0.5  # share of the neighbours in the final SKU score
    # the classifier's most likely SKUs of each object (unconstrained), kept with a retained
    # query: the feedback gate's model vote (service.feedback_gate).  At most ``shortlist``
    # and at most ``shortlist_share`` of the catalog, so that on a small catalog a random
    # label is still unlikely to be listed; 0 = none
    shortlist: int = 50
    shortlist_share: float = 0.05

    def shortlist_size(self, num_classes: int) -> int:
        return min(self.shortlist, math.ceil(self.shortlist_share * num_classes))
    localizer: LocalizerConfig = field(default_factory=LocalizerConfig)


# where an object's box came from
BoxSource = Literal["localizer", "roi", "full_image"]


@dataclass
class ScoredCandidate:
    """A candidate SKU of one object as the recognizer ranks it (the API's ``Candidate`` is
    its public form)."""

    sku_id: str
    score: float
    source: CandidateSource
    metadata: dict[str, Any]
    match: MatchedRow | None = None  # its catalog image nearest to the crop


@dataclass
class ObjectRecognition:
    """One recognised object of the photo: its box and its own ranked candidates."""

    candidates: list[ScoredCandidate]
    best: ScoredCandidate | None
    category_model: np.ndarray
    category_vote: np.ndarray
    category_fused: np.ndarray
    constrained_to: list[str]
    box: tuple[float, float, float, float]  # the crop recognised (what roi reproduces)
    box_source: BoxSource
    box_score: float | None
    detection: tuple[float, float, float, float] | None = None  # the localizer's box, no margin
    shortlist: list[str] = field(default_factory=list)  # OnlineConfig.shortlist, most likely first


@dataclass(frozen=True)
class FilterStats:
    skus_passing: int  # SKUs of the served version whose labels pass the filter
    search_k: int  # neighbours searched to keep about search_k passing ones


@dataclass
class Recognition:
    """Every object recognised (``objects[0]`` is the main one: the main-box rule's pick, the
    client's roi, or the whole photo); the attributes below are the main object's."""

    objects: list[ObjectRecognition]
    category_names: list[str]
    image_size: tuple[int, int]
    timings_ms: dict[str, float]
    filter: FilterStats | None = None

    @property
    def main(self) -> ObjectRecognition:
        return self.objects[0]

    candidates = property(lambda self: self.main.candidates)
    best = property(lambda self: self.main.best)
    category_model = property(lambda self: self.main.category_model)
    category_vote = property(lambda self: self.main.category_vote)
    category_fused = property(lambda self: self.main.category_fused)
    constrained_to = property(lambda self: self.main.constrained_to)
    box = property(lambda self: self.main.box)
    box_source = property(lambda self: self.main.box_source)
    box_score = property(lambda self: self.main.box_score)


Located = tuple[tuple[float, float, float, float], BoxSource, float | None]
