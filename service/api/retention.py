"""Opt-in query retention: what ``POST /recognize`` keeps for the learning loop, and whose."""

from __future__ import annotations

import logging

from fastapi import Request
from PIL import Image

from service.api.schemas import RecognizeResponse
from service.api.state import ServiceState
from service.feedback import ANONYMOUS, REQUEST_ID_RE, FeedbackLog, encode_jpeg, key_id
from service.preprocess import crop_rect
from service.recognition import Recognition

log = logging.getLogger(__name__)


def owner_of(request: Request, state: ServiceState) -> str:
    """The caller's key id (the key was already checked by ``require_api_key``)."""
    if not state.settings.api_keys:
        return ANONYMOUS
    return key_id(request.headers.get(state.settings.api_key_header))


def retain(state: ServiceState, request_id: str, owner: str, img: Image.Image, r: Recognition,
           resp: RecognizeResponse) -> bool:
    """Keep the recognised crop and the answer when the deployment opted in (never raises:
    a retention failure must not fail the recognition)."""
    s = state.settings
    if not s.retain_queries or state.redis_client is None or not REQUEST_ID_RE.match(request_id):
        return False
    try:
        # the pixels the recognizer saw: r.box is the crop it made (margin included)
        crop = encode_jpeg(img.crop(crop_rect(r.box, 0.0, img.size)), s.retain_crop_side)
        photo = encode_jpeg(img, s.retain_photo_side) if s.retain_full_photo else None
        answer = {"status": resp.status, "box": list(resp.box.pixels), "box_source": r.box_source,
                  "image_size": list(r.image_size), "model_version": resp.model_version,
                  "localizer_version": resp.localizer_version,
                  "index_version": resp.index_version,
                  "candidates": [{"sku_id": c.sku_id, "score": c.score, "source": c.source}
                                 for c in resp.candidates],
                  "shortlist": r.main.shortlist}
        kept = FeedbackLog(state.redis_client, s.key_prefix).retain(
            request_id, owner, crop, answer, s.retention_ttl_s, photo)
    except Exception as exc:  # noqa: BLE001 - Redis down or full: answer anyway
        log.warning("query %s not retained: %s", request_id, exc)
        state.metrics.retained.labels("error").inc()
        return False
    state.metrics.retained.labels("retained" if kept else "id_taken").inc()
    return kept
