"""A :class:`~service.recognizer.Recognition` → the public :class:`RecognizeResponse`, in the
pixels of the photo the client sent (a large photo is decoded reduced)."""

from __future__ import annotations

from service.api.schemas import (
    BoxUsed,
    Candidate,
    CategoryPrediction,
    CategoryScore,
    DetectedObject,
    FilterApplied,
    ImageSize,
    MatchedImage,
    RecognizeResponse,
)
from service.api.state import ServiceState
from service.preprocess import scale_box
from service.recognition import IndexSnapshot, ObjectRecognition, Recognition, ScoredCandidate

Box = tuple[float, float, float, float]


def candidate(c: ScoredCandidate) -> Candidate:
    meta = c.metadata
    match = c.match
    return Candidate(
        sku_id=c.sku_id, score=round(c.score, 6), source=c.source,
        title=meta.get("title", ""), tags=list(meta.get("tags") or []),
        labels=list(meta.get("labels") or []),
        category=meta.get("category", ""), image=meta.get("image", ""),
        thumbnail_url=f"/skus/{c.sku_id}/thumbnail" if meta.get("thumb") else None,
        matched_image=MatchedImage(row=match.row, image=match.image,
                                   similarity=round(match.similarity, 6)) if match else None,
    )


def category(o: ObjectRecognition, names: list[str]) -> CategoryPrediction | None:
    if not names:
        return None
    order = sorted(range(len(names)), key=lambda i: -o.category_fused[i])
    top = [CategoryScore(name=names[i], model=round(float(o.category_model[i]), 6),
                         search=round(float(o.category_vote[i]), 6),
                         fused=round(float(o.category_fused[i]), 6)) for i in order[:5]]
    return CategoryPrediction(**top[0].model_dump(), top=top, constrained_to=o.constrained_to)


def box_used(o: ObjectRecognition, size: tuple[int, int], scale: tuple[float, float]) -> BoxUsed:
    """``scale``: decoded pixels per pixel of the photo sent; the box is in the latter."""
    w, h = size
    x0, y0, x1, y1 = o.box
    p0, p1, p2, p3 = scale_box(o.box, (1 / scale[0], 1 / scale[1]))
    return BoxUsed(pixels=(round(p0, 3), round(p1, 3), round(p2, 3), round(p3, 3)),
                   normalized=(x0 / w, y0 / h, x1 / w, y1 / h),
                   source=o.box_source, score=o.box_score)


def detected_object(o: ObjectRecognition, r: Recognition, top_k: int,
                    scale: tuple[float, float]) -> DetectedObject:
    return DetectedObject(
        box=box_used(o, r.image_size, scale), score=o.box_score,
        category=category(o, r.category_names),
        sku=candidate(o.best) if o.best is not None else None,
        candidates=[candidate(c) for c in o.candidates],
        fewer_than_top_k=len(o.candidates) < top_k,
    )


def build_response(state: ServiceState, request_id: str, r: Recognition, snap: IndexSnapshot,
                   decode_ms: float, scale: tuple[float, float] = (1.0, 1.0), *,
                   top_k: int, filter_text: str | None = None) -> RecognizeResponse:
    sx, sy = scale
    w, h = r.image_size
    rec = state.recognizer
    timings = {"decode": round(decode_ms, 3), **{k: round(v, 3) for k, v in r.timings_ms.items()}}
    timings["total"] = round(timings["total"] + decode_ms, 3)
    objects = [detected_object(o, r, top_k, scale) for o in r.objects]
    main = objects[0]
    applied = None
    if r.filter is not None and filter_text is not None:
        applied = FilterApplied(expression=filter_text, skus_passing=r.filter.skus_passing,
                                search_k=r.filter.search_k)
    return RecognizeResponse(
        request_id=request_id,
        status="recognized" if main.sku is not None else "no_match",
        sku=main.sku, candidates=main.candidates, category=main.category, box=main.box,
        objects=objects, fewer_than_top_k=main.fewer_than_top_k, filter=applied,
        image_size=ImageSize(width=round(w / sx), height=round(h / sy)),
        model_version=rec.sicot.config.model_version if rec else "",
        localizer_version=rec.localizer.config.model_version if rec and rec.localizer else None,
        index_version=snap.version, index_built_at=snap.built_at, timings_ms=timings,
    )
