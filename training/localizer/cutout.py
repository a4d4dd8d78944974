"""Packshot → RGBA cutout: the product's alpha from background removal.

Catalog images show the product on white (packshots, emoji art) or on a plain colour. The
background colour is the median of the border pixels; background is every pixel within
``tol`` of it (max over channels) that is connected to the border, so white parts *inside*
the product (labels, eyes) stay opaque. The flood fill is an iterated 4-neighbour dilation
restricted to near-background pixels (pure numpy, a few ms for a 128 px image).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

from service.imageio import ImageError, load_image

log = logging.getLogger(__name__)


def border_connected(mask: np.ndarray, max_iter: int = 10_000) -> np.ndarray:
    """Pixels of ``mask`` connected (4-neighbourhood) to the image border through ``mask``."""
    reached = np.zeros_like(mask, dtype=bool)
    reached[0, :], reached[-1, :] = mask[0, :], mask[-1, :]
    reached[:, 0] |= mask[:, 0]
    reached[:, -1] |= mask[:, -1]
    for _ in range(max_iter):
        grown = reached.copy()
        grown[1:, :] |= reached[:-1, :]
        grown[:-1, :] |= reached[1:, :]
        grown[:, 1:] |= reached[:, :-1]
        grown[:, :-1] |= reached[:, 1:]
        grown &= mask
        if np.array_equal(grown, reached):
            break
        reached = grown
    return reached


def background_alpha(img: Image.Image, tol: int = 24, feather: float = 0.6) -> np.ndarray:
    """``(H, W)`` uint8 alpha: 0 on the border-connected plain background, 255 elsewhere."""
    arr = np.asarray(img.convert("RGB"), dtype=np.int16)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    bg = np.median(border, axis=0)
    near = np.abs(arr - bg).max(axis=2) <= tol
    alpha = np.where(border_connected(near), 0, 255).astype(np.uint8)
    if feather > 0:  # soften the JPEG-jagged edge a little
        soft = Image.fromarray(alpha).filter(ImageFilter.GaussianBlur(feather))
        alpha = np.minimum(alpha, np.asarray(soft))
    return alpha


def make_cutout(
    img: Image.Image, *, tol: int = 24, max_side: int = 160, min_fill: float = 0.02
) -> Image.Image | None:
    """RGBA cutout cropped to the product (``None`` when almost nothing is left). An image
    with no plain background becomes a fully opaque rectangle (a product photo fills it)."""
    rgb = img.convert("RGB")
    if max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    alpha = background_alpha(rgb, tol)
    if (alpha > 127).mean() < min_fill:
        return None
    ys, xs = np.nonzero(alpha > 127)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    out = rgb.copy()
    out.putalpha(Image.fromarray(alpha))
    return out.crop(box)


def load_cutouts(paths: Sequence[str], *, tol: int = 24, max_side: int = 160) -> list[Image.Image]:
    """Cutouts of the readable images among ``paths`` (unreadable or empty ones are logged)."""
    from tqdm import tqdm

    cutouts: list[Image.Image] = []
    skipped = 0
    for path in tqdm(paths, desc="cutouts", unit="img", disable=len(paths) < 200):
        try:
            cut = make_cutout(load_image(path), tol=tol, max_side=max_side)
        except ImageError as exc:
            log.warning("skipped %s: %s", path, exc)
            cut = None
        if cut is None:
            skipped += 1
            continue
        cutouts.append(cut)
    if skipped:
        log.warning("%d of %d source images gave no cutout", skipped, len(paths))
    if not cutouts:
        raise ValueError("no usable product cutout among the source images")
    return cutouts
