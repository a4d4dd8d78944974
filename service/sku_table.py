"""The SKUs of one index version as the online path needs them: which rows are whose, their
labels (for ``filter``), and the catalog image nearest to a query (for "looks like this").

Built once per loaded version from its row map; read-only afterwards, so requests share it.
A filter is evaluated once per *distinct label set*, not per SKU or row (catalogs repeat label
sets: a brand's SKUs in one size share one), then spread to SKUs and rows with numpy indexing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.label_filter import Node


@dataclass(frozen=True)
class FilterMask:
    """What a filter lets through in one version."""

    rows: np.ndarray  # (rows,) bool: index rows whose SKU passes
    skus: np.ndarray  # (skus,) bool, in :attr:`SkuTable.sku_ids` order

    @property
    def skus_passing(self) -> int:
        return int(self.skus.sum())

    @property
    def row_share(self) -> float:
        return float(self.rows.mean()) if self.rows.size else 0.0


@dataclass(frozen=True)
class MatchedRow:
    """The catalog image of a SKU nearest to a query embedding."""

    row: int
    image: str
    similarity: float


class SkuTable:
    def __init__(self, row_sku_ids: Sequence[str], row_labels: Sequence[Sequence[str]],
                 row_images: Sequence[str], row_catalog: Sequence[bool] | None = None) -> None:
        n = len(row_sku_ids)
        if not len(row_labels) == len(row_images) == n:
            raise ValueError(f"{n} row SKU ids, {len(row_labels)} label lists, "
                             f"{len(row_images)} images")
        catalog = np.ones(n, bool) if row_catalog is None else np.asarray(row_catalog, bool)
        skus, row_sku = np.unique(np.asarray(row_sku_ids, dtype=str), return_inverse=True)
        self.sku_ids: np.ndarray = skus
        self._pos = {str(s): i for i, s in enumerate(skus)}
        self.row_sku = row_sku.astype(np.int64)
        self.row_images = list(row_images)
        # a SKU's labels: those of its first catalog row (every row of a SKU carries the same
        # tags, the index builder rejects conflicting rows; feedback rows copy them)
        first = np.full(len(skus), -1, np.int64)
        for r in np.flatnonzero(catalog)[::-1]:
            first[row_sku[r]] = r
        sets: dict[frozenset[str], int] = {}
        self.sku_set = np.asarray(
            [sets.setdefault(frozenset(row_labels[int(r)]) if r >= 0 else frozenset(), len(sets))
             for r in first], dtype=np.int64)
        self.label_sets = list(sets)
        # catalog rows of each SKU, ascending: rows of SKU j are _rows[_start[j]:_start[j + 1]]
        cat_rows = np.flatnonzero(catalog)
        order = cat_rows[np.argsort(row_sku[cat_rows], kind="stable")]
        self._rows = order
        self._start = np.searchsorted(row_sku[order], np.arange(len(skus) + 1))

    def __len__(self) -> int:
        return len(self.sku_ids)

    def position(self, sku_id: str) -> int:
        """The SKU's position in :attr:`sku_ids`, -1 when the version does not hold it."""
        return self._pos.get(sku_id, -1)

    def positions(self, sku_ids: Sequence[str]) -> np.ndarray:
        return np.asarray([self._pos.get(s, -1) for s in sku_ids], dtype=np.int64)

    def labels(self, sku_id: str) -> frozenset[str]:
        i = self.position(sku_id)
        return self.label_sets[self.sku_set[i]] if i >= 0 else frozenset()

    def mask(self, node: Node) -> FilterMask:
        ok_set = np.fromiter((node.matches(s) for s in self.label_sets), bool,
                             len(self.label_sets))
        skus = ok_set[self.sku_set] if len(self.sku_set) else np.zeros(0, bool)
        return FilterMask(rows=skus[self.row_sku], skus=skus)

    def nearest_image(self, sku_id: str, query: np.ndarray, embeddings: np.ndarray
                      ) -> MatchedRow | None:
        """The SKU's catalog row most similar to ``query`` (inner product, as the index
        scores), or None when the version has no catalog image of it."""
        i = self.position(sku_id)
        if i < 0:
            return None
        rows = self._rows[self._start[i]:self._start[i + 1]]
        if rows.size == 0:
            return None
        sims = np.asarray(embeddings[rows], dtype=np.float32) @ query.reshape(-1)
        best = int(np.argmax(sims))  # first maximum: the lowest row on ties
        row = int(rows[best])
        return MatchedRow(row, self.row_images[row], float(sims[best]))
