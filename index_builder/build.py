"""``build``: a full catalog → a new published version, in stages that can fail harmlessly.

    read → embed → index → files → redis → publish → gc

Nothing the service reads changes before ``publish``: files go to ``<index_dir>/.tmp-<v>/``
and are renamed to ``<index_dir>/<v>/`` when complete; SKU hashes go under the new version's
own keys; then one MULTI/EXEC makes ``v`` current with its manifest.  A run that dies before
leaves debris that ``gc`` (run after every publish) removes.  A run whose inputs hash to the
current version's ``content_digest`` does nothing (``--force`` rebuilds anyway).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from service.artifact import Artifact, ArtifactError, load_artifact
from service.catalog import CatalogItem
from service.embed import ThumbSpec, check_rows, embed_items
from service.feedback import FeedbackLog
from service.store import SkuRecord, SkuStore, VersionManifest, check_version, utc_now
from service.vector_index import ROWS_FILE, VectorIndex, exact_search, file_entries, recall_at_k
from service.vector_index import write_rows as write_row_file

from . import maintenance
from .feedback import accept_feedback, catalog_embeddings, collect_feedback
from .redis_writer import copy_skus, write_records
from .report import RunReport
from .rows import content_digest, read_rows, row_json, sku_records
from .settings import IndexBuilderSettings, Stage

log = logging.getLogger(__name__)
BAD_ROWS_FILE = "bad_rows.jsonl"


class BuildError(RuntimeError):
    exit_code = 1


class ConfigError(BuildError):
    exit_code = 2


class DataError(BuildError):
    exit_code = 3


class InjectedFailure(BuildError):
    """Raised after the stage named by ``SKU_INDEX_FAIL_AFTER`` (tests of atomicity)."""


@dataclass
class Runner:
    """What every command shares: settings, the store (None for a dry run), the artifact."""

    settings: IndexBuilderSettings
    store: SkuStore | None = None
    url: str | None = None
    progress: bool = True
    _artifact: Artifact | None = None

    def artifact(self) -> Artifact:
        if self._artifact is None:
            folder = self.settings.artifact_dir
            if folder is None:
                raise ConfigError("no model artifact: pass --artifact or set "
                                  "SKU_INDEX_ARTIFACT_DIR")
            try:
                self._artifact = load_artifact(folder, self.settings.onnx)
            except ArtifactError as exc:
                raise ConfigError(str(exc)) from exc
        return self._artifact

    def require_store(self) -> SkuStore:
        if self.store is None:
            raise ConfigError("this command needs Redis")
        return self.store

    def after(self, stage: Stage) -> None:
        if self.settings.fail_after != stage:
            return
        if self.settings.fail_how == "hang":
            log.warning("HANGING after stage '%s' until killed (SKU_INDEX_FAIL_HOW)", stage)
            for handler in logging.getLogger().handlers:
                handler.flush()
            while True:
                time.sleep(3600)
        raise InjectedFailure(f"injected failure after stage '{stage}' (SKU_INDEX_FAIL_AFTER)")

    def thumb_spec(self) -> ThumbSpec | None:
        s = self.settings
        return ThumbSpec(s.thumb_size, s.thumb_quality) if s.thumbnails else None

    def digest(self, items: list[CatalogItem], feedback: object = None) -> str:
        s = self.settings
        thumbs = [s.thumb_size, s.thumb_quality] if s.thumbnails else None
        extra = [feedback, s.feedback.model_dump(mode="json")] if feedback is not None else []
        return content_digest(items, self.artifact().config.model_version,
                              s.index.model_dump(mode="json"), thumbs, *extra)

    def feedback_log(self) -> FeedbackLog:
        return FeedbackLog(self.require_store().client, self.settings.key_prefix)

    def check_bad(self, report: RunReport) -> None:
        limit = self.settings.max_bad_fraction
        if report.bad_fraction() > limit:
            raise DataError(f"{len(report.bad)} of {report.rows_read} rows are bad "
                            f"({100 * report.bad_fraction():.1f}% > {100 * limit:.1f}%): "
                            "nothing written")

    def unchanged(self, report: RunReport, digest: str) -> bool:
        current = self.require_store().current_manifest()
        if current is not None and current.content_digest == digest:
            report.status, report.version = "unchanged", current.version
            report.skus, report.images = current.counts["skus"], current.counts["images"]
            report.notes.append(f"inputs identical to current version {current.version}; "
                                "nothing written (--force rebuilds)")
            return True
        return False


@dataclass
class VersionPlan:
    """Everything of a new version, ready to write."""

    items: list[CatalogItem]
    embeddings: np.ndarray
    records: list[SkuRecord]
    digest: str
    kind: Literal["build", "update"] = "build"
    parent: str | None = None
    copy_skus: list[str] = field(default_factory=list)
    version: str | None = None


def build(runner: Runner, catalog: Path, *, version: str | None = None, force: bool = False,
          dry_run: bool = False, report: RunReport | None = None,
          feedback: bool = False) -> RunReport:
    """Build ``catalog`` into a new version and publish it (see the module docstring).
    ``report`` is filled as the run goes, so a caller still has it when a stage raises.
    ``feedback``: add the accepted user feedback as extra reference rows (``feedback.py``)."""
    report = report or RunReport("build")
    s = runner.settings
    with report.stage("read"):
        prepared = read_rows(catalog)
    report.rows_read, report.bad = prepared.rows_read, list(prepared.bad)
    runner.after("read")
    if dry_run:
        with report.stage("check images"):
            report.bad += check_rows(prepared.items, s.image_limits, s.decode_workers,
                                     runner.progress)
        report.images = prepared.rows_read - len(report.bad)
        report.skus = len({i.sku_id for i in prepared.items})
        runner.check_bad(report)
        report.status = "dry-run"
        return report
    if not prepared.items:
        raise DataError(f"no usable rows in {catalog}")
    pending = None
    if feedback:
        with report.stage("feedback"):
            pending = collect_feedback(runner.feedback_log(), s.feedback, prepared.items)
    digest = runner.digest(prepared.items, pending.digest_part() if pending else None)
    if not force and runner.unchanged(report, digest):
        return report
    artifact = runner.artifact()
    with report.stage("embed"):
        res = embed_items(prepared.items, artifact, batch_size=s.batch_size,
                          limits=s.image_limits, workers=s.decode_workers,
                          thumb=runner.thumb_spec(), progress=runner.progress)
    report.bad += res.bad
    report.embedded = len(res.ok)
    runner.check_bad(report)
    if not res.ok:
        raise DataError("no catalog image could be embedded")
    items = [prepared.items[i] for i in res.ok]
    records = sku_records(items, class_index(artifact), res.thumbs)
    embeddings = res.embeddings
    if pending is not None:
        with report.stage("feedback"):
            fb = accept_feedback(pending, artifact, s.feedback,
                                 catalog_embeddings(items, embeddings), s.batch_size)
        report.feedback_rows = len(fb.items)
        report.notes.append(fb.summary())
        if fb.items:  # after the catalog rows: SKU records above come from the catalog alone
            items, embeddings = items + fb.items, np.concatenate([embeddings, fb.embeddings])
    runner.after("embed")
    write_version(runner, report, VersionPlan(items, embeddings, records, digest,
                                              version=version))
    return report


def class_index(artifact: Artifact) -> dict[str, int]:
    labels = artifact.config.labels
    return labels.index_of() if labels is not None else {}


def new_version_id(store: SkuStore, digest: str, index_dir: Path) -> str:
    """``<UTC time>-<digest prefix>``, with ``.N`` appended if that name was ever used."""
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + digest[:8]
    version, n = base, 1
    while (store.client.zscore(store.keys.builds, version) is not None
           or store.client.exists(store.keys.manifest(version))
           or (index_dir / version).exists()
           or (index_dir / f"{maintenance.TMP_PREFIX}{version}").exists()):
        n += 1
        version = f"{base}.{n}"
    return version


def measure_recall(index: VectorIndex, n: int, seed: int, k: int = 10) -> dict[str, float]:
    """recall@k of each search mode against exact search, ``n`` catalog rows as queries."""
    if n <= 0 or index.ntotal < 2:
        return {}
    rows = np.random.default_rng(seed).choice(index.ntotal, min(n, index.ntotal), replace=False)
    q = np.asarray(index.embeddings[np.sort(rows)], dtype=np.float32)
    _, truth = exact_search(index.embeddings, q, k)
    modes = ["float"] + (["binary"] if index.binary_index is not None else [])
    return {m: round(recall_at_k(index.search(q, k, mode=m)[1], truth, k), 4)  # type: ignore[arg-type]
            for m in modes}


def write_version(runner: Runner, report: RunReport, plan: VersionPlan) -> VersionManifest:
    """index → files → redis → publish → gc for a planned version."""
    s, store = runner.settings, runner.require_store()
    if plan.version:
        version = check_version(plan.version)
    else:
        version = new_version_id(store, plan.digest, s.index_dir)
    if plan.version and store.get_manifest(version) is not None:
        raise ConfigError(f"version {version} is already published; choose another name")
    report.version, report.parent_version = version, plan.parent
    report.images = len(plan.items)
    report.skus = len(plan.records) + len(plan.copy_skus)
    report.copied_skus = len(plan.copy_skus)
    with report.stage("index"):
        index = VectorIndex.build(plan.embeddings, s.index)
        report.recall = measure_recall(index, s.recall_queries, s.index.seed)
    runner.after("index")
    with report.stage("files"):
        manifest = write_files(runner, report, plan, version, index)
    runner.after("files")
    with report.stage("redis"):
        store.register_build(version)
        if plan.version:  # a name given twice: clear the debris of a dead run of that name
            maintenance.delete_version_keys(store, version)
        stats = write_records(store.client, runner.url or "", store.keys, version, plan.records,
                              method=s.write_method, redis_cli=s.redis_cli,
                              batch=s.pipeline_batch, progress=runner.progress)
        report.write_method = stats.method
        if plan.copy_skus and plan.parent:
            copy_skus(store.client, runner.url or "", store.keys, plan.parent, version,
                      plan.copy_skus, method=s.write_method, redis_cli=s.redis_cli,
                      batch=s.pipeline_batch)
    runner.after("redis")
    with report.stage("publish"):
        manifest = store.publish(manifest)
    report.status = "ok"
    log.info("published version %s (%d SKUs, %d images)", version, report.skus, report.images)
    runner.after("publish")
    if s.gc_after_publish:
        with report.stage("gc"):
            try:
                res = maintenance.gc(store, s.index_dir, s.keep_versions, progress=runner.progress)
                if res.deleted_versions:
                    report.notes.append(f"gc removed {len(res.deleted_versions)} old or "
                                        f"unfinished versions ({res.deleted_keys} keys)")
            except Exception as exc:  # noqa: BLE001 - the version is published; gc can wait
                log.warning("gc after publish failed (run `sku-index gc`): %s", exc)
                report.notes.append(f"gc failed: {exc}")
    return manifest


def write_files(runner: Runner, report: RunReport, plan: VersionPlan, version: str,
                index: VectorIndex) -> VersionManifest:
    """All files of the version in ``.tmp-<v>/``, checksummed, then renamed into place."""
    s = runner.settings
    artifact = runner.artifact()
    root = s.index_dir
    root.mkdir(parents=True, exist_ok=True)
    tmp, final = root / f"{maintenance.TMP_PREFIX}{version}", root / version
    shutil.rmtree(tmp, ignore_errors=True)
    names = index.save(tmp)
    write_row_file(tmp / ROWS_FILE, (row_json(i) for i in plan.items))
    write_row_file(tmp / BAD_ROWS_FILE, (b.to_json() for b in report.bad))
    names += [ROWS_FILE, BAD_ROWS_FILE]
    counts = {"skus": report.skus, "images": report.images, "rows_read": report.rows_read,
              "bad_rows": len(report.bad), "embedded": report.embedded,
              "reused": report.reused, "copied_skus": len(plan.copy_skus),
              "deleted_skus": report.deleted_skus, "feedback_rows": report.feedback_rows}
    manifest = VersionManifest(
        version=version, kind=plan.kind, parent_version=plan.parent, built_at=utc_now(),
        model_name=artifact.config.name, model_version=artifact.config.model_version,
        embed_dim=index.dim, content_digest=plan.digest, counts=counts,
        index=index.spec.model_dump(mode="json") | {"recall_at_10": report.recall},
        files=file_entries(tmp, names), index_dir=str(final.resolve()), key_prefix=s.key_prefix,
    )
    (tmp / maintenance.VERSION_MARKER).write_text(manifest.model_dump_json(indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return manifest
