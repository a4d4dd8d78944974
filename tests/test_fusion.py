"""Category fusion, constrained top-k and the index check on hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from service.fusion import (
    allowed_categories,
    constrained_topk,
    fuse,
    merge_with_neighbours,
    search_vote,
    softmax,
)


def test_search_vote_weights_by_similarity():
    cats = np.array([0, 1, 1, 2])
    sims = np.array([0.9, 0.8, 0.8, 0.1])
    linear = search_vote(cats, sims, 3, temperature=None)
    np.testing.assert_allclose(linear, np.array([0.9, 1.6, 0.1]) / 2.6)
    sharp = search_vote(cats, sims, 3, temperature=0.01)
    assert sharp.argmax() == 0 and sharp.sum() == pytest.approx(1.0)
    assert search_vote(cats, sims, 3, temperature=0.1, k=1).tolist() == [1.0, 0.0, 0.0]


def test_search_vote_ignores_padding_and_handles_empty_neighbours():
    v = search_vote([-1, 2, -1], [0.99, 0.5, 0.98], 3)
    assert v.tolist() == [0.0, 0.0, 1.0]
    np.testing.assert_allclose(search_vote([], [], 4), np.full(4, 0.25))
    np.testing.assert_allclose(search_vote([-1], [0.7], 2), [0.5, 0.5])
    np.testing.assert_allclose(search_vote([0, 0], [0.0, -0.3], 2, temperature=None), [0.5, 0.5])
    with pytest.raises(ValueError):
        search_vote([0, 1], [0.5], 2)


def test_one_category_catalog():
    assert search_vote([0, 0, -1], [0.2, 0.9, 0.3], 1).tolist() == [1.0]
    fused = fuse(np.array([1.0]), np.array([1.0]), 0.3)
    assert fused.tolist() == [1.0]
    assert allowed_categories(fused, top_n=3, cum_prob=0.5).tolist() == [True]
    idx, probs = constrained_topk(np.array([2.0, 1.0, 3.0]), [0, 0, 0], np.array([True]), 5)
    assert idx.tolist() == [2, 0, 1] and probs.sum() == pytest.approx(1.0)


def test_fuse_is_a_weighted_average_and_uniform_vote_keeps_the_ranking():
    p = np.array([0.6, 0.3, 0.1])
    q = np.array([0.0, 0.9, 0.1])
    np.testing.assert_allclose(fuse(p, q, 0.0), p)
    np.testing.assert_allclose(fuse(p, q, 1.0), q)
    np.testing.assert_allclose(fuse(p, q, 0.5), [0.3, 0.6, 0.1])
    # the fusion corrects a confused model when the vote is sure
    assert fuse(p, q, 0.5).argmax() == 1
    uniform = search_vote([], [], 3)
    assert fuse(p, uniform, 0.7).argsort().tolist() == p.argsort().tolist()
    batch = fuse(np.stack([p, q]), np.stack([q, p]), 0.25)
    assert batch.shape == (2, 3)
    with pytest.raises(ValueError):
        fuse(p, q, 1.5)
    with pytest.raises(ValueError):
        fuse(p, q[:2], 0.5)


def test_allowed_categories_by_count_cumulative_probability_and_ties():
    p = np.array([0.1, 0.5, 0.25, 0.15])
    assert allowed_categories(p).all()
    assert allowed_categories(p, top_n=2).tolist() == [False, True, True, False]
    assert allowed_categories(p, cum_prob=0.7).tolist() == [False, True, True, False]
    assert allowed_categories(p, cum_prob=0.75).tolist() == [False, True, True, False]
    assert allowed_categories(p, cum_prob=0.76).tolist() == [False, True, True, True]
    assert allowed_categories(p, cum_prob=0.01).tolist() == [False, True, False, False]
    assert allowed_categories(p, top_n=1, cum_prob=0.99).tolist() == [False, True, False, False]
    tie = np.array([0.4, 0.3, 0.3])
    assert allowed_categories(tie, top_n=2).tolist() == [True, True, True]  # tie at the cut
    assert allowed_categories(np.zeros(3), top_n=1).all()  # all tied
    assert allowed_categories(np.array([]), top_n=1).size == 0


def test_constrained_topk_suppresses_other_categories():
    logits = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    cats = np.array([0, 1, 1, 2, 1])
    idx, probs = constrained_topk(logits, cats, np.array([False, True, False]), 2)
    assert idx.tolist() == [1, 2]
    np.testing.assert_allclose(probs, softmax(np.array([4.0, 3.0, 1.0]))[:2])
    # k larger than the allowed SKUs: fewer come back
    idx, _ = constrained_topk(logits, cats, np.array([False, False, True]), 3)
    assert idx.tolist() == [3]
    # unconstrained = plain top-k, ties in index order
    idx, _ = constrained_topk(np.array([1.0, 2.0, 2.0]), [0, 0, 0], np.array([True]), 3)
    assert idx.tolist() == [1, 2, 0]


def test_constrained_topk_falls_back_when_no_sku_is_allowed_and_keeps_unknown_category():
    logits = np.array([1.0, 3.0, 2.0])
    idx, _ = constrained_topk(logits, [0, 0, 0], np.array([False, True]), 2)
    assert idx.tolist() == [1, 2]  # category 1 holds no SKU: constraint dropped
    idx, _ = constrained_topk(logits, [0, -1, 1], np.array([True, False]), 3)
    assert idx.tolist() == [1, 0]  # SKU with unknown category (-1) is kept
    idx, probs = constrained_topk(np.zeros(0), np.zeros(0, int), np.array([True]), 3)
    assert idx.size == 0 and probs.size == 0


def test_merge_keeps_classifier_answer_confirmed_by_neighbours():
    out = merge_with_neighbours(
        ["A", "B"], [0.7, 0.3], ["A", "A", "C"], [0.9, 0.85, 0.5], k=3, known_sku_ids={"A", "B", "C"}
    )
    assert [c.sku_id for c in out] == ["A", "B", "C"]
    assert out[0].source == "both" and out[1].source == "classifier" and out[2].source == "index"
    assert sum(c.score for c in out) == pytest.approx(1.0)


def test_merge_answers_an_sku_unknown_to_the_classifier_from_the_index():
    # "NEW" was added to the catalog after training: the classifier cannot propose it
    out = merge_with_neighbours(
        ["A", "B"], [0.55, 0.45], ["NEW", "NEW", "A"], [0.95, 0.93, 0.6],
        k=2, known_sku_ids={"A", "B"},
    )
    assert out[0].sku_id == "NEW" and out[0].source == "index"
    assert out[0].classifier_prob == 0.0 and out[0].index_vote > 0.9
    # without the known set, NEW counts as known-but-not-proposed and needs more votes
    out = merge_with_neighbours(["A", "B"], [0.55, 0.45], ["NEW", "NEW", "A"], [0.95, 0.93, 0.6])
    assert out[0].sku_id == "NEW"  # still wins: weight 0.5 of a near-unanimous vote


def test_merge_with_empty_inputs_and_ties():
    assert merge_with_neighbours([], [], [], []) == []
    only_cls = merge_with_neighbours(["A", "B"], [0.5, 0.5], [], [], k=5)
    assert [c.sku_id for c in only_cls] == ["A", "B"]  # tie: classifier order
    assert [c.score for c in only_cls] == [0.5, 0.5]
    only_idx = merge_with_neighbours([], [], ["X", None, "", "Y"], [0.8, 0.99, 0.99, 0.8])
    assert [c.sku_id for c in only_idx] == ["X", "Y"]  # None/"" (FAISS padding) ignored
    with pytest.raises(ValueError):
        merge_with_neighbours(["A"], [0.5, 0.5], [], [])


def test_constrained_topk_eligible_skus_only_without_renormalising():
    logits = np.log(np.asarray([0.5, 0.3, 0.2]))
    cats = np.asarray([0, 0, 1])
    every = np.asarray([True, True])
    idx, probs = constrained_topk(logits, cats, every, k=3)
    only, p_only = constrained_topk(logits, cats, every, k=3,
                                    eligible=np.asarray([False, True, True]))
    assert idx.tolist() == [0, 1, 2] and only.tolist() == [1, 2]
    # the filter removes SKUs, it does not make the ones left look more certain
    np.testing.assert_allclose(p_only, probs[1:])
    none, _ = constrained_topk(logits, cats, every, k=3, eligible=np.zeros(3, bool))
    assert none.size == 0
    with pytest.raises(ValueError, match="eligibility"):
        constrained_topk(logits, cats, every, k=3, eligible=np.ones(2, bool))
