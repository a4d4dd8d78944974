"""Loading a published index version into an :class:`~service.recognizer.IndexSnapshot`, and
following the published pointer so the service switches versions without a restart.

A version's files live in ``<index_dir>/<version>/`` (the index builder's output folder, a
shared volume in deployment); they are checked against the version's manifest (size, and
sha256 unless disabled) before the snapshot replaces the old one.  A version that fails to load
is logged and skipped: the service keeps serving the one it has.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from service.artifact import sha256_file
from service.recognition import IndexSnapshot
from service.sku_table import SkuTable
from service.store import SkuStore, VersionManifest
from service.vector_index import load_version_index

log = logging.getLogger(__name__)


class SnapshotError(RuntimeError):
    """A published version cannot be loaded (files missing, corrupt, or not what it claims)."""


class ManifestMissing(SnapshotError):
    """The version's manifest is not in Redis (yet, or any more): worth trying again later."""


def version_folder(index_dir: Path, manifest: VersionManifest) -> Path:
    """``<index_dir>/<version>``, else the folder recorded at build time."""
    for folder in (Path(index_dir) / manifest.version, Path(manifest.index_dir)):
        if folder.is_dir():
            return folder
    raise SnapshotError(
        f"files of index version {manifest.version} not found in {index_dir} "
        f"(nor in {manifest.index_dir}); is the index volume mounted?"
    )


def verify_files(folder: Path, manifest: VersionManifest, *, checksums: bool = True) -> None:
    for name, entry in manifest.files.items():
        path = folder / name
        if not path.is_file():
            raise SnapshotError(f"{path} is missing")
        if path.stat().st_size != entry.bytes:
            raise SnapshotError(f"{path} has {path.stat().st_size} bytes, manifest {entry.bytes}")
        if checksums and sha256_file(path) != entry.sha256:
            raise SnapshotError(f"{path} does not match its sha256 in the manifest")


def load_snapshot(
    store: SkuStore, index_dir: Path, version: str, *, checksums: bool = True
) -> IndexSnapshot:
    manifest = store.get_manifest(version)
    if manifest is None:
        raise ManifestMissing(f"index version {version} has no manifest in Redis")
    folder = version_folder(index_dir, manifest)
    verify_files(folder, manifest, checksums=checksums)
    try:
        index, rows = load_version_index(folder)
    except (OSError, ValueError, RuntimeError) as exc:
        raise SnapshotError(f"cannot load index version {version}: {exc}") from exc
    return IndexSnapshot(
        version=version,
        built_at=manifest.built_at,
        index=index,
        row_sku_ids=np.asarray(rows.sku_ids, dtype=object),
        row_categories=np.asarray(rows.categories, dtype=object),
        model_version=manifest.model_version,
        skus=SkuTable(rows.sku_ids, rows.labels, rows.images, rows.catalog),
        embeddings=index.embeddings,
    )


class IndexFollower:
    """Polls the current pointer; loads a newly published version and swaps it in.

    ``snapshot`` is replaced by one reference assignment, so a request that already took the
    old snapshot finishes with it (its Redis keys stay until ``gc``, which keeps K versions and
    every version a service marks as served).

    When the pointer or the served version's manifest is gone (Redis restarted empty, the
    version deleted) the snapshot is dropped: its SKU data cannot be trusted, and answering
    from it would give silent wrong answers.  The next published version is loaded as usual.
    """

    def __init__(
        self,
        store: SkuStore,
        index_dir: Path,
        *,
        checksums: bool = True,
        expected_model_version: str | None = None,
        on_change: Callable[[IndexSnapshot | None], None] | None = None,
        served_ttl_s: float | None = None,
    ) -> None:
        self.store = store
        self.index_dir = Path(index_dir)
        self.checksums = checksums
        self.expected_model_version = expected_model_version
        self.on_change = on_change
        self.served_ttl_s = served_ttl_s
        self.snapshot: IndexSnapshot | None = None
        self.published: str | None = None  # the pointer at the last refresh
        self.last_error: str | None = None
        self._failed: set[str] = set()
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Check the pointer once; returns True when the snapshot changed (a new version was
        loaded, or the served one dropped).  Raises only what reaching Redis raises (the
        caller decides how to report that)."""
        version = self.store.current_version()
        with self._lock:
            self.published = version
            old = self.snapshot
            if version is None:
                self._drop("no index version is published (the current pointer is absent)")
            elif old is None or old.version != version:
                self._load(version)
            snap = self.snapshot
            if snap is not None and snap is old and not self.store.has_manifest(snap.version):
                self._drop(f"index version {snap.version} is no longer in Redis")
                snap = None
        if snap is not None and self.served_ttl_s:
            self.store.mark_served(snap.version, self.served_ttl_s)
        if snap is old:
            return False
        log.info("serving index version %s (was %s)", snap.version if snap else None,
                 old.version if old else None)
        if self.on_change is not None:
            self.on_change(snap)
        return True

    @property
    def behind(self) -> str | None:
        """Why the served version is not the published one (a replica that could not load
        the new version keeps serving its previous one), or ``None`` when it is."""
        snap = self.snapshot
        if snap is None or self.published in (None, snap.version):
            return None
        return (f"serving {snap.version}; published version {self.published} not loaded: "
                f"{self.last_error or 'loading'}")

    def _drop(self, reason: str) -> None:
        if self.snapshot is not None:
            log.error("index version %s dropped: %s", self.snapshot.version, reason)
        self.snapshot = None
        self.last_error = reason

    def _load(self, version: str) -> None:
        if version in self._failed:
            return
        try:
            snap = load_snapshot(self.store, self.index_dir, version, checksums=self.checksums)
            if self.expected_model_version and snap.model_version != self.expected_model_version:
                # embeddings of two models live in different spaces: neighbours would be noise
                raise SnapshotError(
                    f"index version {version} was built with model {snap.model_version}, "
                    f"the service runs {self.expected_model_version}"
                )
        except SnapshotError as exc:
            if not isinstance(exc, ManifestMissing):  # a manifest may still come: retry it
                self._failed.add(version)
            self.last_error = str(exc)
            log.error("index version %s not loaded, keeping %s: %s", version,
                      self.snapshot.version if self.snapshot else None, exc)
            return
        self.snapshot = snap
        self.last_error = None
