"""``sku-feedback export``: the accepted feedback pairs as a training manifest (weekly retraining).

Writes ``DIR/manifest.jsonl`` (the usual catalog JSONL: ``image``, ``sku_id``, ``title``,
``tags``, ``category``, plus ``source: feedback`` and ``request_id``), the retained crops as
``DIR/images/<request_id>.jpg`` beside it, and ``DIR/export.json`` (policy, counts).  The same
window, gate and caps as ``sku-index build --feedback`` (``SKU_INDEX_FEEDBACK__*``), so the
pairs a model is retrained on are the rows the index already trusted.  Train on them with
``sku-train --extra-train DIR/manifest.jsonl:WEIGHT``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from service.catalog import write_jsonl
from service.feedback import FeedbackLog
from service.redis_server import redis_connection
from service.settings import load_settings

from .build import Runner
from .feedback import accept_feedback, collect_feedback
from .rows import read_rows
from .settings import IndexBuilderSettings

log = logging.getLogger("index_builder.feedback")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sku-feedback", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="accepted feedback → training manifest + images")
    e.add_argument("--out", type=Path, required=True, help="output folder")
    e.add_argument("--catalog", type=Path, required=True, help="the catalog (SKU titles, tags, "
                   "categories of the labels)")
    e.add_argument("--artifact", type=Path, help="SICoT artifact used by the gate's "
                   "similarities (SKU_INDEX_ARTIFACT_DIR)")
    e.add_argument("--redis-url", help="overrides REDIS_URL")
    e.add_argument("--key-prefix", help="key namespace (SKU_INDEX_KEY_PREFIX, default sku)")
    return p


def export(settings: IndexBuilderSettings, catalog: Path, out: Path) -> dict[str, Any]:
    """Write the export (module docstring); its summary."""
    items = read_rows(catalog).items
    # labels users gave only: a pseudo-label is the model's own answer, nothing to learn from
    policy = settings.feedback.model_copy(update={"pseudo_labels": False})
    with redis_connection(settings.redis_url) as (client, _url):
        flog = FeedbackLog(client, settings.key_prefix)
        pending = collect_feedback(flog, policy, items)
        fb = accept_feedback(pending, Runner(settings).artifact(), policy,
                             batch_size=settings.batch_size)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for item, crop in zip(fb.items, fb.crops, strict=True):
        path = out / "images" / f"{item.extra['request_id']}.jpg"
        path.write_bytes(crop)
        rows.append(type(item)(image=str(path.resolve()), sku_id=item.sku_id, title=item.title,
                               tags=item.tags, category=item.category,
                               extra={k: item.extra[k] for k in ("source", "request_id")}))
    write_jsonl(rows, out / "manifest.jsonl")
    summary = {"pairs": len(rows), "skus": len({r.sku_id for r in rows}), "counts": fb.counts,
               "policy": policy.model_dump(mode="json"), "catalog": str(catalog)}
    (out / "export.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    over = {k: v for k, v in (("redis_url", args.redis_url), ("key_prefix", args.key_prefix),
                              ("artifact_dir", args.artifact)) if v is not None}
    summary = export(load_settings(IndexBuilderSettings, **over), args.catalog, args.out)
    sys.stdout.write(f"sku-feedback export: {summary['pairs']} pairs of {summary['skus']} SKUs "
                     f"→ {args.out / 'manifest.jsonl'}\n  {summary['counts']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
