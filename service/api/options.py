"""What a /recognize request carries: the photo (multipart field or raw body), the option
fields, and their one validation (query parameters and form fields alike)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

from fastapi import Request
from starlette.datastructures import UploadFile

from service.api.errors import ApiError
from service.api.settings import ServiceSettings
from service.label_filter import FilterError, parse_filter
from service.recognition import RecognizeOptions

N = TypeVar("N", int, float)

ROI_MAX_CHARS = 256


def parse_roi(value: str | None) -> tuple[float, float, float, float] | None:
    """``x0,y0,x1,y1`` (or the flat JSON list ``[x0,y0,x1,y1]``) in pixels; anything else is
    422.  Parsed by splitting, never by a recursive parser: a hostile value is just text."""
    text = (value or "").strip()
    if not text:
        return None
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    parts = text.split(",") if len(text) <= ROI_MAX_CHARS else []
    try:
        if len(parts) != 4:
            raise ValueError
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError:
        raise ApiError("invalid_options", "roi must be 'x0,y0,x1,y1' in pixels") from None
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ApiError("invalid_options", "roi values must be finite numbers")
    if not (x1 > x0 and y1 > y0) or min(x0, y0) < 0:
        raise ApiError("invalid_options", "roi needs 0 <= x0 < x1 and 0 <= y0 < y1")
    return (x0, y0, x1, y1)


async def read_upload(request: Request, limit: int) -> tuple[bytes, dict[str, str]]:
    """The image from a multipart field ``image`` or a raw ``image/*`` body, plus any option
    fields sent in the form."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=16, max_part_size=limit)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise ApiError("missing_image", "multipart body needs a file field 'image'")
        data = await upload.read()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        await form.close()
        return data, fields
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return await request.body(), {}
    raise ApiError("unsupported_media_type",
                   "send the photo as multipart/form-data (field 'image') or as an image/* body")


def form_number(fields: dict[str, str], name: str, cast: Callable[[str], N]) -> N | None:
    """An option sent as a form field (``None`` when absent); not a number is 422."""
    if name not in fields:
        return None
    try:
        return cast(fields[name])
    except ValueError:
        raise ApiError("invalid_options", f"{name} must be a number") from None


def recognize_options(s: ServiceSettings, top_k: int | None, category: str | None,
                      roi: tuple[float, float, float, float] | None, min_score: float | None,
                      max_objects: int | None = None,
                      filter_text: str | None = None) -> RecognizeOptions:
    """The one validation of the options, whichever way they came."""
    top_k = s.default_top_k if top_k is None else top_k
    if not 1 <= top_k <= s.max_top_k:
        raise ApiError("invalid_options", f"top_k must be in [1, {s.max_top_k}]")
    min_score = s.default_min_score if min_score is None else min_score
    if not 0.0 <= min_score <= 1.0:
        raise ApiError("invalid_options", "min_score must be in [0, 1]")
    max_objects = 1 if max_objects is None else max_objects
    if not 1 <= max_objects <= s.max_objects:
        raise ApiError("invalid_options", f"max_objects must be in [1, {s.max_objects}]")
    try:
        node = parse_filter(filter_text) if filter_text else None
    except FilterError as exc:
        raise ApiError("invalid_filter", str(exc), position=exc.position) from None
    return RecognizeOptions(top_k=top_k, category=category or None, roi=roi, min_score=min_score,
                            max_objects=max_objects, filter=node,
                            filter_text=filter_text if node is not None else None)
