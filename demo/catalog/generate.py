"""Generate the demo catalog: plan, render, write manifests, ``skus.jsonl`` and ``stats.json``."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.catalog import CatalogItem, write_jsonl

from .plan import Plan, TailLaw, make_plan
from .render import (
    RenderJob,
    catalog_path,
    query_path,
    render_queries,
    render_sku,
    train_path,
    workers,
)
from .spec import plan_skus
from .titles import OTHER_SKU_PROB, head_tail_word_stats

log = logging.getLogger(__name__)

SPLITS = ("catalog", "train", "queries")
GENERATOR_VERSION = "1.0"


def generate_demo_catalog(
    out_dir: str | os.PathLike[str],
    *,
    skus: int = 200,
    seed: int = 0,
    size: int = 128,
    query_size: int = 224,
    queries_per_sku: int = 2,
    max_per_sku: int = 100,
    min_per_sku: int = 1,
    zipf_a: float = 1.6,
    zipf_q: float = 0.08,
    head_min: int = 20,
    splits: tuple[str, ...] | list[str] = SPLITS,
    jobs: int = 1,
    progress: bool = False,
) -> dict[str, Any]:
    """Write a synthetic packaged-goods catalog into ``out_dir`` and return its statistics.

    Same arguments give byte-identical images and manifests (``stats.json`` differs only in
    ``seconds``), whatever ``jobs``.  SKU ``i`` and its packshot are the same for every
    ``skus > i``; so are its train images, only how many of them depends on the popularity
    rank within the catalog.
    """
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; choose from {list(SPLITS)}")
    for name, v in (("size", size), ("query_size", query_size)):
        if v < 32:
            raise ValueError(f"{name} must be >= 32 px, got {v}")
    if queries_per_sku < 0 or head_min < 1 or jobs < 1:
        raise ValueError("queries_per_sku must be >= 0, head_min >= 1 and jobs >= 1")
    t0 = time.perf_counter()
    out = Path(out_dir)
    law = TailLaw(max_per_sku, min_per_sku, zipf_a, zipf_q)
    plan = make_plan(plan_skus(skus, seed), seed, law, queries_per_sku)
    for split in splits:
        (out / split).mkdir(parents=True, exist_ok=True)
    log.info(
        "demo catalog: %d SKUs, %d train images, %d queries -> %s",
        skus,
        len(plan.train),
        len(plan.queries),
        out,
    )
    with tempfile.TemporaryDirectory(prefix="demo-catalog-") as scratch:
        job = RenderJob(out, Path(scratch), seed, size, query_size, tuple(splits))
        query_labels = _render(job, plan, jobs, progress)
    _write_manifests(out, plan, splits, query_labels)
    _write_skus(out, plan, head_min)
    stats = _stats(plan, splits, query_labels, head_min, law, job, queries_per_sku)
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    return stats


def _render(job: RenderJob, plan: Plan, jobs: int, progress: bool) -> dict[int, dict[str, Any]]:
    """Render every image; return the query labels by query number."""
    n = len(plan.specs)
    labels: dict[int, dict[str, Any]] = {}
    with workers(job, plan, jobs) as run:
        for _ in tqdm(
            run(render_sku, range(n)),
            total=n,
            desc="packshots, catalog, train",
            unit="sku",
            disable=not progress,
        ):
            pass
        if "queries" in job.splits:
            for results in tqdm(
                run(render_queries, range(n)),
                total=n,
                desc="queries",
                unit="sku",
                disable=not progress,
            ):
                labels.update((r["pos"], r) for r in results)
    return labels


def _write_manifests(
    out: Path,
    plan: Plan,
    splits: tuple[str, ...] | list[str],
    query_labels: dict[int, dict[str, Any]],
) -> None:
    specs = plan.specs
    if "catalog" in splits:
        write_jsonl(
            (
                CatalogItem(
                    str(catalog_path(out, s.sku_id).resolve()),
                    s.sku_id,
                    s.title,
                    tuple(s.tags),
                    s.category,
                )
                for s in specs
            ),
            out / "catalog" / "manifest.jsonl",
        )
    if "train" in splits:
        write_jsonl(
            (
                CatalogItem(
                    str(train_path(out, specs[t.sku].sku_id, t.k).resolve()),
                    specs[t.sku].sku_id,
                    t.title,
                    tuple(specs[t.sku].tags),
                    specs[t.sku].category,
                    extra={"title_has_other_sku_words": t.other_words},
                )
                for t in plan.train
            ),
            out / "train" / "manifest.jsonl",
        )
    if "queries" in splits:
        items = []
        for q in plan.queries:
            s, lab = specs[q.sku], query_labels[q.pos]
            extra = {
                "n_distractors": len(q.distractors),
                "distractor_skus": [specs[j].sku_id for j in q.distractors],
                "distractor_boxes": lab["distractor_boxes"],
                "scene": lab["scene"],
                "area_frac": lab["area_frac"],
            }
            items.append(
                CatalogItem(
                    str(query_path(out, q.pos).resolve()),
                    s.sku_id,
                    s.title,
                    tuple(s.tags),
                    s.category,
                    tuple(lab["box"]),
                    extra=extra,
                )
            )
        write_jsonl(items, out / "queries" / "manifest.jsonl")


def _write_skus(out: Path, plan: Plan, head_min: int) -> None:
    with (out / "skus.jsonl").open("w", encoding="utf-8") as fh:
        for s in plan.specs:
            count = int(plan.counts[s.index])
            rec = {
                "sku_id": s.sku_id,
                "brand": s.brand.name,
                "product": s.product,
                "variant": s.variant,
                "size": s.size,
                "shape": s.shape,
                "category": s.category,
                "title": s.title,
                "tags": s.tags,
                "popularity_rank": int(plan.rank[s.index]),
                "train_count": count,
                "head": count >= head_min,
            }
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _stats(
    plan: Plan,
    splits: tuple[str, ...] | list[str],
    query_labels: dict[int, dict[str, Any]],
    head_min: int,
    law: TailLaw,
    job: RenderJob,
    queries_per_sku: int,
) -> dict[str, Any]:
    c = plan.counts
    head = c >= head_min
    stats: dict[str, Any] = {
        "generator": "demo.catalog",
        "version": GENERATOR_VERSION,
        "args": {
            "skus": len(plan.specs),
            "seed": job.seed,
            "size": job.size,
            "query_size": job.query_size,
            "queries_per_sku": queries_per_sku,
            "max_per_sku": law.max_per_sku,
            "min_per_sku": law.min_per_sku,
            "zipf_a": law.a,
            "zipf_q": law.q,
            "head_min": head_min,
            "splits": list(splits),
        },
        "sku_count": len(plan.specs),
        "brand_count": len({s.brand_index for s in plan.specs}),
        "categories": dict(sorted(Counter(s.category for s in plan.specs).items())),
        "shapes": dict(sorted(Counter(s.shape for s in plan.specs).items())),
        "images": {
            "catalog": len(plan.specs) if "catalog" in splits else 0,
            "train": len(plan.train) if "train" in splits else 0,
            "queries": len(plan.queries) if "queries" in splits else 0,
        },
        "train_per_sku": {
            "max": int(c.max()),
            "min": int(c.min()),
            "median": float(np.median(c)),
            "mean": round(float(c.mean()), 2),
            "skus_with_1": int((c == 1).sum()),
            "skus_with_le5": int((c <= 5).sum()),
        },
        "head_tail": {
            "head_min_images": head_min,
            "head_skus": int(head.sum()),
            "tail_skus": int((~head).sum()),
            "head_images": int(c[head].sum()),
            "tail_images": int(c[~head].sum()),
        },
        "zipf": {
            "law": "count = clip(Poisson(max * (q / (x + q)) ** a), min, max), "
            "x = (rank - 0.5) / n_skus, rank = seeded popularity order",
            "max": law.max_per_sku,
            "min": law.min_per_sku,
            "a": law.a,
            "q": law.q,
        },
        "titles": {
            "other_sku_words_prob": OTHER_SKU_PROB,
            "titles_with_other_sku_words": round(
                sum(t.other_words for t in plan.train) / max(1, len(plan.train)), 4
            ),
            "shared_words_head_tail": head_tail_word_stats(
                [(t.title, bool(head[t.sku])) for t in plan.train]
            ),
        },
    }
    if query_labels:
        labels = list(query_labels.values())
        af = np.array([q["area_frac"] for q in labels])
        stats["queries"] = {
            "area_frac_mean": round(float(af.mean()), 4),
            "area_frac_min": round(float(af.min()), 4),
            "area_frac_max": round(float(af.max()), 4),
            "distractors_mean": round(
                float(np.mean([len(q.distractors) for q in plan.queries])), 3
            ),
            "scenes": dict(sorted(Counter(q["scene"] for q in labels).items())),
        }
    return stats
