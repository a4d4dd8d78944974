"""Training targets and losses of the localizer (CenterNet / TTFNet style).

Targets, per image, on the ``(S/stride)²`` grid:

* ``heat``: for each box an elliptical Gaussian at its centre, ``σ = alpha · (w, h) / 6``
  (TTFNet's α = 0.54), exactly 1 at the cell holding the centre; the max over boxes.
* ``box`` (4, h, w): the box (input pixels) assigned to each cell: the box whose Gaussian is
  highest there; ``weight`` (h, w): that Gaussian value where the cell centre lies inside the
  box, else 0. Cells near a centre regress the box (GIoU), weighted by how central they are.

Losses: the penalty-reduced focal loss of CenterNet on the heatmap (normalised by the number of
boxes) and the GIoU loss of the decoded boxes, weighted by ``weight``.
"""

from __future__ import annotations

import numpy as np
import torch

GAUSS_ALPHA = 0.54


def make_targets(
    boxes: np.ndarray, input_size: int, stride: int, alpha: float = GAUSS_ALPHA
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes ``(K, 4)`` in input pixels → ``heat (1,h,w)``, ``box (4,h,w)``, ``weight (h,w)``."""
    g = input_size // stride
    heat = np.zeros((g, g), np.float32)
    box_t = np.zeros((4, g, g), np.float32)
    weight = np.zeros((g, g), np.float32)
    centres = (np.arange(g, dtype=np.float32) + 0.5) * stride
    b = np.clip(np.asarray(boxes, np.float32).reshape(-1, 4), 0, input_size)
    # small boxes last, so where Gaussians tie the smaller box wins the cell
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    for x0, y0, x1, y1 in b[np.argsort(-areas, kind="stable")]:
        w, h = x1 - x0, y1 - y0
        if w < 1 or h < 1:
            continue
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        sx, sy = max(alpha * w / 6, 1e-3), max(alpha * h / 6, 1e-3)
        gx = np.exp(-((centres - cx) ** 2) / (2 * sx * sx))
        gy = np.exp(-((centres - cy) ** 2) / (2 * sy * sy))
        gauss = gy[:, None] * gx[None, :]
        ci, cj = min(int(cy // stride), g - 1), min(int(cx // stride), g - 1)
        gauss[ci, cj] = 1.0
        inside = ((centres[None, :] >= x0) & (centres[None, :] <= x1)
                  & (centres[:, None] >= y0) & (centres[:, None] <= y1))
        inside[ci, cj] = True
        take = (gauss >= heat) & inside
        heat = np.maximum(heat, gauss)
        box_t[:, take] = np.array([x0, y0, x1, y1], np.float32)[:, None]
        weight[take] = gauss[take]
    return heat[None], box_t, weight


def focal_loss(logits: torch.Tensor, target: torch.Tensor, a: float = 2.0, b: float = 4.0):
    """CenterNet's penalty-reduced pixel-wise focal loss, summed over cells / #peaks."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1.0).float()
    neg = 1.0 - pos
    pos_loss = -torch.log(p) * (1 - p) ** a * pos
    neg_loss = -torch.log(1 - p) * p**a * (1 - target) ** b * neg
    n = pos.sum().clamp(min=1.0)
    return (pos_loss.sum() + neg_loss.sum()) / n


def decode_boxes(log_ltrb: torch.Tensor, stride: int) -> torch.Tensor:
    """(N,4,h,w) log-distances → (N,4,h,w) boxes x0,y0,x1,y1 in input pixels."""
    _, _, h, w = log_ltrb.shape
    ys = (torch.arange(h, dtype=log_ltrb.dtype, device=log_ltrb.device) + 0.5) * stride
    xs = (torch.arange(w, dtype=log_ltrb.dtype, device=log_ltrb.device) + 0.5) * stride
    d = torch.exp(log_ltrb) * stride
    cx, cy = xs.view(1, 1, w), ys.view(1, h, 1)
    return torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], dim=1)


def giou_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean of ``1 - GIoU`` over cells; boxes (N,4,h,w), weight (N,h,w)."""
    mask = weight > 0
    if not mask.any():
        return pred.sum() * 0.0
    p = pred.permute(0, 2, 3, 1)[mask]
    t = target.permute(0, 2, 3, 1)[mask]
    wgt = weight[mask]
    area_p = (p[:, 2] - p[:, 0]).clamp(min=0) * (p[:, 3] - p[:, 1]).clamp(min=0)
    area_t = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
    lt, rb = torch.maximum(p[:, :2], t[:, :2]), torch.minimum(p[:, 2:], t[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    union = area_p + area_t - inter
    iou = inter / union.clamp(min=1e-6)
    elt, erb = torch.minimum(p[:, :2], t[:, :2]), torch.maximum(p[:, 2:], t[:, 2:])
    enclose = (erb - elt).clamp(min=0).prod(dim=1).clamp(min=1e-6)
    giou = iou - (enclose - union) / enclose
    return ((1 - giou) * wgt).sum() / wgt.sum()


def localizer_loss(
    heat_logits: torch.Tensor,
    log_ltrb: torch.Tensor,
    heat_t: torch.Tensor,
    box_t: torch.Tensor,
    weight: torch.Tensor,
    stride: int,
    box_weight: float = 2.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    heat_l = focal_loss(heat_logits, heat_t)
    box_l = giou_loss(decode_boxes(log_ltrb, stride), box_t, weight)
    total = heat_l + box_weight * box_l
    return total, {"heat": float(heat_l.detach()), "giou": float(box_l.detach())}

