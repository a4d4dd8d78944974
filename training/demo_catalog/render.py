"""Rendering of one SKU's images, in this process or in a worker of a pool.

A worker gets the SKU plan once (pool initializer) and then SKU indices; it writes the images
itself and sends back only the query boxes.  Every image has its own generator seeded from
``(seed, split, sku index, image index)``, so the files do not depend on ``jobs``.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .augment import catalog_image, train_view
from .packshot import packshot
from .plan import Plan, QueryItem
from .scene import render_query
from .spec import S_QUERY, S_TRAIN, rng_for

CATALOG_JPEG_QUALITY = 95


@dataclass(frozen=True, slots=True)
class RenderJob:
    out: Path
    seed: int
    size: int
    query_size: int
    splits: tuple[str, ...]

    @property
    def master(self) -> int:
        """Side of the cached packshot: big enough for the largest use."""
        return max(self.size, self.query_size)


_STATE: dict[str, Any] = {}


def _init(job: RenderJob, plan: Plan) -> None:
    _STATE["job"] = job
    _STATE["plan"] = plan
    queries: dict[int, list[QueryItem]] = {}
    for q in plan.queries:
        queries.setdefault(q.sku, []).append(q)
    _STATE["queries"] = queries


def catalog_path(out: Path, sku_id: str) -> Path:
    return out / "catalog" / f"{sku_id}.jpg"


def train_path(out: Path, sku_id: str, k: int) -> Path:
    return out / "train" / f"{sku_id}_{k:03d}.jpg"


def query_path(out: Path, pos: int) -> Path:
    return out / "queries" / f"q{pos:05d}.jpg"


def render_sku(i: int) -> list[dict[str, Any]]:
    """Write SKU ``i``'s catalog, train and query images; return its queries' labels."""
    job: RenderJob = _STATE["job"]
    plan: Plan = _STATE["plan"]
    spec = plan.specs[i]
    pack = packshot(spec, job.master)
    if "catalog" in job.splits:
        catalog_image(pack, job.size).save(
            catalog_path(job.out, spec.sku_id), "JPEG", quality=CATALOG_JPEG_QUALITY
        )
    if "train" in job.splits:
        for k in range(int(plan.counts[i])):
            jpeg, _ = train_view(pack, job.size, rng_for(job.seed, S_TRAIN, i, k))
            train_path(job.out, spec.sku_id, k).write_bytes(jpeg)
    results = []
    if "queries" in job.splits:
        for q in _STATE["queries"].get(i, []):
            others = [packshot(plan.specs[j], job.master) for j in q.distractors]
            shot = render_query(pack, others, job.query_size, rng_for(job.seed, S_QUERY, i, q.k))
            query_path(job.out, q.pos).write_bytes(shot.jpeg)
            results.append({
                "pos": q.pos, "box": list(shot.box), "distractor_boxes": [list(b) for b in shot.distractor_boxes],
                "scene": shot.scene, "area_frac": shot.area_frac,
            })
    return results


def render_all(job: RenderJob, plan: Plan, jobs: int) -> Iterator[list[dict[str, Any]]]:
    """Render every SKU, in SKU order, with ``jobs`` processes (1 = this process)."""
    n = len(plan.specs)
    if jobs <= 1 or n < 2:
        _init(job, plan)
        for i in range(n):
            yield render_sku(i)
        return
    ctx = mp.get_context("spawn")  # safe in threaded parents (pytest, torch); start-up is small
    with ctx.Pool(jobs, initializer=_init, initargs=(job, plan)) as pool:
        yield from pool.imap(render_sku, range(n), chunksize=1)
