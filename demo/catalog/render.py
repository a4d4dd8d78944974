"""Rendering of the images, in this process or in the workers of a pool.

Two passes over the SKUs: the first draws each packshot once, keeps it as a PNG in a scratch
folder and writes the SKU's catalog and train images; the second writes the queries, which
also need the packshots of other SKUs (the distractors) and read them back from that folder.
A worker gets the plan once (pool initializer) and then SKU indices; it writes the images
itself and sends back only the query labels.  Every image has its own generator seeded from
``(seed, split, sku index, image index)``, so the files do not depend on ``jobs``.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from .augment import catalog_image, train_view
from .packshot import render_packshot
from .plan import Plan, QueryItem
from .scene import render_query
from .spec import S_QUERY, S_TRAIN, rng_for

CATALOG_JPEG_QUALITY = 95

Mapper = Callable[[Callable[[int], Any], Iterable[int]], Iterator[Any]]


@dataclass(frozen=True, slots=True)
class RenderJob:
    out: Path
    scratch: Path  # packshots of the run, as PNG
    seed: int
    size: int
    query_size: int
    splits: tuple[str, ...]

    @property
    def master(self) -> int:
        """Side of the stored packshot: big enough for the largest use."""
        return max(self.size, self.query_size)


_STATE: dict[str, Any] = {}


def _init(job: RenderJob, plan: Plan) -> None:
    _STATE["job"] = job
    _STATE["plan"] = plan
    queries: dict[int, list[QueryItem]] = {}
    for q in plan.queries:
        queries.setdefault(q.sku, []).append(q)
    _STATE["queries"] = queries
    _packshot.cache_clear()


def catalog_path(out: Path, sku_id: str) -> Path:
    return out / "catalog" / f"{sku_id}.jpg"


def train_path(out: Path, sku_id: str, k: int) -> Path:
    return out / "train" / f"{sku_id}_{k:03d}.jpg"


def query_path(out: Path, pos: int) -> Path:
    return out / "queries" / f"q{pos:05d}.jpg"


@lru_cache(maxsize=128)
def _packshot(i: int) -> Image.Image:
    job: RenderJob = _STATE["job"]
    path = job.scratch / f"{i}.png"
    if path.is_file():
        with Image.open(path) as im:
            return im.convert("RGBA")
    return render_packshot(_STATE["plan"].specs[i], job.master)


def render_sku(i: int) -> None:
    """Draw SKU ``i``'s packshot once, keep it, write its catalog and train images."""
    job: RenderJob = _STATE["job"]
    plan: Plan = _STATE["plan"]
    spec = plan.specs[i]
    pack = _packshot(i)
    pack.save(job.scratch / f"{i}.png", compress_level=1)
    if "catalog" in job.splits:
        catalog_image(pack, job.size).save(
            catalog_path(job.out, spec.sku_id), "JPEG", quality=CATALOG_JPEG_QUALITY
        )
    if "train" in job.splits:
        for k in range(int(plan.counts[i])):
            jpeg, _ = train_view(pack, job.size, rng_for(job.seed, S_TRAIN, i, k))
            train_path(job.out, spec.sku_id, k).write_bytes(jpeg)


def render_queries(i: int) -> list[dict[str, Any]]:
    """Write SKU ``i``'s query photos; return their labels."""
    job: RenderJob = _STATE["job"]
    results = []
    for q in _STATE["queries"].get(i, []):
        others = [_packshot(j) for j in q.distractors]
        rng = rng_for(job.seed, S_QUERY, i, q.k)
        shot = render_query(_packshot(i), others, job.query_size, rng)
        query_path(job.out, q.pos).write_bytes(shot.jpeg)
        results.append(
            {
                "pos": q.pos,
                "box": list(shot.box),
                "distractor_boxes": [list(b) for b in shot.distractor_boxes],
                "scene": shot.scene,
                "area_frac": shot.area_frac,
            }
        )
    return results


@contextmanager
def workers(job: RenderJob, plan: Plan, jobs: int) -> Iterator[Mapper]:
    """An ordered ``map`` over SKU indices, in this process (``jobs`` = 1) or a pool."""
    if jobs <= 1 or len(plan.specs) < 2:
        _init(job, plan)
        try:
            yield lambda fn, items: map(fn, items)
        finally:  # do not keep the plan and the packshots alive after the run
            _STATE.clear()
            _packshot.cache_clear()
        return
    ctx = mp.get_context("spawn")  # safe in threaded parents (pytest, torch); start-up is small
    with ctx.Pool(jobs, initializer=_init, initargs=(job, plan)) as pool:
        yield lambda fn, items: pool.imap(fn, items, chunksize=1)
