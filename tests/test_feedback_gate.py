"""The anti-poisoning gate on synthetic embeddings: a flood from one key moves nothing, honest
feedback the model agrees with passes, caps and de-duplication hold."""

from __future__ import annotations

import numpy as np

from service.feedback_gate import FeedbackPolicy, Labelled, gate, one_label_per_request


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _products(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    return _unit(np.random.default_rng(seed).normal(size=(n, dim)))


def _views(centres: np.ndarray, which: list[int], noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _unit(centres[which] + noise * rng.normal(size=(len(which), centres.shape[1])))


def test_one_label_per_request_prefers_correct_then_latest() -> None:
    got = one_label_per_request([
        ("r1", "click", "A", "k", 1.0), ("r1", "correct", "B", "k", 2.0),
        ("r1", "confirm", "A", "k", 3.0), ("r2", "click", "C", "k", 1.0),
        ("r3", "click", "D", "k", 1.0),
    ], kinds=["confirm", "correct", "click"])
    assert got == {"r1": ("B", "k", 2.0), "r2": ("C", "k", 1.0), "r3": ("D", "k", 1.0)}
    assert one_label_per_request([("r1", "click", "A", "k", 1.0)], kinds=["correct"]) == {}


def test_flood_from_one_key_is_rejected_while_honest_feedback_passes() -> None:
    prods = _products(60)
    honest = [Labelled(f"h{i}", f"S{i}", f"user{i}", 100.0 + i, True) for i in range(60)]
    honest_emb = _views(prods, list(range(60)), 0.3, 1)
    # 500 wrong `correct` labels for 50 SKUs from one key, photos of other products, outside
    # the model's candidates (the model does not place photo i near SKU i+1)
    flood = [Labelled(f"a{j}", f"S{(j % 50) + 1}", "attacker", 200.0 + j, False)
             for j in range(500)]
    flood_emb = _views(prods, [j % 50 for j in range(500)], 0.3, 2)
    rows = honest + flood
    res = gate(rows, np.concatenate([honest_emb, flood_emb]), FeedbackPolicy())
    accepted = {rows[i].request_id for i in res.accepted}
    assert accepted == {r.request_id for r in honest}
    assert res.rejected["key_reputation"] == 500
    # a flood whose labels the model often lists (a small catalog: random SKUs land in the
    # top-k) passes the reputation check, but a bulk key's labels need another key's agreement
    lucky = [Labelled(r.request_id, r.sku_id, r.owner, r.ts, j % 2 == 0)
             for j, r in enumerate(flood)]
    res = gate(honest + lucky, np.concatenate([honest_emb, flood_emb]), FeedbackPolicy())
    assert {(honest + lucky)[i].owner for i in res.accepted} == {r.owner for r in honest}
    assert res.rejected["too_few_votes"] == 500


def test_votes_quota_trust_cap_and_dedup() -> None:
    prods = _products(3)
    one = _views(prods, [0], 0.0, 0)
    # a single key naming a SKU the model did not list: too few votes ...
    lone = [Labelled("r1", "S0", "k1", 1.0, False)]
    assert gate(lone, one, FeedbackPolicy()).rejected["too_few_votes"] == 1
    # ... unless a second key names the same SKU for a near-identical crop, or the key is trusted
    pair = lone + [Labelled("r2", "S0", "k2", 2.0, False)]
    near = np.concatenate([one, _views(prods, [0], 0.05, 1)])
    assert len(gate(pair, near, FeedbackPolicy(dedup_sim=1.1)).accepted) == 2
    assert gate(lone, one, FeedbackPolicy(trusted_keys=["k1"])).accepted == [0]
    # three keys say S1 for near-identical crops: one key saying S0 is outvoted
    crowd = [Labelled(f"c{i}", "S1", f"u{i}", float(i), True) for i in range(3)]
    rows = crowd + [Labelled("x", "S0", "bad", 9.0, True)]
    emb = _views(prods, [2, 2, 2, 2], 0.05, 3)
    res = gate(rows, emb, FeedbackPolicy(dedup_sim=1.1))
    assert res.rejected["outvoted"] == 1 and 3 not in res.accepted
    # per key per SKU quota, per SKU cap (most recent first), near-duplicates dropped
    many = [Labelled(f"m{i}", "S2", "k", float(i), True) for i in range(5)]
    emb = _views(prods, [1] * 5, 0.5, 4)
    res = gate(many, emb, FeedbackPolicy(max_rows_per_key_per_sku=2, dedup_sim=1.1))
    assert res.accepted == [4, 3] and res.rejected["key_quota"] == 3
    users = [Labelled(f"u{i}", "S2", f"u{i}", float(i), True) for i in range(5)]
    res = gate(users, emb, FeedbackPolicy(max_rows_per_sku=3, dedup_sim=1.1))
    assert res.accepted == [4, 3, 2] and res.rejected["sku_cap"] == 2
    same = np.repeat(emb[:1], 5, axis=0)
    res = gate(users, same, FeedbackPolicy())
    assert res.accepted == [4] and res.rejected["duplicate"] == 4
    res = gate(users[:1], same[:1], FeedbackPolicy(), catalog={"S2": same[:1]})
    assert res.accepted == [] and res.rejected["duplicate"] == 1


def test_the_model_votes_for_labels_in_its_shortlist(redis_client, redis_key_prefix) -> None:  # type: ignore[no-untyped-def]
    """A label outside the answered top-k but among the model's retained shortlist gets the
    model's vote; one the model never listed does not (real Redis, the builder's reader)."""
    from index_builder.feedback import collect_feedback
    from service.catalog import CatalogItem
    from service.feedback import FeedbackLog

    flog = FeedbackLog(redis_client, redis_key_prefix)
    answer = {"candidates": [{"sku_id": "A"}], "shortlist": ["A", "B"]}
    for rid, label in (("q1", "B"), ("q2", "C"), ("q3", "A")):
        assert flog.retain(rid, "k", b"jpeg", answer, 3600)
        query = flog.get(rid)
        assert query is not None
        flog.record(query, "correct", label, None, 1000)
    catalog = [CatalogItem(image=f"{s}.jpg", sku_id=s) for s in "ABC"]
    pending = collect_feedback(flog, FeedbackPolicy(), catalog)
    listed = {r.request_id: r.in_candidates for r in pending.rows}
    assert listed == {"q1": True, "q2": False, "q3": True}
    # an answer retained before shortlists existed: only its candidates count
    assert flog.retain("q4", "k", b"jpeg", {"candidates": [{"sku_id": "A"}]}, 3600)
    old = flog.get("q4")
    assert old is not None and old.shortlist == [] and not old.model_listed("B")


def test_shortlist_size_and_order() -> None:
    from service.recognition import OnlineConfig
    from service.recognizer import top_n

    scores = np.asarray([0.1, 0.9, 0.3, 0.9, -1.0])
    assert top_n(scores, 3) == [1, 3, 2]
    assert top_n(scores, 10) == [1, 3, 2, 0, 4] and top_n(scores, 0) == []
    cfg = OnlineConfig()
    # at most 50, and at most 5 % of the catalog: a random label is rarely listed
    assert cfg.shortlist_size(1513) == 50 and cfg.shortlist_size(20) == 1
    assert cfg.shortlist_size(1_000_000) == 50 and OnlineConfig(shortlist=0).shortlist_size(99) == 0


def test_pseudo_label_needs_a_confident_answer_named_by_classifier_and_index() -> None:
    from service.feedback_gate import pseudo_label

    both = {"candidates": [{"sku_id": "A", "score": 0.7, "source": "both"},
                           {"sku_id": "B", "score": 0.3, "source": "classifier"}]}
    assert pseudo_label(both, 0.5) == "A"
    assert pseudo_label(both, 0.8) is None  # not confident enough
    for source in ("classifier", "index"):  # one of the two alone is not index-consistent
        one = {"candidates": [{"sku_id": "A", "score": 0.9, "source": source}]}
        assert pseudo_label(one, 0.5) is None
    assert pseudo_label({"candidates": []}, 0.0) is None
    assert pseudo_label({"candidates": [{"sku_id": "A"}]}, 0.0) is None  # an old answer


def test_nearest_catalog_sku_is_the_owner_of_the_most_similar_catalog_row() -> None:
    from service.feedback_gate import nearest_catalog_sku

    prods = _products(4)
    catalog = {"S0": prods[[0]], "S1": prods[[1, 2]], "S3": prods[[3]]}
    crops = _views(prods, [2, 0, 3, 1], 0.05, 5)
    assert nearest_catalog_sku(crops, catalog) == ["S1", "S0", "S3", "S1"]
    assert nearest_catalog_sku(crops[:0], catalog) == []
    assert nearest_catalog_sku(crops[:1], {}) == [""]


def test_the_gate_reports_how_many_voters_each_accepted_row_had() -> None:
    prods = _products(3)
    rows = [Labelled("a", "S0", "k1", 1.0, True),   # its key + the model
            Labelled("b", "S1", "k2", 2.0, True),   # its key + the model + k3's agreeing label
            Labelled("c", "S1", "k3", 3.0, False),  # its key + k2
            Labelled("d", "S2", "boss", 4.0, False)]  # a trusted key
    emb = np.concatenate([prods[[0]], _views(prods, [1, 1], 0.01, 7), prods[[2]]])
    res = gate(rows, emb, FeedbackPolicy(trusted_keys=["boss"], dedup_sim=1.1))
    assert sorted(res.accepted) == [0, 1, 2, 3]
    assert res.votes == {0: 2, 1: 3, 2: 2}
    assert res.accepted_by_votes() == {0: 1, 2: 2, 3: 1}
