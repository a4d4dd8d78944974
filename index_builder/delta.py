"""The delta manifest of ``sku-index update``: upserts and deletes on top of the current version.

JSONL, one object per line, the catalog's own row format plus an optional ``op``:

* ``{"op": "upsert", "sku_id": ..., "image": ..., "title": ..., ...}`` (``op`` may be left out):
  a row of the SKU.  **Upserts replace a SKU whole**: all of its rows in the new version are
  the delta's rows (its metadata, and its images: list every image the SKU keeps).
* ``{"op": "delete", "sku_id": "A-123"}``: the SKU and all its images leave the new version.

A SKU both upserted and deleted in one delta is a bad row (the delete line); deleting a SKU
the base version does not have is noted and ignored.  A Google Product Search CSV is accepted
as a delta of upserts only (the format has no way to say "delete").
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from service.catalog import BadRow, CatalogItem, read_jsonl

from .rows import PreparedRows, bad_from_error, drop_conflicts, read_rows, sort_rows

OPS = ("upsert", "delete")


@dataclass
class Delta:
    upserts: list[CatalogItem]
    deletes: list[str]
    bad: list[BadRow] = field(default_factory=list)
    rows_read: int = 0

    @property
    def touched(self) -> set[str]:
        return {i.sku_id for i in self.upserts} | set(self.deletes)


def _line(item: CatalogItem) -> int:
    return int(item.source.rsplit(":", 1)[1])


def read_delta(path: str | os.PathLike[str]) -> Delta:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"delta manifest not found: {path}")
    if path.suffix.lower() == ".csv":
        rows: PreparedRows = read_rows(path)
        return Delta(rows.items, [], rows.bad, rows.rows_read)
    deletes: dict[int, str] = {}
    bad: list[BadRow] = []
    skip: set[int] = set()
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # read_jsonl reports it
            op = obj.get("op", "upsert") if isinstance(obj, dict) else "upsert"
            if op not in OPS:
                bad.append(BadRow(f"{path}:{n}", "bad_op", f"op must be one of {OPS}, got {op!r}"))
                skip.add(n)
            elif op == "delete":
                sku = obj.get("sku_id")
                if not isinstance(sku, (str, int)) or not str(sku).strip():
                    bad.append(BadRow(f"{path}:{n}", "missing_sku_id", "delete needs a sku_id"))
                else:
                    deletes[n] = str(sku).strip()
                skip.add(n)
    result = read_jsonl(path, on_error="skip", check_images=True)
    bad += [bad_from_error(e) for e in result.errors if e.line not in skip]
    items = [dataclasses.replace(i, extra={k: v for k, v in i.extra.items() if k != "op"})
             for i in result.items if _line(i) not in skip]
    items, conflicts = drop_conflicts(items)
    upserted = {i.sku_id for i in items}
    for n, sku in list(deletes.items()):
        if sku in upserted:
            bad.append(BadRow(f"{path}:{n}", "conflicting_ops",
                              f"sku_id {sku!r} is both upserted and deleted", sku))
            del deletes[n]
    n_rows = len(result.items) + len(result.errors)  # every non-empty line, deletes included
    return Delta(sort_rows(items), list(dict.fromkeys(deletes.values())), bad + conflicts, n_rows)
