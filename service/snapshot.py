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
from service.recognizer import IndexSnapshot
from service.store import SkuStore, VersionManifest
from service.vector_index import load_version_index

log = logging.getLogger(__name__)


class SnapshotError(RuntimeError):
    """A published version cannot be loaded (files missing, corrupt, or not what it claims)."""


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
        raise SnapshotError(f"index version {version} has no manifest in Redis")
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
    )


class IndexFollower:
    """Polls the current pointer; loads a newly published version and swaps it in.

    ``snapshot`` is replaced by one reference assignment, so a request that already took the
    old snapshot finishes with it (its Redis keys stay until ``gc``, which keeps K versions).
    """

    def __init__(
        self,
        store: SkuStore,
        index_dir: Path,
        *,
        checksums: bool = True,
        expected_model_version: str | None = None,
        on_change: Callable[[IndexSnapshot], None] | None = None,
    ) -> None:
        self.store = store
        self.index_dir = Path(index_dir)
        self.checksums = checksums
        self.expected_model_version = expected_model_version
        self.on_change = on_change
        self.snapshot: IndexSnapshot | None = None
        self.last_error: str | None = None
        self._failed: set[str] = set()
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Check the pointer once; returns True when a new version was loaded.  Raises only
        what reaching Redis raises (the caller decides how to report that)."""
        version = self.store.current_version()
        with self._lock:
            if version is None:
                self.last_error = "no index version has been published yet"
                return False
            if self.snapshot is not None and self.snapshot.version == version:
                return False
            if version in self._failed:
                return False
            try:
                snap = load_snapshot(self.store, self.index_dir, version, checksums=self.checksums)
                if self.expected_model_version and snap.model_version != self.expected_model_version:
                    # embeddings of two models live in different spaces: neighbours would be noise
                    raise SnapshotError(
                        f"index version {version} was built with model {snap.model_version}, "
                        f"the service runs {self.expected_model_version}"
                    )
            except SnapshotError as exc:
                self._failed.add(version)
                self.last_error = str(exc)
                log.error("index version %s not loaded, keeping %s: %s", version,
                          self.snapshot.version if self.snapshot else None, exc)
                return False
            old = self.snapshot
            self.snapshot = snap
            self.last_error = None
        log.info("serving index version %s (was %s)", version, old.version if old else None)
        if self.on_change is not None:
            self.on_change(snap)
        return True
