"""Localization metrics, shared by the trainer's synthetic validation and the online
evaluation on query photos (whose manifests hold the true main-product box).

Per image: the service's main box (:func:`service.localize.select_main_box`; no detection →
the whole photo, as the service falls back) against the true main box → IoU; and recall: the
share of true boxes matched by any detection at IoU ≥ 0.5 (on the emoji/demo queries only the
main product's box is known, so recall there is the main product's; the demo catalog's query
manifests add ``distractor_boxes``, which count towards recall too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from service.artifact import Artifact
from service.catalog import CatalogItem
from service.imageio import load_image
from service.localize import (
    Detections,
    LocalizerConfig,
    box_iou,
    localize_image,
    select_main_box,
)

log = logging.getLogger(__name__)


@dataclass
class LocalizationReport:
    images: int
    main_iou_mean: float  # mean IoU of the main box with the true main box
    main_iou50: float  # share of images whose main box has IoU >= 0.5
    recall50: float  # share of true boxes matched by some detection at IoU >= 0.5
    no_detection: float  # share of images without any detection (whole photo used)
    detections_mean: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def score_image(
    dets: Detections, true_boxes: np.ndarray, image_size: tuple[int, int], cfg: LocalizerConfig
) -> tuple[float, int]:
    """(IoU of the main box with ``true_boxes[0]``, number of true boxes recalled at 0.5)."""
    true_boxes = np.asarray(true_boxes, np.float64).reshape(-1, 4)
    i = select_main_box(dets, image_size, size_power=cfg.size_power,
                        center_power=cfg.center_power)
    w, h = image_size
    main = dets.boxes[i] if i is not None else np.array([0, 0, w, h], np.float32)
    main_iou = float(box_iou(main[None], true_boxes[:1])[0, 0])
    if len(dets) == 0:
        return main_iou, 0
    ious = box_iou(true_boxes, dets.boxes)
    return main_iou, int((ious.max(axis=1) >= 0.5).sum())


def summarize(
    main_ious: Sequence[float], recalled: int, n_true: int, n_dets: Sequence[int]
) -> LocalizationReport:
    ious = np.asarray(main_ious, np.float64)
    dets = np.asarray(n_dets, np.float64)
    n = int(ious.size)
    return LocalizationReport(
        images=n,
        main_iou_mean=float(ious.mean()) if n else 0.0,
        main_iou50=float((ious >= 0.5).mean()) if n else 0.0,
        recall50=recalled / n_true if n_true else 0.0,
        no_detection=float((dets == 0).mean()) if n else 0.0,
        detections_mean=float(dets.mean()) if n else 0.0,
    )


def evaluate_images(
    artifact: Artifact,
    images: Sequence[Image.Image],
    true_boxes: Sequence[np.ndarray],
    cfg: LocalizerConfig | None = None,
) -> LocalizationReport:
    cfg = cfg or LocalizerConfig.from_model_cfg(artifact.config.model)
    ious, n_dets, recalled, n_true = [], [], 0, 0
    for img, boxes in zip(images, true_boxes, strict=True):
        dets = localize_image(artifact, img, cfg)
        iou, hit = score_image(dets, boxes, img.size, cfg)
        ious.append(iou)
        n_dets.append(len(dets))
        recalled += hit
        n_true += len(np.asarray(boxes).reshape(-1, 4))
    return summarize(ious, recalled, n_true, n_dets)


def evaluate_manifest(
    artifact: Artifact,
    items: Sequence[CatalogItem],
    cfg: LocalizerConfig | None = None,
) -> tuple[LocalizationReport, dict[str, float]]:
    """Metrics on the items that have a ``box`` (query photos), and the per-image latency of
    preprocessing + ONNX + post-processing (median / p90 ms, batch 1)."""
    cfg = cfg or LocalizerConfig.from_model_cfg(artifact.config.model)
    boxed = [it for it in items if it.box is not None]
    if not boxed:
        raise ValueError("no item with a box: localization needs query photos with true boxes")
    ious, n_dets, times, recalled, n_true = [], [], [], 0, 0
    for item in tqdm(boxed, desc="localize", unit="img"):
        img = load_image(item.image)
        t0 = time.perf_counter()
        dets = localize_image(artifact, img, cfg)
        times.append((time.perf_counter() - t0) * 1000)
        true = true_boxes(item)
        iou, hit = score_image(dets, true, img.size, cfg)
        ious.append(iou)
        n_dets.append(len(dets))
        recalled += hit
        n_true += len(true)
    latency = {"median_ms": float(np.median(times)), "p90_ms": float(np.percentile(times, 90))}
    return summarize(ious, recalled, n_true, n_dets), latency


def true_boxes(item: CatalogItem) -> np.ndarray:
    """``(K, 4)``: the item's box first, then any ``distractor_boxes`` of its manifest row."""
    extra = item.extra.get("distractor_boxes") or []
    rows = [list(item.box or ())] + [list(b) for b in extra if len(b) == 4]
    return np.asarray(rows, np.float64).reshape(-1, 4)
