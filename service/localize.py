"""Localization post-processing: raw detector maps → product boxes in image pixels.

Pure numpy, so the service and the evaluation run the same code. The localizer artifact
(``kind="localizer"``) is an anchor-free, CenterNet/FCOS-style detector with two outputs at one
stride (``model["stride"]``, a map of ``input_size / stride`` cells a side):

* ``heatmap`` ``(N, 1, H, W)``: objectness in [0, 1] (sigmoid applied in the graph), peaking at
  product centres;
* ``ltrb`` ``(N, 4, H, W)``: distances from the cell centre ``((j + .5) s, (i + .5) s)`` to the
  box's left, top, right and bottom edges, **in units of the stride** (kept small so the ONNX
  output matches torch to 1e-4 in absolute terms).

Public API::

    LocalizerConfig                         score_threshold, nms_iou, max_detections,
                                            pre_nms_top_n, main-box weights; from_model_cfg()
    postprocess(outputs, *, image_size, preprocess, model_cfg, score_threshold=None,
                nms_iou=None, max_detections=None) -> Detections   (one image)
    rank_detections(dets, image_size, cfg, limit=None) -> indices, the main product first
    select_main_box(dets, image_size, *, size_power, center_power) -> int | None
    input_to_image_boxes(boxes, image_size, preprocess)   letterbox/squash/crop → image pixels
    image_to_input_boxes(boxes, image_size, preprocess)   the inverse (training targets)
    nms(boxes, scores, iou_threshold) -> kept indices;  box_iou(a, b) -> (A, B) IoU matrix
    localize_image(artifact, img, cfg=None) -> Detections   preprocess + ONNX run + postprocess
    merge_flipped(outputs, stride, input_width)  a (photo, mirror) batch → one image's maps
    locate_products(artifact, img, cfg=None, limit=1) -> [(box, score)], the main one first
    main_box(artifact, img, cfg=None) -> box or None        the main product's box

The crop around a box (its margin and rounding) is not decided here but by the recognizer's
artifact: :func:`service.preprocess.crop_rect` with ``preprocess.crop_margin``.

Boxes are ``(x0, y0, x1, y1)`` float pixels, x1/y1 exclusive (the catalog convention).

**Main-box rule** (:func:`select_main_box`): the customer photographs the product they want, so
it tends to be confident, large and central. Each detection gets
``score × area_frac ** size_power × (1 - d) ** center_power``, where ``area_frac`` is the box
area over the image area and ``d`` the distance from the box centre to the image centre divided
by the half-diagonal (0 at the centre, 1 at a corner). The highest value wins; ties go to the
earlier detection (detections come sorted by score, so the more confident one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.preprocess import PreprocessConfig, preprocess

if TYPE_CHECKING:
    from PIL import Image

    from service.artifact import Artifact

HEATMAP_OUTPUT = "heatmap"
LTRB_OUTPUT = "ltrb"


# The main-box rule's weights (module docstring). Size 2.0 since accuracy-study.md, section 15
# (chosen on the dev and harsh selection sets with the L4 localizer: main box right on 90.6 %
# of their photos against 89.2 % at 0.5, mostly fewer wrong picks among distractors); an
# artifact stores the values it was exported with in model["postprocess"].
MAIN_BOX_SIZE_POWER = 2.0
MAIN_BOX_CENTER_POWER = 1.0
# Test-time flip of the localizer (accuracy-study.md, section 16): the photo and its mirror in
# one batch, their maps averaged (the mirror's flipped back, left and right distances swapped).
LOCALIZER_FLIP = False


class LocalizerConfig(BaseModel):
    """Decoding and main-box parameters; the artifact stores its defaults in
    ``model["postprocess"]``, the service may override them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    score_threshold: float = Field(0.25, ge=0.0, le=1.0, description="min objectness kept")
    nms_iou: float = Field(0.5, gt=0.0, le=1.0, description="IoU above which NMS suppresses")
    max_detections: int = Field(10, ge=1, le=1000)
    pre_nms_top_n: int = Field(100, ge=1, description="peaks kept before NMS")
    peak_kernel: int = Field(3, ge=1, description="local-maximum window (odd); 1 disables")
    size_power: float = Field(MAIN_BOX_SIZE_POWER, ge=0.0,
                              description="main-box rule: weight of box size")
    center_power: float = Field(MAIN_BOX_CENTER_POWER, ge=0.0,
                                description="main-box rule: weight of centrality")
    flip: bool = Field(LOCALIZER_FLIP, description="also run the mirrored photo and average "
                       "the two views' maps before decoding (one batch of 2)")

    @classmethod
    def from_model_cfg(cls, model_cfg: Mapping[str, Any], **overrides: Any) -> LocalizerConfig:
        """Defaults from an artifact's ``model["postprocess"]``, then ``overrides``."""
        values = dict(model_cfg.get("postprocess", {}))
        # localizer artifacts exported before the crop margin moved to the recognizer's
        # preprocess config (service.preprocess.crop_rect) still carry it here: unused
        values.pop("margin", None)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass(frozen=True)
