"""Catalog rows → the rows of an index version: validation, bad-row reasons, SKU records.

Rules (the same for ``build`` and for the upserts of ``update``):

* a row the catalog reader rejects is bad (missing image file, bad box, invalid JSON, ...);
* the first row of a SKU defines its title, category and tags; a later row of the same SKU
  that disagrees on any of them is bad (``conflicting_duplicate``), one that repeats the same
  image and box is bad (``duplicate_row``); other rows are more images of the SKU;
* rows are ordered by ``sku_id`` (stable), so that the row order, and with it every file of a
  version, does not depend on the order of the catalog.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from service.catalog import BadRow, CatalogItem, RowError, is_remote, read_catalog, read_jsonl
from service.label_filter import labels_of
from service.store import SkuRecord


@dataclass
class PreparedRows:
    items: list[CatalogItem]
    bad: list[BadRow] = field(default_factory=list)
    rows_read: int = 0


def reason_of(err: RowError) -> str:
    name = err.field.replace("-uri", "").replace("product-id", "sku_id")
    if name == "image":
        return "missing_image" if "not found" in err.message else "bad_image_uri"
    if name in ("box", "bounding-poly"):
        return "bad_box"
    if name == "<json>":
        return "invalid_json"
    if err.message == "missing" or "empty" in err.message:
        return f"missing_{name.strip('<>')}"
    return f"bad_{name.strip('<>')}"


def bad_from_error(err: RowError) -> BadRow:
    return BadRow(f"{err.file}:{err.line}", reason_of(err), f"field '{err.field}': {err.message}")


def read_rows(path: str | os.PathLike[str]) -> PreparedRows:
    """Read a catalog (JSONL or Google CSV), keeping bad rows as :class:`BadRow`."""
    result = read_catalog(path, on_error="skip", check_images=True)
    bad = [bad_from_error(e) for e in result.errors]
    items, conflicts = drop_conflicts(result.items)
    return PreparedRows(sort_rows(items), bad + conflicts, len(result.items) + len(result.errors))


def _meta(item: CatalogItem) -> tuple[str, str, tuple[str, ...]]:
    return item.title, item.category, item.tags


def drop_conflicts(
    items: Iterable[CatalogItem], first: Mapping[str, CatalogItem] | None = None
) -> tuple[list[CatalogItem], list[BadRow]]:
    """Split rows into kept rows and duplicates (see the module docstring).  ``first`` gives
    already-known SKUs' defining rows."""
    defining: dict[str, CatalogItem] = dict(first or {})
    seen: set[tuple[str, str, Any]] = set()
    kept: list[CatalogItem] = []
    bad: list[BadRow] = []
    for item in items:
        ref = defining.setdefault(item.sku_id, item)
        if _meta(ref) != _meta(item):
            diff = [n for n, a, b in zip(("title", "category", "tags"), _meta(ref), _meta(item),
                                         strict=True) if a != b]
            msg = (f"sku_id {item.sku_id!r} repeats with a different {'/'.join(diff)} than "
                   f"{ref.source or 'its first row'} ({getattr(item, diff[0])!r} vs "
                   f"{getattr(ref, diff[0])!r})")
            bad.append(BadRow(item.source, "conflicting_duplicate", msg, item.sku_id))
            continue
        key = (item.sku_id, item.image, item.box)
        if key in seen:
            bad.append(BadRow(item.source, "duplicate_row",
                              f"sku_id {item.sku_id!r} lists {item.image} twice", item.sku_id))
            continue
        seen.add(key)
        kept.append(item)
    return kept, bad


def sort_rows(items: Iterable[CatalogItem]) -> list[CatalogItem]:
    return sorted(items, key=lambda it: it.sku_id)


def row_items(path: str | os.PathLike[str]) -> list[CatalogItem]:
    """The catalog items of a version's ``rows.jsonl`` (the inverse of :func:`row_json`: the
    derived ``labels`` are dropped, so a row read back equals the catalog row it came from)."""
    items = read_jsonl(path, check_images=False).items
    return [dataclasses.replace(i, extra={k: v for k, v in i.extra.items() if k != "labels"})
            for i in items]


def row_json(item: CatalogItem) -> dict[str, Any]:
    """A row of ``rows.jsonl``: the catalog object with an absolute image path and the SKU's
    ``labels`` (sorted ``key=value``, what a filter matches).  (Not the source line: the same
    row must give the same file whether it came from a full catalog or from a delta.)"""
    return {**item.to_json(), "labels": sorted(labels_of(item.tags))}


def sku_records(
    items: Sequence[CatalogItem],
    class_index: Mapping[str, int],
    thumbs: Mapping[str, bytes] | None = None,
) -> list[SkuRecord]:
    """One :class:`SkuRecord` per SKU of ``items`` (in row order; its first row defines it)."""
    images: dict[str, list[str]] = {}
    first: dict[str, CatalogItem] = {}
    for item in items:
        first.setdefault(item.sku_id, item)
        images.setdefault(item.sku_id, []).append(item.image)
    thumbs = thumbs or {}
    return [
        SkuRecord(
            sku_id=s, title=it.title, tags=it.tags, category=it.category,
            class_index=class_index.get(s, -1), image=images[s][0],
            images=tuple(dict.fromkeys(images[s])), thumb=thumbs.get(s),
        )
        for s, it in first.items()
    ]


def _file_stamp(image: str) -> list[int]:
    if is_remote(image):
        return []
    try:
        st = os.stat(image)
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def content_digest(items: Sequence[CatalogItem], *parts: Any) -> str:
    """Hash of what a version would contain: rows (with each local file's size and mtime),
    plus ``parts`` (model version, index spec, thumbnail settings).  Two runs with the same
    digest produce the same version, which is how a re-run is recognised and skipped."""
    h = hashlib.sha256()
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    for item in items:
        obj = item.to_json()
        obj["_stamp"] = _file_stamp(item.image)
        h.update(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()
