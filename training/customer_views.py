"""Customer-like training views of catalog images: what the recognizer sees online.

A shopper's photo shows the product small or large, rotated, in clutter, under uneven light,
blurred and JPEG-compressed; the online path then crops the localizer's box (with its error)
grown by the crop margin. A catalog packshot shows none of that. This module renders each
catalog image as such a crop:

1. the packshot's cutout (``training.localizer.cutout``) is the *main* product of a synthetic
   real-shot scene (``training.localizer.synth.render_scene``: procedural clutter, other
   products as distractors that may overlap it, shadow, perspective, lighting, blur, noise,
   JPEG), rendered at a random photo resolution;
2. its true box is disturbed like a localizer's (each edge moves by a Gaussian share of the
   box size; sometimes a grosser miss) and grown by the crop margin, then cropped
   (:func:`service.preprocess.crop_box`, the rule the service uses);
3. the crop is preprocessed with the artifact's :class:`PreprocessConfig`, exactly as served.

Only catalog-style images are used (the catalog's own packshots); evaluation photos never are.
:class:`CustomerViewDataset` is a drop-in for :class:`training.data.SkuDataset` (same item
dict), seeded by (seed, epoch, index) so a view is a pure function of those three numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset

from service.artifact import LabelMap
from service.catalog import CatalogItem
from service.preprocess import PreprocessConfig, crop_box, preprocess
from training.data import EpochDataset
from training.localizer.cutout import make_cutout
from training.localizer.synth import SceneConfig, render_scene

# Harsher than the localizer's scenes on purpose: smaller products, stronger blur, noise and
# JPEG than the evaluation photos, so the recognizer does not learn one photo profile.
RECOGNIZER_SCENE = SceneConfig(
    long_side=(128, 320), main_area=(0.03, 0.65), max_distractors=4,
    distractor_scale=(0.3, 0.9), max_overlap=0.35, max_cover=0.5, rotation_deg=25.0,
    perspective=0.12, shadow_p=0.5, blur_p=0.5, motion_blur_p=0.2, noise_sigma=(0.0, 14.0),
    jpeg_p=0.8,
)


@dataclass(frozen=True)
class CustomerViewConfig:
    scene: SceneConfig = field(default_factory=lambda: RECOGNIZER_SCENE)
    box_jitter: float = 0.08  # std of each box edge's shift, share of the box side
    miss_p: float = 0.1  # share of views whose box is off by more (a poor detection)
    miss_jitter: float = 0.25
    margin: float = 0.1  # the online path's crop margin


def jitter_box(box: np.ndarray, rng: np.random.Generator, cfg: CustomerViewConfig,
               size: tuple[int, int]) -> np.ndarray:
    """The true box as a localizer might return it, clipped to the image, never empty."""
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    s = cfg.miss_jitter if rng.random() < cfg.miss_p else cfg.box_jitter
    d = rng.normal(0.0, s, 4) * np.array([bw, bh, bw, bh])
    w, h = size
    nx0, ny0 = np.clip(x0 + d[0], 0, w - 2), np.clip(y0 + d[1], 0, h - 2)
    nx1, ny1 = np.clip(x1 + d[2], nx0 + 2, w), np.clip(y1 + d[3], ny0 + 2, h)
    return np.array([nx0, ny0, nx1, ny1], dtype=np.float64)


def customer_view(cutouts: list[Image.Image], main: int, rng: np.random.Generator,
                  cfg: CustomerViewConfig) -> Image.Image:
    """One crop of a synthetic photo whose main product is ``cutouts[main]``."""
    scene, boxes = render_scene(cutouts, rng, cfg.scene, main=main)
    box = jitter_box(boxes[0], rng, cfg, scene.size)
    return crop_box(scene, [float(v) for v in box], cfg.margin)


def load_cutouts_or_none(paths: list[str], source: Any) -> list[Image.Image | None]:
    """The packshot cutout of each image (``source.load``), ``None`` where background removal
    leaves nothing (that item then trains on its plain packshot)."""
    from tqdm import tqdm

    return [make_cutout(source.load(p)) for p in tqdm(paths, desc="cutouts", leave=False,
                                                        disable=len(paths) < 500)]


class EpochConcat(ConcatDataset[dict[str, Any]], EpochDataset):
    """``ConcatDataset`` that passes ``set_epoch`` on (the datasets seed views by epoch)."""

    def set_epoch(self, epoch: int) -> None:
        for ds in self.datasets:
            ds.set_epoch(epoch)  # type: ignore[attr-defined]


class CustomerViewDataset(EpochDataset):
    """Catalog items → customer-like views (item dict as :class:`training.data.SkuDataset`).

    ``cutouts[i]`` is the cutout of ``items[i]``; an item without a cutout (``None``) falls
    back to its packshot (it still trains, just without a scene). ``repeats``: views of each
    item per epoch (index ``j`` is item ``j % n``, view ``j // n``)."""

    def __init__(self, items: list[CatalogItem], cutouts: list[Image.Image | None],
                 labels: LabelMap, pcfg: PreprocessConfig, cfg: CustomerViewConfig | None = None,
                 *, seed: int = 0, ids: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None, repeats: int = 1) -> None:
        if len(items) != len(cutouts):
            raise ValueError("one cutout (or None) per item")
        if repeats < 1:
            raise ValueError("repeats must be >= 1")
        self.repeats = repeats
        index = labels.index_of()
        self.items, self.pcfg, self.cfg = items, pcfg, cfg or CustomerViewConfig()
        self.targets = torch.tensor([index[it.sku_id] for it in items], dtype=torch.long)
        self.categories = torch.tensor(labels.sku_category, dtype=torch.long)[self.targets]
        self.valid = [c for c in cutouts if c is not None]
        self.pos = {i: j for j, i in enumerate(i for i, c in enumerate(cutouts) if c is not None)}
        self.ids, self.mask, self.seed, self.epoch = ids, mask, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items) * self.repeats

    def __getitem__(self, index: int) -> dict[str, Any]:
        view, i = divmod(index, len(self.items))
        rng = np.random.default_rng((self.seed, self.epoch * self.repeats + view, i, 7))
        j = self.pos.get(i)
        if j is None:
            from service.imageio import load_image

            img = load_image(self.items[i].image)
        else:
            img = customer_view(self.valid, j, rng, self.cfg)
        out: dict[str, Any] = {"image": torch.from_numpy(preprocess(img, self.pcfg)),
                               "label": self.targets[i], "category": self.categories[i],
                               "index": i}
        if self.ids is not None and self.mask is not None:
            out["ids"], out["mask"] = self.ids[i], self.mask[i]
        return out