class Detections:
    """Detections of one image, sorted by score (descending)."""

    boxes: np.ndarray  # (K, 4) float32, image pixels x0, y0, x1, y1
    scores: np.ndarray  # (K,) float32

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32))


def _as_boxes(boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
    return arr


def box_area(boxes: np.ndarray) -> np.ndarray:
    b = _as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(A, B)`` IoU matrix of two box sets; boxes without area have IoU 0 with everything."""
    a, b = _as_boxes(a), _as_boxes(b)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression → kept indices, by descending score; equal scores keep
    their input order (stable sort), so the result is deterministic."""
    b = _as_boxes(boxes)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if b.shape[0] != s.shape[0]:
        raise ValueError(f"{b.shape[0]} boxes but {s.shape[0]} scores")
    order = np.argsort(-s, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        ious = box_iou(b[i : i + 1], b[order[1:]])[0]
        order = order[1:][ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _letterbox_geometry(
    image_size: tuple[int, int], cfg: PreprocessConfig
) -> tuple[float, float, float, float]:
    """(scale_x, scale_y, offset_x, offset_y) with ``input = image * scale + offset``; the
    same rounding as :func:`service.preprocess.resize_to_input`."""
    w, h = image_size
    if w <= 0 or h <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    s = cfg.input_size
    if cfg.resize == "squash":
        return s / w, s / h, 0.0, 0.0
    if cfg.resize == "center_crop":
        scale = s / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        return nw / w, nh / h, -float((nw - s) // 2), -float((nh - s) // 2)
    scale = s / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    return nw / w, nh / h, float((s - nw) // 2), float((s - nh) // 2)


def input_to_image_boxes(
    boxes: np.ndarray, image_size: tuple[int, int], preprocess: PreprocessConfig
) -> np.ndarray:
    """Boxes in model-input pixels → original image pixels, clipped to the image."""
    b = _as_boxes(boxes)
    sx, sy, ox, oy = _letterbox_geometry(image_size, preprocess)
    out = np.empty_like(b)
    out[:, [0, 2]] = (b[:, [0, 2]] - ox) / sx
    out[:, [1, 3]] = (b[:, [1, 3]] - oy) / sy
    w, h = image_size
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, w)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, h)
    return out


def image_to_input_boxes(
    boxes: np.ndarray, image_size: tuple[int, int], preprocess: PreprocessConfig
) -> np.ndarray:
    """Boxes in image pixels → model-input pixels (not clipped; centre-crop may cut them)."""
    b = _as_boxes(boxes)
    sx, sy, ox, oy = _letterbox_geometry(image_size, preprocess)
    out = np.empty_like(b)
    out[:, [0, 2]] = b[:, [0, 2]] * sx + ox
    out[:, [1, 3]] = b[:, [1, 3]] * sy + oy
    return out


def _local_peaks(heat: np.ndarray, kernel: int) -> np.ndarray:
    """Mask of cells equal to the max of their ``kernel``×``kernel`` window (CenterNet)."""
    if kernel <= 1:
        return np.ones_like(heat, dtype=bool)
    r = kernel // 2
    padded = np.pad(heat, r, mode="constant", constant_values=-np.inf)
    h, w = heat.shape
    window_max = np.full_like(heat, -np.inf)
    for dy in range(kernel):
        for dx in range(kernel):
            window_max = np.maximum(window_max, padded[dy : dy + h, dx : dx + w])
    return heat >= window_max


def decode(
    heatmap: np.ndarray, ltrb: np.ndarray, stride: float, cfg: LocalizerConfig
) -> tuple[np.ndarray, np.ndarray]:
    """One image's maps (``(H, W)`` / ``(1, H, W)`` and ``(4, H, W)``) → candidate boxes in
    input pixels and their scores, before NMS (peaks above the threshold, best first)."""
    heat = np.asarray(heatmap, dtype=np.float32).reshape(heatmap.shape[-2:])
    reg = np.asarray(ltrb, dtype=np.float32)
    if reg.shape != (4, *heat.shape):
        raise ValueError(f"ltrb must be (4, *{heat.shape}), got {reg.shape}")
    mask = _local_peaks(heat, cfg.peak_kernel) & (heat >= cfg.score_threshold)
    ys, xs = np.nonzero(mask)
    scores = heat[ys, xs]
    order = np.argsort(-scores, kind="stable")[: cfg.pre_nms_top_n]
    ys, xs, scores = ys[order], xs[order], scores[order]
    cx, cy = (xs + 0.5) * stride, (ys + 0.5) * stride
    d = np.clip(reg[:, ys, xs], 0, None) * stride
    boxes = np.stack([cx - d[0], cy - d[1], cx + d[2], cy + d[3]], axis=1)
    return boxes.astype(np.float64), scores.astype(np.float32)


def merge_flipped(
    outputs: Mapping[str, np.ndarray], stride: float, input_width: int
) -> dict[str, np.ndarray]:
    """A batch of (image, its mirror)'s outputs → one image's outputs: the mirror's maps are
    flipped back (its left and right distances swapped) and averaged with the image's."""
    heat, reg = outputs[HEATMAP_OUTPUT], outputs[LTRB_OUTPUT]
    if heat.shape[0] != 2 or reg.shape[0] != 2:
        raise ValueError("merge_flipped takes a batch of (image, mirrored image)")
    if heat.shape[-1] * stride != input_width:
        raise ValueError(f"a {heat.shape[-1]}-cell map at stride {stride} does not tile "
                         f"{input_width} px: the mirror's cells would not line up")
    mirror_heat = heat[1][..., ::-1]
    mirror_reg = reg[1][[2, 1, 0, 3]][..., ::-1]  # its left is the image's right
    return {HEATMAP_OUTPUT: ((heat[0] + mirror_heat) / 2)[None],
            LTRB_OUTPUT: ((reg[0] + mirror_reg) / 2)[None]}


def postprocess(
    outputs: Mapping[str, np.ndarray],
    *,
    image_size: tuple[int, int],
    preprocess: PreprocessConfig,
    model_cfg: Mapping[str, Any],
    score_threshold: float | None = None,
    nms_iou: float | None = None,
    max_detections: int | None = None,
) -> Detections:
    """One image's ONNX outputs (batch of 1, or already indexed) → :class:`Detections` in the
    pixels of the original ``image_size`` = ``(width, height)``. Unset parameters come from
    ``model_cfg["postprocess"]``, then :class:`LocalizerConfig`'s defaults."""
    cfg = LocalizerConfig.from_model_cfg(
        model_cfg, score_threshold=score_threshold, nms_iou=nms_iou, max_detections=max_detections
    )
    heat, reg = outputs[HEATMAP_OUTPUT], outputs[LTRB_OUTPUT]
    if heat.ndim == 4:
        if heat.shape[0] != 1 or reg.shape[0] != 1:
            raise ValueError("postprocess takes one image; index the batch first")
        heat, reg = heat[0], reg[0]
    boxes, scores = decode(heat, reg, float(model_cfg["stride"]), cfg)
    s = preprocess.input_size
    boxes = np.clip(boxes, 0, s)
    boxes = input_to_image_boxes(boxes, image_size, preprocess)
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores = boxes[valid], scores[valid]
    keep = nms(boxes, scores, cfg.nms_iou)[: cfg.max_detections]
    return Detections(boxes[keep].astype(np.float32), scores[keep].astype(np.float32))


def main_box_values(
    dets: Detections,
    image_size: tuple[int, int],
    *,
    size_power: float = MAIN_BOX_SIZE_POWER,
    center_power: float = MAIN_BOX_CENTER_POWER,
) -> np.ndarray:
    """The main-box rule's value per detection (see the module docstring)."""
    if len(dets) == 0:
        return np.zeros((0,), np.float64)
    w, h = image_size
    b = dets.boxes.astype(np.float64)
    area_frac = np.clip(box_area(b) / float(w * h), 0.0, 1.0)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    d = np.hypot(cx - w / 2, cy - h / 2) / (np.hypot(w, h) / 2)
    centrality = np.clip(1.0 - d, 0.0, 1.0)
    return dets.scores.astype(np.float64) * area_frac**size_power * centrality**center_power


def rank_detections(
    dets: Detections, image_size: tuple[int, int], cfg: LocalizerConfig, limit: int | None = None,
) -> list[int]:
    """Indices of ``dets`` in the main-box rule's order (the main product first; ties keep the
    detector's order, by score), at most ``limit``."""
    values = main_box_values(dets, image_size, size_power=cfg.size_power,
                             center_power=cfg.center_power)
    order = np.argsort(-values, kind="stable")
    return [int(i) for i in order[:limit]]


def select_main_box(
    dets: Detections,
    image_size: tuple[int, int],
    *,
    size_power: float = MAIN_BOX_SIZE_POWER,
    center_power: float = MAIN_BOX_CENTER_POWER,
) -> int | None:
    """Index of the main product among ``dets`` (``None`` when there is none)."""
    values = main_box_values(
        dets, image_size, size_power=size_power, center_power=center_power
    )
    if values.size == 0:
        return None
    return int(np.argmax(values))  # first maximum: ties go to the higher-scored detection


def localize_image(
    artifact: Artifact, img: Image.Image, cfg: LocalizerConfig | None = None
) -> Detections:
    """Run a localizer artifact on one RGB image → detections in its pixels."""
    if artifact.config.kind != "localizer":
        raise ValueError(f"artifact {artifact.config.name} is a {artifact.config.kind!r} model")
    model_cfg = artifact.config.model
    cfg = cfg or LocalizerConfig.from_model_cfg(model_cfg)
    batch = preprocess(img, artifact.preprocess)[None]
    if cfg.flip:
        batch = np.concatenate([batch, batch[..., ::-1]])
    outputs = artifact.model.run(np.ascontiguousarray(batch))
    if cfg.flip:
        outputs = merge_flipped(outputs, float(model_cfg["stride"]), batch.shape[-1])
    return postprocess(
        outputs, image_size=img.size, preprocess=artifact.preprocess,
        model_cfg={**model_cfg, "postprocess": cfg.model_dump()},
    )


def locate_products(
    artifact: Artifact, img: Image.Image, cfg: LocalizerConfig | None = None, limit: int = 1,
) -> list[tuple[tuple[float, float, float, float], float]]:
    """Up to ``limit`` product boxes (pixels, no margin) with their scores, ordered by the
    main-box rule (:func:`rank_detections`): the main product first; ``[]`` when none."""
    cfg = cfg or LocalizerConfig.from_model_cfg(artifact.config.model)
    dets = localize_image(artifact, img, cfg)
    return [(_as_box(dets.boxes[i]), float(dets.scores[i]))
            for i in rank_detections(dets, img.size, cfg, limit)]


def main_box(
    artifact: Artifact, img: Image.Image, cfg: LocalizerConfig | None = None
) -> tuple[float, float, float, float] | None:
    """The main product's box (``None``: no product found, use the whole photo)."""
    found = locate_products(artifact, img, cfg, 1)
    return found[0][0] if found else None


def _as_box(b: np.ndarray) -> tuple[float, float, float, float]:
    return float(b[0]), float(b[1]), float(b[2]), float(b[3])
