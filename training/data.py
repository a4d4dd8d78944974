"""Training data: label map, splits, datasets and loaders over :class:`CatalogItem`.

* **Label map**: classes are the manifest's sku_ids sorted as strings; a SKU's category is the
  most frequent category of its images (ties: alphabetical); categories are sorted names;
  ``train_counts`` counts the images actually trained on (after the held-out split).
* **Held-out split** ("training distribution"): for each class with at least ``min_images``
  images, ``per_class`` images are held out, chosen by a RNG seeded from (seed, sku_id) over
  the class's images sorted by path, so the split does not depend on manifest order.  Classes
  with fewer images are trained on fully (the rarest tail stays trainable; its held-out
  accuracy is therefore measured on classes with >= ``min_images`` images only).
* **Transforms**: the eval transform IS ``service.preprocess.preprocess``; the train
  transform is a random resized crop (+ optional mirror) on the PIL image, then the same
  ``preprocess``.  Batch-level photometric/style augmentation lives in ``training.augment``.
* Every random choice of a sample is drawn from a generator seeded by (seed, epoch, index),
  so data order and augmentation are identical for the baseline and SICoT, for any number of
  workers, and after a resume.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm

from service.artifact import LabelMap
from service.catalog import CatalogItem, read_catalog
from service.imageio import decode_image, read_image_bytes
from service.preprocess import PreprocessConfig, crop_box, preprocess
from service.settings import ImageLimits

log = logging.getLogger(__name__)
UNKNOWN_CATEGORY = "(none)"


def load_items(path: str | Path) -> list[CatalogItem]:
    """Read a manifest, skipping (and logging) bad rows."""
    result = read_catalog(path, on_error="skip")
    for err in result.errors[:20]:
        log.warning("skipped row: %s", err)
    if result.errors:
        log.warning("%s: %d bad rows skipped", path, len(result.errors))
    if not result.items:
        raise ValueError(f"{path}: no usable rows")
    return result.items


def split_heldout(
    items: Sequence[CatalogItem], per_class: int, min_images: int, seed: int
) -> tuple[list[CatalogItem], list[CatalogItem]]:
    """(train, heldout); see the module docstring for the rule."""
    if per_class < 0 or (per_class and per_class >= min_images):
        raise ValueError("need 0 <= per_class < min_images")
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_class[item.sku_id].append(i)
    held: set[int] = set()
    for sku, idx in by_class.items():
        if per_class == 0 or len(idx) < min_images:
            continue
        ordered = sorted(idx, key=lambda i: (items[i].image, items[i].source))
        rng = random.Random(f"{seed}:{sku}")
        held.update(rng.sample(ordered, per_class))
    train = [it for i, it in enumerate(items) if i not in held]
    heldout = [it for i, it in enumerate(items) if i in held]
    return train, heldout


def build_label_map(all_items: Sequence[CatalogItem], train_items: Sequence[CatalogItem]) -> LabelMap:
    """Classes from ``all_items``; per-class counts from ``train_items``."""
    cats: dict[str, Counter[str]] = defaultdict(Counter)
    for item in all_items:
        cats[item.sku_id][item.category or UNKNOWN_CATEGORY] += 1
    sku_ids = sorted(cats)
    sku_cat = {s: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for s, c in cats.items()}
    categories = sorted(set(sku_cat.values()))
    cat_index = {c: i for i, c in enumerate(categories)}
    counts = Counter(item.sku_id for item in train_items)
    return LabelMap(
        sku_ids=sku_ids,
        categories=categories,
        sku_category=[cat_index[sku_cat[s]] for s in sku_ids],
        train_counts=[counts.get(s, 0) for s in sku_ids],
    )


def known_items(items: Sequence[CatalogItem], labels: LabelMap) -> list[CatalogItem]:
    """Items whose SKU the label map knows (others cannot be scored; logged)."""
    index = labels.index_of()
    kept = [it for it in items if it.sku_id in index]
    if len(kept) < len(items):
        log.warning("%d items have SKUs unknown to the training set: ignored",
                    len(items) - len(kept))
    return kept


def item_text(item: CatalogItem, with_tags: bool = False) -> str:
    return " ".join([item.title, *item.tags]) if with_tags else item.title


class ImageSource:
    """Decodes catalog images with the serving rules (``service.imageio``).

    ``cache``: ``"none"`` reads the file each time; ``"bytes"`` keeps the encoded file in
    memory (small: JPEG bytes); ``"decoded"`` keeps the decoded RGB pixels (fastest, ~S²×3 bytes
    per image).  The pixels are identical in all three modes."""

    def __init__(self, limits: ImageLimits | None = None, cache: str = "bytes") -> None:
        if cache not in ("none", "bytes", "decoded"):
            raise ValueError(f"unknown cache mode {cache!r}")
        self.limits = limits or ImageLimits()
        self.cache = cache
        self._store: dict[str, bytes | np.ndarray] = {}

    def preload(self, items: Sequence[CatalogItem], desc: str = "reading images") -> None:
        if self.cache == "none":
            return
        todo = sorted({it.image for it in items} - set(self._store))
        for uri in tqdm(todo, desc=desc, disable=len(todo) < 500, leave=False):
            self.load(uri)

    def _read(self, uri: str) -> bytes:
        return read_image_bytes(uri, max_bytes=self.limits.max_bytes)

    def load(self, uri: str) -> Image.Image:
        hit = self._store.get(uri)
        if isinstance(hit, np.ndarray):
            return Image.fromarray(hit)
        data = hit if hit is not None else self._read(uri)
        if self.cache == "bytes":
            self._store[uri] = data
        img = decode_image(data, self.limits)
        if self.cache == "decoded":
            self._store[uri] = np.asarray(img)
        return img


def eval_transform(img: Image.Image, cfg: PreprocessConfig) -> torch.Tensor:
    """Exactly the serving transform (``service.preprocess.preprocess``), as a tensor."""
    return torch.from_numpy(preprocess(img, cfg))


class TrainTransform:
    """Random resized crop (area ``scale``, aspect ``ratio``) + optional mirror, then the
    shared ``preprocess`` (which letterboxes/resizes exactly as serving does)."""

    def __init__(
        self,
        cfg: PreprocessConfig,
        scale: tuple[float, float] = (0.35, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip_p: float = 0.0,
    ) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"bad crop scale {scale}")
        self.cfg, self.scale, self.ratio, self.hflip_p = cfg, scale, ratio, hflip_p

    def crop_params(self, w: int, h: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        area = w * h
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            r = math.exp(rng.uniform(*log_r))
            cw, ch = round(math.sqrt(target * r)), round(math.sqrt(target / r))
            if 0 < cw <= w and 0 < ch <= h:
                x0 = int(rng.integers(0, w - cw + 1))
                y0 = int(rng.integers(0, h - ch + 1))
                return x0, y0, x0 + cw, y0 + ch
        return 0, 0, w, h

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        img = img.crop(self.crop_params(*img.size, rng))
        if self.hflip_p and rng.random() < self.hflip_p:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(preprocess(img, self.cfg))


class EpochDataset(Dataset[dict[str, Any]]):
    """A training dataset whose random views are seeded by the epoch (``set_epoch``)."""

    def set_epoch(self, epoch: int) -> None:
        raise NotImplementedError


class SkuDataset(EpochDataset):
    """Items → dicts ``image`` (3,S,S), ``label``, ``category``, ``index`` and, when ``ids``
    are given (titles encoded by the vocabulary), ``ids`` / ``mask``."""

    def __init__(
        self,
        items: Sequence[CatalogItem],
        labels: LabelMap,
        source: ImageSource,
        preprocess_cfg: PreprocessConfig,
        *,
        train_transform: TrainTransform | None = None,
        crop_to_box: bool = True,
        crop_margin: float | None = None,
        ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        seed: int = 0,
    ) -> None:
        index = labels.index_of()
        missing = {it.sku_id for it in items} - set(index)
        if missing:
            raise ValueError(f"{len(missing)} SKUs are not in the label map, e.g. {sorted(missing)[:3]}")
        if ids is not None and (mask is None or len(ids) != len(items)):
            raise ValueError("ids and mask need one row per item")
        self.items = list(items)
        self.targets = torch.tensor([index[it.sku_id] for it in self.items], dtype=torch.long)
        self.categories = torch.tensor(labels.sku_category, dtype=torch.long)[self.targets]
        self.source, self.cfg = source, preprocess_cfg
        self.train_transform, self.crop_to_box = train_transform, crop_to_box
        # the artifact's crop rule unless a caller asks for another margin
        self.crop_margin = preprocess_cfg.crop_margin if crop_margin is None else crop_margin
        self.ids, self.mask, self.seed, self.epoch = ids, mask, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def load_image(self, i: int) -> Image.Image:
        item = self.items[i]
        img = self.source.load(item.image)
        if self.crop_to_box and item.box is not None:
            img = crop_box(img, item.box, self.crop_margin)
        return img

    def __getitem__(self, i: int) -> dict[str, Any]:
        img = self.load_image(i)
        if self.train_transform is None:
            tensor = eval_transform(img, self.cfg)
        else:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            tensor = self.train_transform(img, rng)
        out: dict[str, Any] = {"image": tensor, "label": self.targets[i],
                               "category": self.categories[i], "index": i}
        if self.ids is not None and self.mask is not None:
            out["ids"], out["mask"] = self.ids[i], self.mask[i]
        return out


class SkipSampler(Sampler[int]):
    """Wraps a sampler and drops its first ``skip`` indices (mid-epoch resume)."""

    def __init__(self, base: DistributedSampler[Any], skip: int = 0) -> None:
        self.base, self.skip = base, skip

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        it = iter(self.base)
        for _ in range(self.skip):
            next(it, None)
        return it

    def __len__(self) -> int:
        return max(0, len(self.base) - self.skip)


def train_sampler(dataset: EpochDataset, *, rank: int, world: int, seed: int) -> DistributedSampler[Any]:
    """A seeded shuffling sampler (DistributedSampler also for a single process)."""
    return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)


def train_loader(
    dataset: EpochDataset, sampler: DistributedSampler[Any], *, batch_size: int, epoch: int,
    skip_batches: int, workers: int, seed: int,
) -> DataLoader[dict[str, Any]]:
    """The loader of one epoch; drops the last partial batch (BatchNorm needs > 1 sample)."""
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    drop_last = len(sampler) >= batch_size
    return DataLoader(
        dataset, batch_size=batch_size, sampler=SkipSampler(sampler, skip_batches * batch_size),
        num_workers=workers, drop_last=drop_last, persistent_workers=False,
        # a private generator: creating the iterator must not consume the global torch RNG
        generator=torch.Generator().manual_seed(seed + epoch),
    )


def steps_per_epoch(n_samples_per_rank: int, batch_size: int) -> int:
    if n_samples_per_rank >= batch_size:
        return n_samples_per_rank // batch_size
    return 1 if n_samples_per_rank else 0


def eval_loader(dataset: SkuDataset, batch_size: int, workers: int) -> DataLoader[dict[str, Any]]:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      generator=torch.Generator().manual_seed(0))
