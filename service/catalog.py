"""The catalog record and its readers: one definition for training, index building and evaluation.

Two input formats load into the same :class:`CatalogItem`:

* **JSONL manifests**, one object per line: ``image`` (path relative to the manifest's folder,
  or a URI), ``sku_id``, ``title``, ``tags`` (list of strings), ``category``, optional ``box``
  ``[x0, y0, x1, y1]`` in pixels (x1, y1 exclusive).  Unknown keys are kept in ``extra``.
  This is the format of the bundled demo catalog and of the materialized emoji-catalog
  (``train/``, ``catalog/`` and ``queries/manifest.jsonl`` load unchanged).
* **Google Cloud Vision Product Search bulk-import CSV** (no header, 8 columns):
  ``image-uri, image-id, product-set-id, product-id, product-category,
  product-display-name, labels, bounding-poly``; ``labels`` is ``k=v,k=v`` and becomes
  tags ``"k=v"``; ``bounding-poly`` is a list of vertex coordinates ``x,y,x,y,...``
  (absolute pixels, or normalised to [0, 1] when every value is ≤ 1) and becomes the
  enclosing box.

A bad row raises (``on_error="raise"``) or is skipped and reported (``on_error="skip"``) as a
:class:`RowError` naming file, line and field.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

OnError = Literal["raise", "skip"]
REQUIRED_FIELDS: tuple[str, ...] = ("image", "sku_id")
REMOTE_SCHEMES = ("http", "https", "gs", "s3")
GOOGLE_CSV_COLUMNS = (
    "image-uri",
    "image-id",
    "product-set-id",
    "product-id",
    "product-category",
    "product-display-name",
    "labels",
    "bounding-poly",
)


@dataclass(frozen=True, slots=True)
class CatalogItem:
    """One image of one SKU, with the SKU's side information.

    ``image`` is an absolute local path or a URI; readers resolve manifest-relative paths.
    ``box`` is ``(x0, y0, x1, y1)`` in pixels of ``image`` or ``None`` for "whole image".
    ``source`` is ``"file:line"`` so that later stages can still name the row.
    """

    image: str
    sku_id: str
    title: str = ""
    tags: tuple[str, ...] = ()
    category: str = ""
    box: tuple[float, float, float, float] | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        """The manifest object for this item (``image`` made relative to ``relative_to``)."""
        image = self.image
        if relative_to is not None and not is_remote(image):
            image = os.path.relpath(image, relative_to)
        out: dict[str, Any] = {
            "image": image,
            "sku_id": self.sku_id,
            "title": self.title,
            "tags": list(self.tags),
            "category": self.category,
        }
        if self.box is not None:
            out["box"] = [_plain_number(v) for v in self.box]
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


@dataclass(frozen=True, slots=True)
class RowError:
    """A rejected row: where it is and why."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: field '{self.field}': {self.message}"


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row left out of the version, and why (``reason`` is a short code for counting)."""

    source: str
    reason: str
    message: str
    sku_id: str = ""

    def to_json(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason, "message": self.message,
                "sku_id": self.sku_id}

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}: {self.message}"


class CatalogError(ValueError):
    """Raised for the first bad row when reading with ``on_error="raise"``."""

    def __init__(self, error: RowError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(slots=True)
class CatalogReadResult:
    items: list[CatalogItem]
    errors: list[RowError]

    def __iter__(self) -> Iterator[CatalogItem]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def is_remote(image: str) -> bool:
    return urlparse(image).scheme in REMOTE_SCHEMES


def _plain_number(v: float) -> float | int:
    return int(v) if float(v).is_integer() else float(v)


class _RowRejected(Exception):
    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message


def _resolve_image(value: Any, base: Path, check_images: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _RowRejected("image", "must be a non-empty string")
    value = value.strip()
    parsed = urlparse(value)
    if parsed.scheme in REMOTE_SCHEMES:
        return value
    if parsed.scheme == "file":
        path = Path(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:
        raise _RowRejected("image", f"unsupported URI scheme '{parsed.scheme}'")
    else:
        path = Path(value)
        if not path.is_absolute():
            path = Path(os.path.normpath(base / path))
    if check_images and not path.is_file():
        raise _RowRejected("image", f"image file not found: {path}")
    return str(path)


def _check_str(obj: dict[str, Any], name: str, required: bool) -> str:
    value = obj.get(name)
    if value is None:
        if required:
            raise _RowRejected(name, "missing")
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and name == "sku_id":
        value = str(value)
    if not isinstance(value, str):
        raise _RowRejected(name, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise _RowRejected(name, "is empty")
    return value.strip()


def _check_tags(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [t for t in value.split(",")]
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise _RowRejected("tags", "must be a list of strings")
    return tuple(t.strip() for t in value if t.strip())


def validate_box(value: Any) -> tuple[float, float, float, float] | None:
    """``[x0, y0, x1, y1]`` with finite numbers, x0 < x1, y0 < y1, none negative."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise _RowRejected("box", "must be a list of 4 numbers [x0, y0, x1, y1]")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise _RowRejected("box", "must hold numbers only")
    x0, y0, x1, y1 = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise _RowRejected("box", "must hold finite numbers")
    if min(x0, y0) < 0:
        raise _RowRejected("box", f"negative coordinate in {list(value)}")
    if not (x0 < x1 and y0 < y1):
        raise _RowRejected("box", f"needs x0 < x1 and y0 < y1, got {list(value)}")
    return (x0, y0, x1, y1)


