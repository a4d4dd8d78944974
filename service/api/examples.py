"""Examples of the OpenAPI schema (the 200 answer of /recognize and a 422)."""

from __future__ import annotations

from typing import Any

CANDIDATE = {
    "sku_id": "FLORA-400", "score": 0.87, "source": "both", "title": "Flora Original 400 ml",
    "tags": ["brand=Flora", "size=400ml", "vegan"],
    "labels": ["brand=Flora", "size=400ml", "tag=vegan"], "category": "Spreads",
    "image": "gs://catalog/flora-400-front.jpg", "thumbnail_url": "/skus/FLORA-400/thumbnail",
    "matched_image": {"row": 412, "image": "gs://catalog/flora-400-side.jpg",
                      "similarity": 0.83},
}
CATEGORY = {"name": "Spreads", "model": 0.71, "search": 0.9, "fused": 0.84,
                     "top": [{"name": "Spreads", "model": 0.71, "search": 0.9, "fused": 0.84}],
                     "constrained_to": ["Spreads"]}
BOX = {"pixels": [112.0, 40.0, 260.0, 301.0], "normalized": [0.175, 0.083, 0.406, 0.627],
                "source": "localizer", "score": 0.91}
RESPONSE_EXAMPLE: dict[str, Any] = {
    "request_id": "7f9c2a6e1b3d4c5f", "status": "recognized", "sku": CANDIDATE,
    "candidates": [CANDIDATE], "category": CATEGORY, "box": BOX,
    "objects": [
        {"box": BOX, "score": 0.91, "category": CATEGORY,
         "sku": CANDIDATE, "candidates": [CANDIDATE],
         "fewer_than_top_k": True},
        {"box": {"pixels": [300.0, 60.0, 420.0, 290.0], "normalized": [0.469, 0.125, 0.656, 0.604],
                 "source": "localizer", "score": 0.64},
         "score": 0.64, "category": None, "sku": None, "candidates": [],
         "fewer_than_top_k": True},
    ],
    "fewer_than_top_k": True,
    "filter": {"expression": "brand=Flora AND size=400ml", "skus_passing": 3, "search_k": 640},
    "image_size": {"width": 640, "height": 480}, "model_version": "sicot-lite0-3f2a",
    "localizer_version": "localizer-9b1c", "index_version": "20240601T020000Z-1a2b3c4d",
    "index_built_at": "2024-06-01T02:00:00Z",
    "timings_ms": {"decode": 1.2, "localize": 3.3, "recognize": 6.0, "search": 0.2, "fuse": 0.6,
                   "metadata": 0.8, "total": 12.1},
    "retained": False,
}
INVALID_FILTER_EXAMPLE = {"error": {
    "code": "invalid_filter", "request_id": "7f9c2a6e1b3d4c5f", "position": 16,
    "message": "filter: expected key=value or '(', got 'AND' at position 16"}}
