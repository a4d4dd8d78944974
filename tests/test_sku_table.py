"""The per-version SKU table: label filters over SKUs and rows, and the nearest catalog image."""

from __future__ import annotations

import numpy as np
import pytest

from service.label_filter import labels_of, parse_filter
from service.sku_table import SkuTable

ROWS = [  # sku, tags, image, catalog row?
    ("A", ["brand=Flora", "size=400ml"], "a0.jpg", True),
    ("B", ["brand=Flora", "size=250ml", "vegan"], "b0.jpg", True),
    ("A", ["brand=Flora", "size=400ml"], "a1.jpg", True),
    ("C", ["brand=Stork", "size=400ml"], "c0.jpg", True),
    ("A", ["brand=Flora", "size=400ml"], "feedback://r1", False),
]


def _table() -> SkuTable:
    return SkuTable([r[0] for r in ROWS], [sorted(labels_of(r[1])) for r in ROWS],
                    [r[2] for r in ROWS], [r[3] for r in ROWS])


@pytest.mark.parametrize(("expr", "skus"), [
    ("brand=Flora", {"A", "B"}),
    ("size=400ml AND brand=Stork", {"C"}),
    ("tag=vegan OR (brand=Stork AND size=400ml)", {"B", "C"}),
    ("brand=Nope", set()),
])
def test_a_filter_selects_skus_and_their_rows(expr: str, skus: set[str]) -> None:
    table = _table()
    node = parse_filter(expr)
    assert node is not None
    mask = table.mask(node)
    assert {str(s) for s, ok in zip(table.sku_ids, mask.skus, strict=True) if ok} == skus
    assert mask.rows.tolist() == [r[0] in skus for r in ROWS]
    assert mask.skus_passing == len(skus)
    assert mask.row_share == pytest.approx(sum(r[0] in skus for r in ROWS) / len(ROWS))
    assert len(table.label_sets) == 3  # A and its feedback row share one set


def test_nearest_catalog_image_skips_feedback_rows_and_unknown_skus() -> None:
    table = _table()
    emb = np.eye(5, 4, dtype=np.float32)  # row i points along axis i (row 4: all zero)
    emb[4] = [0, 0, 1, 0]  # the feedback row of A is the closest to axis 2 ... but not catalog
    query = np.asarray([0, 0, 0.9, 0.1], np.float32)
    m = table.nearest_image("A", query, emb)
    assert m is not None and (m.row, m.image) == (2, "a1.jpg")
    assert m.similarity == pytest.approx(0.9)
    assert table.nearest_image("Z", query, emb) is None
    assert table.positions(["C", "Z", "A"]).tolist() == [2, -1, 0]
    assert table.labels("B") == frozenset({"brand=Flora", "size=250ml", "tag=vegan"})
