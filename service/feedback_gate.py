"""Which user feedback may become a reference row (or a training pair): the anti-poisoning gate.

Threat model.  Feedback comes from API keys (clients).  A client may be wrong by accident or
on purpose: one key can send many ``correct`` labels naming the wrong SKU for photos of other
products (a flood), aiming to make those SKUs' answers (or its competitors') wrong.  We assume
keys are issued by us (an attacker does not hold many independent keys: Sybil attacks are out
of scope, and revoking a key removes its feedback from the next build), and that the model is
usually right about *which few SKUs* a photo could be (its retained top-k), even when its top-1
is wrong.  The gate, all steps configurable in :class:`FeedbackPolicy`:

1. **one label per request**: ``correct`` over ``confirm`` over ``click``; kinds outside
   ``policy.kinds`` are ignored; feedback older than the retention window is dropped;
2. **key reputation**: a key with at least ``reputation_min_labels`` labels of which fewer than
   ``reputation_min_agreement`` name a SKU the model had listed is dropped whole (a flood of
   random wrong labels disagrees with the model almost always; honest users rarely do);
3. **votes**: a row needs ``min_votes`` votes from distinct voters: its own key, every other
   key that gave the same SKU to a near-identical crop (cosine ≥ ``agree_sim``), and the model
   when the SKU was among its retained candidates or its retained *shortlist* (the
   classifier's most likely SKUs: at most 50 and at most 5 % of the catalog,
   ``OnlineConfig.shortlist``), unless the key is a bulk sender (at least
   ``bulk_labels`` labels in the window: with a small catalog a random label lands in the
   top-k often enough to pass step 2); more distinct keys naming another SKU for near-identical
   crops outvote it.  Trusted keys (``trusted_keys``) skip 2–3: a deployment whose app sends
   all its shoppers' feedback under one key must trust that key (and police it upstream);
4. **quotas**: at most ``max_rows_per_key_per_sku`` rows of one key per SKU, then at most
   ``max_rows_per_sku`` rows per SKU, most recent first, without near-duplicates (cosine ≥
   ``dedup_sim`` to a kept row or to one of the SKU's catalog rows).

So one key alone can add at most ``max_rows_per_key_per_sku`` rows to a SKU, and only for
photos the model already placed near that SKU: it cannot move a SKU's answers.

**Pseudo-labels** (``pseudo_labels``, off by default): a retained query nobody gave feedback
for becomes a row of its answer's top-1 SKU when the recognizer was confident (fused score
≥ ``pseudo_min_score``, named by the classifier *and* the index: source ``both``) and the
nearest catalog row of the crop, embedded by the building artifact, is of that SKU
(:func:`pseudo_label`, ``index_builder.feedback``).  No user names the label, so no flood of
labels can steer it; a key dropped by step 2 contributes none, and the quotas of step 4 apply
with ``pseudo_max_rows_per_sku``.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from service.vector_index import exact_search

KIND_PRIORITY = {"correct": 3, "confirm": 2, "click": 1}


class FeedbackPolicy(BaseModel):
    """The gate's knobs (index builder: ``SKU_INDEX_FEEDBACK__<FIELD>``)."""

    window_days: float = Field(7.0, gt=0, description="feedback older than this is dropped")
    kinds: list[str] = Field(default_factory=lambda: ["confirm", "correct", "click"])
    trusted_keys: list[str] = Field(
        default_factory=list, description="key ids (service.feedback.key_id) accepted alone")
    min_votes: int = Field(2, ge=1, description="distinct voters a row needs (keys + model)")
    model_votes: bool = Field(True, description="the model's retained top-k counts as a voter")
    agree_sim: float = Field(0.85, ge=-1, le=2, description="crops this similar (cosine) are "
                             "one product; above 1: no two crops are")
    bulk_labels: int = Field(
        50, ge=1, description="an untrusted key with this many labels in the window is a bulk "
        "sender: the model no longer votes for it, other keys must agree")
    reputation_min_labels: int = Field(20, ge=1)
    reputation_min_agreement: float = Field(0.2, ge=0, le=1)
    max_rows_per_key_per_sku: int = Field(2, ge=1)
    max_rows_per_sku: int = Field(20, ge=1)
    dedup_sim: float = Field(0.98, ge=-1, le=2, description="near-duplicate (cosine); above "
                             "1: no de-duplication")
    pseudo_labels: bool = Field(False, description="also add confident, index-consistent "
                                "retained queries without feedback as rows of their top-1")
    pseudo_min_score: float = Field(0.5, ge=0, le=1, description="the answer's top-1 fused "
                                    "score a pseudo-label needs")
    pseudo_max_rows_per_sku: int = Field(5, ge=1, description="pseudo-labelled rows per SKU")


@dataclass(frozen=True)
class Labelled:
    """One request's label, ready for the gate (``embedding`` L2-normalised)."""

    request_id: str
    sku_id: str
    owner: str
    ts: float
    in_candidates: bool


@dataclass
class GateResult:
    accepted: list[int]  # indices into the gate's input, most recent first
    rejected: Counter[str] = field(default_factory=Counter)
    bad_keys: set[str] = field(default_factory=set)  # dropped whole by key reputation
    votes: dict[int, int] = field(default_factory=dict)  # input index → distinct voters

    def accepted_by_votes(self) -> dict[int, int]:
        """How many accepted rows had how many distinct voters (0: a trusted key's)."""
        return dict(sorted(Counter(self.votes.get(i, 0) for i in self.accepted).items()))


