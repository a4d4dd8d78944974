"""Losses: the SICoT co-training objective and logit adjustment for the long tail.

- :func:`sicot_loss`: CE(W v, y) + λ·CE(W m, y) (+ w_cat·CE(category head, y_cat)), SICoT
  Eq. (1) with the relative weight λ as a hyper-parameter. Without ``mixed_logits`` in the
  model output (text_encoder=None) it is the visual-only baseline loss. The mixed term is
  averaged over the samples that have a title (``has_text``), so an image without side
  information trains the visual stream only.
- :func:`logit_adjusted_ce`: the logit-adjusted loss of Menon et al. (ICLR 2021),
  CE(f(x) + τ·log π, y); τ = 0 is plain cross-entropy.
- :func:`posthoc_adjust`: post-hoc logit adjustment f(x) − τ·log π (numpy or torch), what
  evaluation sweeps over τ on a plainly trained model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def log_prior_from_counts(counts: Sequence[float] | np.ndarray, min_count: float = 1.0) -> np.ndarray:
    """log π_y from training counts per class (float32). Counts are floored at ``min_count``
    so a class absent from training gets a finite, very small prior instead of log 0."""
    c = np.maximum(np.asarray(counts, dtype=np.float64), min_count)
    if c.ndim != 1 or c.size == 0:
        raise ValueError("counts must be a non-empty 1-D sequence")
    return np.log(c / c.sum()).astype(np.float32)


def _as_like(log_prior: np.ndarray | torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(log_prior, dtype=logits.dtype, device=logits.device)


def logit_adjusted_ce(
    logits: torch.Tensor,
    y: torch.Tensor,
    log_prior: np.ndarray | torch.Tensor | None = None,
    tau: float = 0.0,
    *,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """CE(logits + τ·log π, y). Training this way makes the argmax of the *unadjusted* logits
    approximately balanced-error optimal (Menon et al. 2021, Eq. 10)."""
    if tau != 0.0:
        if log_prior is None:
            raise ValueError("tau != 0 needs log_prior")
        lp = _as_like(log_prior, logits)
        if lp.shape[-1] != logits.shape[-1]:
            raise ValueError(f"log_prior has {lp.shape[-1]} classes, logits {logits.shape[-1]}")
        logits = logits + tau * lp
    return F.cross_entropy(logits, y, label_smoothing=label_smoothing, reduction=reduction)


def posthoc_adjust(logits: ArrayT, log_prior: np.ndarray | torch.Tensor, tau: float) -> ArrayT:
    """logits − τ·log π: rare classes gain, frequent ones lose (Menon et al. 2021, Eq. 4)."""
    if isinstance(logits, torch.Tensor):
        return logits - tau * _as_like(log_prior, logits)
    return logits - np.float32(tau) * np.asarray(log_prior, dtype=logits.dtype)


def with_margin(logits: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """``logits`` with ``margin`` subtracted at each row's true class (0: unchanged)."""
    if margin == 0.0:
        return logits
    return logits - margin * F.one_hot(y, logits.shape[-1]).to(logits.dtype)


def sicot_loss(
    out: dict[str, Any],
    y: torch.Tensor,
    y_cat: torch.Tensor | None = None,
    *,
    lam: float = 1.0,
    tau: float = 0.0,
    log_prior: np.ndarray | torch.Tensor | None = None,
    cat_weight: float = 0.5,
    label_smoothing: float = 0.0,
    margin: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts (floats: ``visual``, ``mixed``, ``category``, ``total``).

    ``out`` is :meth:`SICoTModel.forward`'s dict. ``y_cat`` entries of -1 (unknown category)
    are ignored; ``y_cat=None`` or ``cat_weight=0`` drops the category term. ``margin``
    (logit units) is subtracted from the true class's logit in both SKU terms: the additive
    margin of CosFace for a cosine head (γ·m), which pulls a class's images closer together
    than the margin demands of other classes."""
    visual = logit_adjusted_ce(with_margin(out["sku_logits"], y, margin), y, log_prior, tau,
                               label_smoothing=label_smoothing)
    total = visual
    parts = {"visual": float(visual.detach())}
    mixed_logits = out.get("mixed_logits")
    if mixed_logits is not None and lam != 0.0:
        per = logit_adjusted_ce(with_margin(mixed_logits, y, margin), y, log_prior, tau,
                                label_smoothing=label_smoothing, reduction="none")
        mixed = text_weighted_mean(per, out.get("has_text"))
        total = total + lam * mixed
        parts["mixed"] = float(mixed.detach())
    return add_category_term(total, parts, out, y_cat, cat_weight)


def text_weighted_mean(per: torch.Tensor, has_text: torch.Tensor | None) -> torch.Tensor:
    """Mean of the per-sample mixed term over the samples with a title (all without a mask)."""
    if has_text is None:
        return per.mean()
    w = has_text.to(per.dtype)
    return (per * w).sum() / w.sum().clamp_min(1.0)


def add_category_term(total: torch.Tensor, parts: dict[str, float], out: dict[str, Any],
                      y_cat: torch.Tensor | None, cat_weight: float
                      ) -> tuple[torch.Tensor, dict[str, float]]:
    """``total`` + cat_weight·CE(category head) (labels -1 ignored), and ``parts["total"]``."""
    if y_cat is not None and cat_weight != 0.0:
        cat = F.cross_entropy(out["category_logits"], y_cat, ignore_index=-1)
        if torch.isfinite(cat):  # NaN when every y_cat is -1
            total = total + cat_weight * cat
            parts["category"] = float(cat.detach())
    parts["total"] = float(total.detach())
    return total, parts
