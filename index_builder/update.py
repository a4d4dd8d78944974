"""``update``: the current version ⊕ a delta manifest → a new version, re-embedding only what
the delta names.

Rows of SKUs the delta does not touch keep their embeddings (read from the base version's
``embeddings.npy``) and their Redis hashes (server-side ``COPY``, thumbnails included); the
delta's upserts are embedded and written; its deletes are left out.  The rows are ordered as a
full build orders them (by ``sku_id``), so ``update`` gives the same version a full build of
the updated catalog gives.  The base must have been built with the same model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from service.catalog import CatalogItem
from service.embed import embed_items
from service.store import StoreError
from service.vector_index import EMBEDDINGS_FILE, ROWS_FILE

from .build import ConfigError, DataError, Runner, VersionPlan, class_index, write_version
from .delta import read_delta
from .report import RunReport
from .rows import row_items, sku_records

log = logging.getLogger(__name__)


def base_folder(runner: Runner, version: str, recorded: str) -> Path:
    for folder in (runner.settings.index_dir / version, Path(recorded)):
        if (folder / ROWS_FILE).is_file():
            return folder
    raise ConfigError(f"files of base version {version} not found in "
                      f"{runner.settings.index_dir} (nor {recorded})")


def update(runner: Runner, delta_path: Path, *, version: str | None = None,
           force: bool = False, dry_run: bool = False, report: RunReport | None = None
           ) -> RunReport:
    """Apply the delta at ``delta_path`` to the current version and publish the result."""
    report = report or RunReport("update")
    s = runner.settings
    with report.stage("read"):
        delta = read_delta(delta_path)
    report.rows_read, report.bad = delta.rows_read, list(delta.bad)
    runner.after("read")
    store = runner.require_store()
    base = store.current_manifest()
    if base is None:
        raise StoreError("no current version to update: run `sku-index build` first")
    report.parent_version = base.version
    artifact = runner.artifact()
    if base.model_version != artifact.config.model_version:
        raise ConfigError(f"base version {base.version} was built with model "
                          f"{base.model_version}, the artifact is "
                          f"{artifact.config.model_version}: run a full build")
    folder = base_folder(runner, base.version, base.index_dir)
    base_rows = row_items(folder / ROWS_FILE)
    touched = delta.touched
    kept = [i for i, row in enumerate(base_rows) if row.sku_id not in touched]
    base_skus = {r.sku_id for r in base_rows}
    report.deleted_skus = sum(1 for sku in delta.deletes if sku in base_skus)
    unknown = [sku for sku in delta.deletes if sku not in base_skus]
    if unknown:
        report.notes.append(f"{len(unknown)} deletes name SKUs the base lacks, e.g. {unknown[:3]}")
    runner.check_bad(report)
    if dry_run:
        report.status = "dry-run"
        report.images = len(kept) + len(delta.upserts)
        return report
    merged = sorted([(base_rows[i], "base", i) for i in kept]
                    + [(row, "delta", j) for j, row in enumerate(delta.upserts)],
                    key=lambda t: t[0].sku_id)
    digest = runner.digest([m[0] for m in merged])
    if not force and runner.unchanged(report, digest):
        return report
    with report.stage("embed"):
        res = embed_items(delta.upserts, artifact, batch_size=s.batch_size,
                          limits=s.image_limits, workers=s.decode_workers,
                          thumb=runner.thumb_spec(), progress=runner.progress)
    report.bad += res.bad
    report.embedded, report.reused = len(res.ok), len(kept)
    runner.check_bad(report)
    runner.after("embed")
    items, emb = _assemble(merged, np.load(folder / EMBEDDINGS_FILE, mmap_mode="r"), res.ok,
                           res.embeddings)
    if not items:
        raise DataError("the update leaves no rows")
    new_rows = [delta.upserts[j] for j in res.ok]
    records = sku_records(new_rows, class_index(artifact), res.thumbs)
    copies = list(dict.fromkeys(base_rows[i].sku_id for i in kept))
    write_version(runner, report, VersionPlan(items, emb, records, digest, "update",
                                              base.version, copies, version))
    return report


def _assemble(merged: list[tuple[CatalogItem, str, int]], base_emb: np.ndarray,
              ok: list[int], new_emb: np.ndarray) -> tuple[list[CatalogItem], np.ndarray]:
    """Rows and embeddings of the new version in row order; delta rows that failed are out."""
    new_pos = {j: k for k, j in enumerate(ok)}
    items: list[CatalogItem] = []
    vectors: list[np.ndarray] = []
    for row, origin, idx in merged:
        if origin == "base":
            vectors.append(np.asarray(base_emb[idx], dtype=np.float32))
        elif idx in new_pos:
            vectors.append(new_emb[new_pos[idx]])
        else:
            continue
        items.append(row)
    dim = base_emb.shape[1]
    return items, (np.stack(vectors) if vectors else np.zeros((0, dim), np.float32))