def pseudo_label(answer: Mapping[str, Any], min_score: float) -> str | None:
    """The retained answer's top-1 SKU when the recognizer was confident about it: fused score
    ≥ ``min_score`` and named by both the classifier and the index; else ``None``."""
    cands = answer.get("candidates") or []
    if not cands:
        return None
    top = cands[0]
    if top.get("source") != "both" or float(top.get("score", 0.0)) < min_score:
        return None
    return str(top["sku_id"])


def nearest_catalog_sku(emb: np.ndarray, catalog: Mapping[str, np.ndarray]) -> list[str]:
    """For each row of ``emb``, the SKU of its most similar catalog row (``catalog``: SKU → its
    rows' embeddings, all L2-normalised): the index-consistency check of a pseudo-label."""
    skus = list(catalog)
    if not skus or not len(emb):
        return [""] * len(emb)
    ref = np.concatenate([catalog[s] for s in skus])
    owner = np.repeat(np.arange(len(skus)), [len(catalog[s]) for s in skus])
    _, top = exact_search(ref, emb, 1)  # FAISS, block by block: memory stays bounded
    return [skus[owner[j]] for j in top[:, 0]]


def one_label_per_request(entries: Sequence[tuple[str, str, str, str, float]],
                          kinds: Sequence[str]) -> dict[str, tuple[str, str, float]]:
    """``(request_id, kind, sku_id, owner, ts)`` → ``request_id → (sku_id, owner, ts)``."""
    best: dict[str, tuple[int, float, str, str]] = {}
    for rid, kind, sku, owner, ts in entries:
        if kind not in kinds:
            continue
        rank = (KIND_PRIORITY.get(kind, 0), ts)
        if rid not in best or rank > best[rid][:2]:
            best[rid] = (rank[0], ts, sku, owner)
    return {rid: (sku, owner, ts) for rid, (_, ts, sku, owner) in best.items()}


def _blocked_neighbours(emb: np.ndarray, sim: float, block: int = 2048) -> list[np.ndarray]:
    """For each row, the other rows with cosine ≥ ``sim`` (blocked: memory stays bounded)."""
    out: list[np.ndarray] = []
    for start in range(0, len(emb), block):
        s = emb[start:start + block] @ emb.T
        for i, row in enumerate(s):
            hits = np.flatnonzero(row >= sim)
            out.append(hits[hits != start + i])
    return out


def gate(rows: Sequence[Labelled], emb: np.ndarray, policy: FeedbackPolicy,
         catalog: Mapping[str, np.ndarray] | None = None) -> GateResult:
    """Apply the policy (module docstring) to labelled crops ``rows`` with embeddings ``emb``;
    ``catalog`` maps a SKU to its catalog embeddings (for de-duplication)."""
    if len(rows) != len(emb):
        raise ValueError(f"{len(rows)} rows but {len(emb)} embeddings")
    res = GateResult([])
    trusted = set(policy.trusted_keys)
    per_key = Counter(r.owner for r in rows)
    agree = Counter(r.owner for r in rows if r.in_candidates)
    bad_keys = {k for k, n in per_key.items() if k not in trusted
                and n >= policy.reputation_min_labels
                and agree[k] / n < policy.reputation_min_agreement}
    alive = [i for i, r in enumerate(rows) if r.owner not in bad_keys]
    res.rejected["key_reputation"] = len(rows) - len(alive)
    res.bad_keys = bad_keys
    sub = emb[alive] if alive else np.zeros((0, emb.shape[1] if emb.ndim == 2 else 0), np.float32)
    neighbours = _blocked_neighbours(sub, policy.agree_sim) if alive else []
    voted: list[int] = []
    for a, i in enumerate(alive):
        r = rows[i]
        if r.owner in trusted:
            voted.append(i)
            continue
        near = [rows[alive[b]] for b in neighbours[a]]
        keys_for = {r.owner} | {n.owner for n in near if n.sku_id == r.sku_id}
        keys_against = Counter(n.sku_id for n in near if n.sku_id != r.sku_id and n.owner != r.owner)
        model_vote = policy.model_votes and r.in_candidates and per_key[r.owner] < policy.bulk_labels
        votes = len(keys_for) + int(model_vote)
        if keys_against and max(keys_against.values()) > len(keys_for):
            res.rejected["outvoted"] += 1
        elif votes < policy.min_votes:
            res.rejected["too_few_votes"] += 1
        else:
            voted.append(i)
            res.votes[i] = votes
    res.accepted = quotas(rows, emb, voted, policy, catalog or {}, res.rejected)
    return res


def quotas(rows: Sequence[Labelled], emb: np.ndarray, voted: list[int], policy: FeedbackPolicy,
           catalog: Mapping[str, np.ndarray], rejected: Counter[str]) -> list[int]:
    """Step 4 of the gate over the ``voted`` rows: per key and SKU, per SKU, no duplicates
    (of a kept row or of ``catalog``'s rows of the SKU); the kept indices, most recent first."""
    per_key_sku: Counter[tuple[str, str]] = Counter()
    kept: dict[str, list[int]] = defaultdict(list)
    out: list[int] = []
    for i in sorted(voted, key=lambda j: -rows[j].ts):
        r = rows[i]
        if per_key_sku[(r.owner, r.sku_id)] >= policy.max_rows_per_key_per_sku:
            rejected["key_quota"] += 1
            continue
        if len(kept[r.sku_id]) >= policy.max_rows_per_sku:
            rejected["sku_cap"] += 1
            continue
        refs = [emb[kept[r.sku_id]]] if kept[r.sku_id] else []
        if r.sku_id in catalog:
            refs.append(catalog[r.sku_id])
        if refs and float(np.max(np.concatenate(refs) @ emb[i])) >= policy.dedup_sim:
            rejected["duplicate"] += 1
            continue
        per_key_sku[(r.owner, r.sku_id)] += 1
        kept[r.sku_id].append(i)
        out.append(i)
    return out
