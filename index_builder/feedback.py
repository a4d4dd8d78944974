"""Accepted user feedback → extra reference rows (``build --feedback``) and training pairs
(``sku-feedback export``).

Read the stream from the start of the retention window, keep one label per request, drop what
is no longer retained (expired or deleted queries: they leave the next version), embed the
retained crops with the current artifact, and pass them through the anti-poisoning gate
(:mod:`service.feedback_gate`, where the threat model is written down).  With the policy's
``pseudo_labels``, retained queries without feedback whose answer was confident and whose crop
is nearest to a catalog row of the same SKU become rows too (``source: pseudo_label``).
"""

from __future__ import annotations

import io
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from service.artifact import Artifact
from service.catalog import CatalogItem
from service.embed import EMBEDDING_OUTPUT, normalize
from service.feedback import FeedbackLog, RetainedQuery
from service.feedback_gate import (
    FeedbackPolicy,
    GateResult,
    Labelled,
    gate,
    nearest_catalog_sku,
    one_label_per_request,
    pseudo_label,
    quotas,
)
from service.preprocess import preprocess

log = logging.getLogger(__name__)
FEEDBACK_IMAGE_SCHEME = "feedback-query:"  # row images of feedback rows: no file, a query id
FEEDBACK_SOURCE, PSEUDO_SOURCE = "feedback", "pseudo_label"  # ``extra["source"]`` of the rows


@dataclass
class AcceptedFeedback:
    """``items[j]`` (a labelled crop, ``extra.source`` ``feedback`` or ``pseudo_label``) has
    ``embeddings[j]``."""

    items: list[CatalogItem]
    embeddings: np.ndarray
    crops: list[bytes]
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        c = self.counts
        rejected = {k[9:]: v for k, v in c.items() if k.startswith("rejected_") and v}
        voters = {int(k[7:]): v for k, v in c.items() if k.startswith("voters_")}
        return (f"feedback: {c.get('entries', 0)} entries, {c.get('labelled', 0)} labelled "
                f"requests, {c.get('not_retained', 0)} no longer retained, "
                f"{c.get('unknown_sku', 0)} for SKUs outside the catalog, "
                f"{c.get('feedback_rows', len(self.items))} accepted (by distinct voters, 0 = "
                f"trusted key: {voters or 'none'}); rejected {rejected or 'none'}" + (
                    f"; pseudo-labels: {c['pseudo_candidates']} confident unlabelled queries, "
                    f"{c.get('pseudo_inconsistent', 0)} not index-consistent, "
                    f"{c.get('pseudo_rows', 0)} accepted" if "pseudo_candidates" in c else ""))


def embed_crops(crops: Sequence[bytes], artifact: Artifact, batch_size: int = 32) -> np.ndarray:
    """JPEG crops (already cropped by the service) → L2-normalised embeddings."""
    cfg, out = artifact.config.preprocess, []
    for start in range(0, len(crops), batch_size):
        batch = [preprocess(Image.open(io.BytesIO(b)).convert("RGB"), cfg)
                 for b in crops[start:start + batch_size]]
        emb = artifact.model.run(np.stack(batch))[EMBEDDING_OUTPUT]
        out.append(np.asarray(emb, np.float32).reshape(len(batch), -1))
    return normalize(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)


def feedback_item(query: RetainedQuery, sku: CatalogItem, owner: str, ts: float,
                  source: str = FEEDBACK_SOURCE) -> CatalogItem:
    """A reference row of ``sku`` seen in a retained crop, marked ``source: feedback`` (or
    ``pseudo_label``)."""
    return CatalogItem(
        image=f"{FEEDBACK_IMAGE_SCHEME}{query.request_id}", sku_id=sku.sku_id, title=sku.title,
        tags=sku.tags, category=sku.category, source=f"{source}:{query.request_id}",
        extra={"source": source, "request_id": query.request_id, "feedback_ts": ts,
               "owner": owner},
    )


@dataclass
class PendingFeedback:
    """Labelled, still-retained requests of the window, before embedding and the gate."""

    rows: list[Labelled]
    queries: list[RetainedQuery]
    skus: dict[str, CatalogItem]
    counts: dict[str, int]
    pseudo: list[Labelled] = field(default_factory=list)  # policy.pseudo_labels
    pseudo_queries: list[RetainedQuery] = field(default_factory=list)

    def digest_part(self) -> list[tuple[str, str, str]]:
        """What the built version depends on (so an unchanged night is recognised)."""
        return [(r.request_id, r.sku_id, r.owner) for r in self.rows + self.pseudo]


def collect_feedback(flog: FeedbackLog, policy: FeedbackPolicy, catalog: Sequence[CatalogItem],
                     *, now: float | None = None) -> PendingFeedback:
    """Read the window's entries, one label per request, only still-retained queries of
    SKUs that the catalog holds."""
    since = (now if now is not None else time.time()) - policy.window_days * 86400
    entries = flog.read(since)
    labels = one_label_per_request(
        [(e.request_id, e.kind, e.sku_id, e.owner, e.ts) for e in entries], policy.kinds)
    first: dict[str, CatalogItem] = {}
    for it in catalog:
        first.setdefault(it.sku_id, it)
    pending = PendingFeedback([], [], first, {"entries": len(entries), "labelled": len(labels),
                                              "not_retained": 0, "unknown_sku": 0})
    rids = sorted(labels)
    for rid, q in zip(rids, flog.get_many(rids), strict=True):
        sku, owner, ts = labels[rid]
        if q is None or q.created_at < since:
            pending.counts["not_retained"] += 1
        elif sku not in first:
            pending.counts["unknown_sku"] += 1
        else:
            pending.rows.append(Labelled(rid, sku, owner, ts, q.model_listed(sku)))
            pending.queries.append(q)
    if policy.pseudo_labels:
        collect_pseudo_labels(flog, policy, pending, set(labels), since)
    return pending