def _collect(
    rows: Iterable[tuple[int, Any]],
    file: str,
    parse: Any,
    on_error: OnError,
) -> CatalogReadResult:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    items: list[CatalogItem] = []
    errors: list[RowError] = []
    for line_no, row in rows:
        try:
            items.append(parse(row, f"{file}:{line_no}"))
        except _RowRejected as exc:
            err = RowError(file, line_no, exc.field, exc.message)
            if on_error == "raise":
                raise CatalogError(err) from None
            errors.append(err)
    return CatalogReadResult(items, errors)


def read_jsonl(
    path: str | os.PathLike[str],
    *,
    on_error: OnError = "raise",
    check_images: bool = True,
    require: Sequence[str] = (),
) -> CatalogReadResult:
    """Read a JSONL manifest.  ``require`` adds fields beyond ``image`` and ``sku_id`` that must
    be present and non-empty (an index build requires ``title``, for instance)."""
    path = Path(path)
    base = path.parent.resolve()
    required = set(REQUIRED_FIELDS) | set(require)

    def rows() -> Iterator[tuple[int, Any]]:
        with path.open("r", encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if line.strip():
                    yield line_no, line

    def parse(line: str, source: str) -> CatalogItem:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _RowRejected("<json>", f"invalid JSON: {exc.msg} at column {exc.colno}") from None
        if not isinstance(obj, dict):
            raise _RowRejected("<json>", "each line must be a JSON object")
        return _item_from_mapping(obj, base, check_images, required, source)

    return _collect(rows(), str(path), parse, on_error)


def _item_from_mapping(
    obj: dict[str, Any], base: Path, check_images: bool, required: set[str], source: str
) -> CatalogItem:
    sku_id = _check_str(obj, "sku_id", True)
    title = _check_str(obj, "title", "title" in required)
    category = _check_str(obj, "category", "category" in required)
    tags = _check_tags(obj.get("tags"))
    if "tags" in required and not tags:
        raise _RowRejected("tags", "missing or empty")
    box = validate_box(obj.get("box"))
    image = _resolve_image(obj.get("image"), base, check_images)
    known = {"image", "sku_id", "title", "tags", "category", "box"}
    extra = {k: v for k, v in obj.items() if k not in known}
    return CatalogItem(image, sku_id, title, tags, category, box, source, extra)


def _parse_labels(value: str) -> tuple[str, ...]:
    tags = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise _RowRejected("labels", f"expected key=value, got '{part}'")
        k, v = (s.strip() for s in part.split("=", 1))
        if not k or not v:
            raise _RowRejected("labels", f"empty key or value in '{part}'")
        tags.append(f"{k}={v}")
    return tuple(tags)


def _parse_bounding_poly(value: str) -> tuple[tuple[float, float, float, float] | None, bool]:
    """Return (box, normalized).  Vertices ``x,y,x,y,...`` (at least 3 points)."""
    value = value.strip()
    if not value:
        return None, False
    try:
        nums = [float(v) for v in value.split(",")]
    except ValueError:
        raise _RowRejected("bounding-poly", f"not a list of numbers: '{value}'") from None
    if len(nums) < 6 or len(nums) % 2:
        raise _RowRejected("bounding-poly", "needs an even count of numbers, at least 3 vertices")
    xs, ys = nums[0::2], nums[1::2]
    normalized = all(0.0 <= v <= 1.0 for v in nums)
    box = validate_box([min(xs), min(ys), max(xs), max(ys)])
    return box, normalized


def read_google_csv(
    path: str | os.PathLike[str],
    *,
    on_error: OnError = "raise",
    check_images: bool = True,
) -> CatalogReadResult:
    """Read a Google Cloud Vision Product Search bulk-import CSV (no header row).

    A normalised bounding poly is kept as given in ``extra["box_normalized"]`` and ``box`` is
    left ``None`` unless the image size can be read locally (it is converted then)."""
    path = Path(path)
    base = path.parent.resolve()

    def rows() -> Iterator[tuple[int, Any]]:
        with path.open("r", encoding="utf-8", newline="") as fh:
            text = fh.read()
        for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            if row and any(c.strip() for c in row):
                yield line_no, row

    def parse(row: list[str], source: str) -> CatalogItem:
        if len(row) != len(GOOGLE_CSV_COLUMNS):
            raise _RowRejected("<row>", f"expected 8 columns, got {len(row)}")
        cols = dict(zip(GOOGLE_CSV_COLUMNS, (c.strip() for c in row), strict=True))
        for name in ("image-uri", "product-set-id", "product-id", "product-category"):
            if not cols[name]:
                raise _RowRejected(name, "missing")
        tags = _parse_labels(cols["labels"])
        box, normalized = _parse_bounding_poly(cols["bounding-poly"])
        try:
            image = _resolve_image(cols["image-uri"], base, check_images)
        except _RowRejected as exc:
            raise _RowRejected("image-uri", exc.message) from None
        extra: dict[str, Any] = {"product_set_id": cols["product-set-id"]}
        if cols["image-id"]:
            extra["image_id"] = cols["image-id"]
        if box is not None and normalized:
            extra["box_normalized"] = list(box)
            box = _denormalize_if_local(image, box)
        return CatalogItem(
            image=image,
            sku_id=cols["product-id"],
            title=cols["product-display-name"],
            tags=tags,
            category=cols["product-category"],
            box=box,
            source=source,
            extra=extra,
        )

    return _collect(rows(), str(path), parse, on_error)


def _denormalize_if_local(
    image: str, box: tuple[float, float, float, float]
) -> tuple[float, float, float, float] | None:
    if is_remote(image) or not os.path.isfile(image):
        return None
    from PIL import Image  # local import: only needed for this conversion

    with Image.open(image) as im:
        w, h = im.size
    return (box[0] * w, box[1] * h, box[2] * w, box[3] * h)


def read_catalog(
    path: str | os.PathLike[str],
    *,
    on_error: OnError = "raise",
    check_images: bool = True,
    require: Sequence[str] = (),
) -> CatalogReadResult:
    """Read a catalog in either format, chosen by the file's suffix (``.csv`` → Google CSV)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalog manifest not found: {path}")
    if path.suffix.lower() == ".csv":
        return read_google_csv(path, on_error=on_error, check_images=check_images)
    return read_jsonl(path, on_error=on_error, check_images=check_images, require=require)


def write_jsonl(items: Iterable[CatalogItem], path: str | os.PathLike[str]) -> int:
    """Write items as a JSONL manifest with image paths relative to its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item.to_json(path.parent.resolve()), ensure_ascii=False) + "\n")
            n += 1
    return n
