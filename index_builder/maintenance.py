"""``gc`` and ``verify``: keeping Redis and the index folder down to what is published.

gc keeps the current version and the ``keep`` published versions after it in the history
(the ``rollback`` targets); everything else goes: older published versions, versions rolled
away from, and the debris of builds that died before publishing (registered in ``builds``, or
only present as keys or folders).  Keys are found with a SCAN over the SKU-key pattern on every
primary (a Redis Cluster spreads a version over all of them) and removed with UNLINK in batches
(non-blocking on the server); the control entries then go in one MULTI/EXEC (one slot: they
share the ``{P}`` hash tag).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from service.artifact import sha256_file
from service.label_filter import labels_of
from service.redis_cluster import scan_keys, unlink_keys
from service.store import VERSION_RE, SkuStore
from service.vector_index import ROWS_FILE, RowMap, VectorIndex

log = logging.getLogger(__name__)
TMP_PREFIX = ".tmp-"
VERSION_MARKER = "manifest.json"


@dataclass
class GcResult:
    kept: list[str]
    deleted_versions: list[str]
    deleted_keys: int = 0
    deleted_dirs: list[str] = field(default_factory=list)


def kept_versions(store: SkuStore, keep: int) -> list[str]:
    current = store.current_version()
    history = [v for v in store.history() if v != current]
    kept = ([current] if current else []) + history[:keep]
    # a running service may still serve an older version (it has not polled yet, or Redis was
    # re-published under it): never delete what a service reports as served
    return kept + [v for v in store.served_versions() if v not in kept]


def _batched(it: Iterable[bytes], n: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for x in it:
        batch.append(x)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def gc(store: SkuStore, index_dir: Path | None, keep: int, *, dry_run: bool = False,
       progress: bool = True, batch: int = 500) -> GcResult:
    """Delete every version except the current one, ``keep`` rollback targets and the
    versions running services report as served."""
    keys = store.keys
    kept = kept_versions(store, keep)
    keep_set = set(kept)
    known = {i.version for i in store.list_versions()}
    doomed: set[str] = set()
    deleted_keys = 0
    scan = scan_keys(store.client, keys.all_versions_pattern)
    bar = tqdm(desc="gc scan", unit="key", disable=None if progress else True)
    for chunk in _batched(scan, batch):
        bar.update(len(chunk))
        victims = []
        for key in chunk:
            version = keys.version_of_key(key)
            if version is not None and version not in keep_set:
                victims.append(key)
                doomed.add(version)
        if victims and not dry_run:
            unlink_keys(store.client, victims)
        deleted_keys += len(victims)
    bar.close()
    doomed |= known - keep_set
    if not dry_run and doomed:
        pipe = store.client.pipeline(transaction=True)
        for v in sorted(doomed):
            pipe.delete(keys.manifest(v))
            pipe.lrem(keys.history, 0, v)
            pipe.zrem(keys.builds, v)
        pipe.execute()
    dirs = _gc_dirs(index_dir, keep_set, dry_run) if index_dir is not None else []
    doomed |= {d for d in dirs if not d.startswith(TMP_PREFIX)}
    result = GcResult(kept, sorted(doomed), deleted_keys, dirs)
    log.info("gc%s: kept %s, deleted versions %s (%d keys, %d folders)",
             " (dry run)" if dry_run else "", kept, result.deleted_versions, deleted_keys, len(dirs))
    return result


def delete_version_keys(store: SkuStore, version: str, batch: int = 500) -> int:
    """UNLINK every SKU key of ``version`` (SCAN with the version's pattern, every primary)."""
    n = 0
    for chunk in _batched(scan_keys(store.client, store.keys.version_pattern(version)), batch):
        unlink_keys(store.client, chunk)
        n += len(chunk)
    return n


def _gc_dirs(index_dir: Path, keep: set[str], dry_run: bool) -> list[str]:
    """Version folders not kept, and unfinished ``.tmp-*`` folders of dead builds."""
    if not index_dir.is_dir():
        return []
    out = []
    for d in sorted(index_dir.iterdir()):
        if not d.is_dir():
            continue
        ours = d.name.startswith(TMP_PREFIX) or (
            VERSION_RE.match(d.name) and (d / VERSION_MARKER).is_file())
        if ours and d.name not in keep:
            out.append(d.name)
            if not dry_run:
                shutil.rmtree(d, ignore_errors=True)
    return out


@dataclass
class VerifyResult:
    version: str
    problems: list[str] = field(default_factory=list)
    checked_keys: int = 0
    checked_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(store: SkuStore, index_dir: Path, version: str | None = None, *,
           deep: bool = False, batch: int = 1000) -> VerifyResult:
    """Check a version (default: current) against its manifest: files (size, sha256), row
    count, index size, one SKU key per SKU and no other keys; ``deep`` also compares every
    hash's title/category/tags with the rows (else a sample of 1000)."""
    version = version or store.current_version()
    if version is None:
        return VerifyResult("", ["no current version"])
    res = VerifyResult(version)
    manifest = store.get_manifest(version)
    if manifest is None:
        res.problems.append(f"version {version} has no manifest (never published or gc'd)")
        return res
    folder = index_dir / version
    if not folder.is_dir():
        folder = Path(manifest.index_dir)
    for name, entry in manifest.files.items():
        path = folder / name
        res.checked_files += 1
        if not path.is_file():
            res.problems.append(f"file {path} is missing")
        elif path.stat().st_size != entry.bytes or sha256_file(path) != entry.sha256:
            res.problems.append(f"file {path} does not match the manifest (size or sha256)")
    if res.problems:
        return res
    rows = RowMap.read(folder / ROWS_FILE)
    index = VectorIndex.load(folder)
    if not len(rows) == index.ntotal == manifest.counts.get("images"):
        res.problems.append(f"{len(rows)} rows, {index.ntotal} vectors, manifest says "
                            f"{manifest.counts.get('images')} images")
    skus = list(dict.fromkeys(rows.sku_ids))
    if len(skus) != manifest.counts.get("skus"):
        res.problems.append(f"{len(skus)} SKUs in rows, manifest says {manifest.counts['skus']}")
    _check_keys(store, version, skus, res, batch)
    _check_hashes(store, version, folder, skus if deep else skus[:: max(1, len(skus) // 1000)],
                  res)
    return res


def _check_keys(store: SkuStore, version: str, skus: list[str], res: VerifyResult,
                batch: int) -> None:
    missing = []
    for start in range(0, len(skus), batch):
        part = skus[start:start + batch]
        pipe = store.client.pipeline(transaction=False)
        for s in part:
            pipe.exists(store.keys.sku(version, s))
        missing += [s for s, ok in zip(part, pipe.execute(), strict=True) if not ok]
    res.checked_keys = len(skus)
    if missing:
        res.problems.append(f"{len(missing)} SKU keys missing, e.g. {missing[:5]}")
    n_keys = sum(1 for _ in scan_keys(store.client, store.keys.version_pattern(version)))
    if n_keys != len(skus):
        res.problems.append(f"{n_keys} keys under {store.keys.version_pattern(version)}, "
                            f"expected {len(skus)}")


def _check_hashes(store: SkuStore, version: str, folder: Path, skus: list[str],
                  res: VerifyResult, batch: int = 1000) -> None:
    first: dict[str, dict[str, Any]] = {}
    with open(folder / ROWS_FILE, encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            first.setdefault(obj["sku_id"], obj)
    for start in range(0, len(skus), batch):
        part = skus[start:start + batch]
        for s, got in zip(part, store.get_skus(version, part), strict=True):
            row = first.get(s)
            if got is None or row is None:
                continue  # a missing key is reported by _check_keys
            row.setdefault("labels", sorted(labels_of(row.get("tags", []))))  # older rows
            for name in ("title", "category", "tags", "labels"):
                want = row.get(name, [] if name == "tags" else "")
                if got[name] != want:
                    res.problems.append(f"SKU {s}: {name} {got[name]!r} != rows.jsonl {want!r}")