def collect_pseudo_labels(flog: FeedbackLog, policy: FeedbackPolicy, pending: PendingFeedback,
                          labelled: set[str], since: float) -> None:
    """Add the window's retained queries without feedback whose answer was confident
    (:func:`service.feedback_gate.pseudo_label`) to ``pending.pseudo``."""
    rids = sorted(set(flog.retained_ids()) - labelled)
    for rid, q in zip(rids, flog.get_many(rids), strict=True):
        if q is None or q.created_at < since:
            continue
        sku = pseudo_label(q.answer, policy.pseudo_min_score)
        if sku is not None and sku in pending.skus:
            pending.pseudo.append(Labelled(rid, sku, q.owner, q.created_at, True))
            pending.pseudo_queries.append(q)
    pending.counts["pseudo_candidates"] = len(pending.pseudo)


def accept_feedback(pending: PendingFeedback, artifact: Artifact, policy: FeedbackPolicy,
                    catalog_emb: Mapping[str, np.ndarray] | None = None,
                    batch_size: int = 32) -> AcceptedFeedback:
    """Embed the pending crops with ``artifact`` and keep what passes the gate."""
    counts = dict(pending.counts)
    if not pending.rows and not pending.pseudo:
        return AcceptedFeedback([], np.zeros((0, 0), np.float32), [], counts)
    rows, queries = pending.rows, pending.queries
    emb = embed_crops([q.crop for q in queries], artifact, batch_size)
    res = gate(rows, emb, policy, catalog_emb) if rows else GateResult([])
    counts.update({f"rejected_{k}": v for k, v in res.rejected.items()})
    counts["feedback_rows"] = len(res.accepted)
    counts.update({f"voters_{n}": k for n, k in res.accepted_by_votes().items()})
    items = [feedback_item(queries[i], pending.skus[rows[i].sku_id], rows[i].owner, rows[i].ts)
             for i in res.accepted]
    out = AcceptedFeedback(items, emb[res.accepted], [queries[i].crop for i in res.accepted],
                           counts)
    if pending.pseudo and catalog_emb:
        _add_pseudo_labels(out, pending, artifact, policy, catalog_emb, res.bad_keys, batch_size)
    return out


def _add_pseudo_labels(out: AcceptedFeedback, pending: PendingFeedback, artifact: Artifact,
                       policy: FeedbackPolicy, catalog_emb: Mapping[str, np.ndarray],
                       bad_keys: set[str], batch_size: int) -> None:
    """Keep the pseudo-labels whose crop is nearest to a catalog row of their SKU (index-
    consistent), not from a key the gate dropped, within the quotas; append them to ``out``."""
    rows, queries = pending.pseudo, pending.pseudo_queries
    emb = embed_crops([q.crop for q in queries], artifact, batch_size)
    nearest = nearest_catalog_sku(emb, catalog_emb)
    consistent = [i for i, r in enumerate(rows) if nearest[i] == r.sku_id]
    voted = [i for i in consistent if rows[i].owner not in bad_keys]
    out.counts["pseudo_inconsistent"] = len(rows) - len(consistent)
    out.counts["pseudo_key_reputation"] = len(consistent) - len(voted)
    # de-duplicated against the catalog rows and the accepted feedback rows of the SKU (only
    # the SKUs that have a candidate: no copy of the whole catalog)
    wanted = {rows[i].sku_id for i in voted}
    known = {s: [catalog_emb[s]] for s in wanted if s in catalog_emb}
    for it, e in zip(out.items, out.embeddings, strict=True):
        if it.sku_id in wanted:
            known.setdefault(it.sku_id, []).append(e[None, :])
    rejected: Counter[str] = Counter()
    cap = policy.model_copy(update={"max_rows_per_sku": policy.pseudo_max_rows_per_sku})
    kept = quotas(rows, emb, voted, cap, {s: np.concatenate(v) for s, v in known.items()},
                  rejected)
    out.counts.update({f"pseudo_{k}": v for k, v in rejected.items()})
    out.counts["pseudo_rows"] = len(kept)
    out.items += [feedback_item(queries[i], pending.skus[rows[i].sku_id], rows[i].owner,
                                rows[i].ts, PSEUDO_SOURCE) for i in kept]
    out.embeddings = np.concatenate([out.embeddings.reshape(-1, emb.shape[1]), emb[kept]])
    out.crops += [queries[i].crop for i in kept]


def catalog_embeddings(items: Sequence[CatalogItem], emb: np.ndarray) -> dict[str, np.ndarray]:
    """SKU → its catalog rows' embeddings (the gate de-duplicates feedback against them)."""
    by_sku: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_sku.setdefault(it.sku_id, []).append(i)
    return {s: emb[idx] for s, idx in by_sku.items()}
