"""Accepted user feedback → extra reference rows (``build --feedback``) and training pairs
(``sku-feedback export``).

Read the stream from the start of the retention window, keep one label per request, drop what
is no longer retained (expired or deleted queries: they leave the next version), embed the
retained crops with the current artifact, and pass them through the anti-poisoning gate
(:mod:`service.feedback_gate`, where the threat model is written down).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from service.artifact import Artifact
from service.catalog import CatalogItem
from service.embed import EMBEDDING_OUTPUT, normalize
from service.feedback import FeedbackLog, RetainedQuery
from service.feedback_gate import FeedbackPolicy, Labelled, gate, one_label_per_request
from service.preprocess import preprocess

log = logging.getLogger(__name__)
FEEDBACK_IMAGE_SCHEME = "feedback-query:"  # row images of feedback rows: no file, a query id


@dataclass
class AcceptedFeedback:
    """``items[j]`` (a labelled crop, ``extra.source == "feedback"``) has ``embeddings[j]``."""

    items: list[CatalogItem]
    embeddings: np.ndarray
    crops: list[bytes]
    counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        c = self.counts
        rejected = {k[9:]: v for k, v in c.items() if k.startswith("rejected_") and v}
        return (f"feedback: {c.get('entries', 0)} entries, {c.get('labelled', 0)} labelled "
                f"requests, {c.get('not_retained', 0)} no longer retained, "
                f"{c.get('unknown_sku', 0)} for SKUs outside the catalog, {len(self.items)} "
                f"accepted; rejected {rejected or 'none'}")


def embed_crops(crops: Sequence[bytes], artifact: Artifact, batch_size: int = 32) -> np.ndarray:
    """JPEG crops (already cropped by the service) → L2-normalised embeddings."""
    cfg, out = artifact.config.preprocess, []
    for start in range(0, len(crops), batch_size):
        batch = [preprocess(Image.open(io.BytesIO(b)).convert("RGB"), cfg)
                 for b in crops[start:start + batch_size]]
        emb = artifact.model.run(np.stack(batch))[EMBEDDING_OUTPUT]
        out.append(np.asarray(emb, np.float32).reshape(len(batch), -1))
    return normalize(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)


def feedback_item(query: RetainedQuery, sku: CatalogItem, owner: str, ts: float) -> CatalogItem:
    """A reference row of ``sku`` seen in a retained crop, marked ``source: feedback``."""
    return CatalogItem(
        image=f"{FEEDBACK_IMAGE_SCHEME}{query.request_id}", sku_id=sku.sku_id, title=sku.title,
        tags=sku.tags, category=sku.category, source=f"feedback:{query.request_id}",
        extra={"source": "feedback", "request_id": query.request_id, "feedback_ts": ts,
               "owner": owner},
    )


@dataclass
class PendingFeedback:
    """Labelled, still-retained requests of the window, before embedding and the gate."""

    rows: list[Labelled]
    queries: list[RetainedQuery]
    skus: dict[str, CatalogItem]
    counts: dict[str, int]

    def digest_part(self) -> list[tuple[str, str, str]]:
        """What the built version depends on (so an unchanged night is recognised)."""
        return [(r.request_id, r.sku_id, r.owner) for r in self.rows]


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
    return pending


def accept_feedback(pending: PendingFeedback, artifact: Artifact, policy: FeedbackPolicy,
                    catalog_emb: Mapping[str, np.ndarray] | None = None,
                    batch_size: int = 32) -> AcceptedFeedback:
    """Embed the pending crops with ``artifact`` and keep what passes the gate."""
    counts = dict(pending.counts)
    if not pending.rows:
        return AcceptedFeedback([], np.zeros((0, 0), np.float32), [], counts)
    emb = embed_crops([q.crop for q in pending.queries], artifact, batch_size)
    res = gate(pending.rows, emb, policy, catalog_emb)
    counts.update({f"rejected_{k}": v for k, v in res.rejected.items()})
    rows, queries = pending.rows, pending.queries
    items = [feedback_item(queries[i], pending.skus[rows[i].sku_id], rows[i].owner, rows[i].ts)
             for i in res.accepted]
    return AcceptedFeedback(items, emb[res.accepted], [queries[i].crop for i in res.accepted],
                            counts)


def catalog_embeddings(items: Sequence[CatalogItem], emb: np.ndarray) -> dict[str, np.ndarray]:
    """SKU → its catalog rows' embeddings (the gate de-duplicates feedback against them)."""
    by_sku: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_sku.setdefault(it.sku_id, []).append(i)
    return {s: emb[idx] for s, idx in by_sku.items()}
