"""Frozen-trunk feature caching: train only the tail of a backbone on precomputed feature maps.

On 2 CPU cores a full EfficientNet-Lite0 trains at ~27-42 img/s; with the stem and the first K
blocks frozen (``SICoTConfig.freeze_blocks=K``) their output never changes for a given input
image, so it is computed ONCE per (image, augmented view) and stored as float16:

* :func:`trunk_forward` = stem + ``blocks[:K]``; :func:`tail_features` = ``blocks[K:]`` + head
  conv + pooling.  ``tail_features(trunk_forward(x)) == backbone.forward_features(x)`` (a test
  checks it), so the cached path is the served model, only cut in two.
* :class:`TrunkRunner` evaluates the trunk in torch or, much faster, ONNX Runtime (the trunk
  is exported once; ORT agrees with torch to ~1e-5).
* :class:`ViewBatches`: batches of view ``v`` of every image: view 0 is the evaluation
  transform (no augmentation), views >= 1 a random resized crop + the batch augmentation of
  :mod:`training.augment` (style breakers included), seeded by (seed, view, batch).  Feeding
  it through a ``DataLoader`` worker overlaps augmentation with the trunk.
* :func:`build_cache` → (N, V, C, H, W) float16; :func:`train_on_cache` trains the tail +
  projection + SICoT heads with :func:`training.losses.sicot_loss` (any variant, the cache is
  shared); :func:`predict_on_cache` scores the visual path as served.

:class:`CachedTail` runs :meth:`SICoTModel.forward` itself with ``encode_image`` starting
from the cached map, so baseline / SICoT / logit adjustment need no code of their own here.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from training.augment import BatchAugment, batch_seed, mix_style
from training.data import SkuDataset
from training.engine import build_optimizer, build_scheduler
from training.losses import sicot_loss
from training.models.sicot import SICoTModel
from training.settings import TrainConfig

log = logging.getLogger(__name__)


def _blocks(backbone: Any) -> list[nn.Module]:
    return list(backbone._block_list())


def trunk_forward(backbone: Any, k: int, x: torch.Tensor) -> torch.Tensor:
    """Stem (if any) + the first ``k`` blocks: the frozen part."""
    if hasattr(backbone, "forward_stem"):
        x = backbone.forward_stem(x)
    for block in _blocks(backbone)[:k]:
        x = block(x)
    return x


def tail_features(backbone: Any, k: int, fmap: torch.Tensor) -> torch.Tensor:
    """Blocks ``k:`` + the head conv (EfficientNet) + global average pooling → (N, C)."""
    x = fmap
    for block in _blocks(backbone)[k:]:
        x = block(x)
    if hasattr(backbone, "_conv_head"):  # EfficientNetLite.forward_features' head
        x = F.relu6(backbone._bn1(backbone._conv_head(x)))
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class Trunk(nn.Module):
    def __init__(self, backbone: Any, k: int) -> None:
        super().__init__()
        self.backbone, self.k = backbone, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return trunk_forward(self.backbone, self.k, x)


@contextlib.contextmanager
def _encode_from_cache(model: SICoTModel, k: int) -> Iterator[None]:
    def encode(fmap: torch.Tensor) -> torch.Tensor:
        return model.proj(model.dropout(tail_features(model.backbone, k, fmap)))

    model.encode_image = encode  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        del model.encode_image


class CachedTail(nn.Module):
    """``SICoTModel.forward`` with the image stream starting at the cached block-``k`` map."""

    def __init__(self, model: SICoTModel, k: int) -> None:
        super().__init__()
        if model.cfg.freeze_blocks != k:
            raise ValueError(f"model freezes {model.cfg.freeze_blocks} blocks, cache cut is {k}")
        self.model, self.k = model, k

    def forward(self, fmap: torch.Tensor, ids: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> dict[str, Any]:
        with _encode_from_cache(self.model, self.k):
            out: dict[str, Any] = self.model(fmap, ids, mask)
        return out


class TrunkRunner:
    """The frozen trunk as a function of a normalised batch; ``engine`` "ort" or "torch"."""

    def __init__(self, backbone: Any, k: int, input_size: int, engine: str = "ort",
                 threads: int = 1, onnx_path: Path | None = None) -> None:
        self.trunk = Trunk(backbone, k).eval()
        self.engine, self.calls, self.images = engine, 0, 0
        if engine == "ort":
            import onnxruntime as ort

            path = onnx_path or Path(f"/tmp/trunk-k{k}-{input_size}.onnx")
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(self.trunk, (torch.zeros(2, 3, input_size, input_size),),
                                  str(path), dynamo=False, opset_version=17, input_names=["x"],
                                  output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        elif engine != "torch":
            raise ValueError(f"unknown trunk engine {engine!r}")

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        self.calls += 1
        self.images += len(x)
        if self.engine == "ort":
            out: np.ndarray = self.session.run(None, {"x": x.numpy().astype(np.float32)})[0]
            return out
        with torch.no_grad():
            return self.trunk(x).numpy()

    def max_diff(self, x: torch.Tensor) -> float:
        """|runner − torch trunk| on ``x`` (checks the ONNX trunk)."""
        with torch.no_grad():
            ref = self.trunk(x).numpy()
        return float(np.abs(self(x) - ref).max())


class ViewBatches(Dataset[tuple[int, np.ndarray, torch.Tensor]]):
    """Item j = (view, item indices, image batch): view 0 from ``clean`` (no augmentation),
    views >= 1 from ``train`` (random resized crop seeded by (seed, view, i)) + ``augment``."""

    def __init__(self, clean: SkuDataset, train: SkuDataset | None, augment: BatchAugment | None,
                 views: int, batch_size: int, seed: int = 0) -> None:
        if views > 1 and (train is None or augment is None):
            raise ValueError("augmented views need a train dataset and an augmentation")
        self.clean, self.train, self.augment = clean, train, augment
        self.views, self.bs, self.seed = views, batch_size, seed
        self.per_view = math.ceil(len(clean) / batch_size)

    def __len__(self) -> int:
        return self.views * self.per_view

    def __getitem__(self, j: int) -> tuple[int, np.ndarray, torch.Tensor]:
        view, b = divmod(j, self.per_view)
        idx = np.arange(b * self.bs, min(len(self.clean), (b + 1) * self.bs))
        if view == 0:
            return view, idx, torch.stack([self.clean[int(i)]["image"] for i in idx])
        assert self.train is not None and self.augment is not None
        self.train.set_epoch(view)
        x = torch.stack([self.train[int(i)]["image"] for i in idx])
        return view, idx, self.augment(x, batch_seed(self.seed, view, b, 0))


def build_cache(batches: ViewBatches, runner: TrunkRunner, workers: int = 1,
                desc: str = "trunk cache") -> np.ndarray:
    """(N, V, C, H, W) float16 trunk maps of every view of every image."""
    out: np.ndarray | None = None
    loader = DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers)
    for view, idx, x in tqdm(loader, desc=desc, unit="batch", mininterval=10):
        y = runner(x)
        if out is None:
            out = np.zeros((len(batches.clean), batches.views, *y.shape[1:]), np.float16)
        out[np.asarray(idx), int(view)] = y.astype(np.float16)
    assert out is not None
    return out


@dataclass
class TrainResult:
    seconds: float = 0.0
    images: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


@dataclass
class CacheSource:
    """One body of cached training views: ``maps`` (N, V, C, H, W) float16 with a label, a
    category and (SICoT) title ids per item. ``per_epoch``: items drawn per epoch (None: each
    item once; more than N: with replacement), each with one random cached view."""

    maps: np.ndarray
    labels: torch.Tensor
    categories: torch.Tensor
    ids: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    per_epoch: int | None = None
    name: str = "train"

    def draw(self, g: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(items, views) of one epoch, from the epoch's generator."""
        n, views = self.maps.shape[:2]
        if self.per_epoch is None or self.per_epoch == n:
            order = g.permutation(n)
        elif self.per_epoch < n:
            order = g.permutation(n)[: self.per_epoch]
        else:
            order = np.concatenate([g.permutation(n) for _ in range(-(-self.per_epoch // n))])
            order = order[: self.per_epoch]
        return order, np.asarray(g.integers(0, views, size=len(order)))


@dataclass(frozen=True)
class TailRegularizers:
    """Regularisers of the cached-tail training: channel dropout and MixStyle on the cached
    maps, the additive (CosFace) margin of the SKU terms in logit units."""

    feature_dropout: float = 0.0
    mix_style_p: float = 0.0
    mix_style_alpha: float = 0.1
    margin: float = 0.0


def _batch_from(sources: list[CacheSource], picks: np.ndarray, text: bool) -> tuple[Any, ...]:
    """Maps, labels, categories, ids, mask of one batch; ``picks`` rows (source, item, view)."""
    maps, labels, cats, ids, mask = [], [], [], [], []
    for s_i, src in enumerate(sources):
        rows = picks[picks[:, 0] == s_i]
        if not len(rows):
            continue
        order = np.argsort(rows[:, 1], kind="stable")  # sorted reads of the cache
        items, views = rows[order, 1], rows[order, 2]
        maps.append(torch.from_numpy(src.maps[items, views].astype(np.float32)))
        t = torch.from_numpy(items)
        labels.append(src.labels[t])
        cats.append(src.categories[t])
        if text:
            if src.ids is not None and src.mask is not None:
                ids.append(src.ids[t])
                mask.append(src.mask[t])
            else:  # no titles here: the mixed term skips these (has_text False)
                width = next(s.ids.shape[1] for s in sources if s.ids is not None)
                ids.append(torch.zeros(len(t), width, dtype=torch.long))
                mask.append(torch.zeros(len(t), width, dtype=torch.bool))
    return (torch.cat(maps), torch.cat(labels), torch.cat(cats),
            torch.cat(ids) if text else None, torch.cat(mask) if text else None)


def train_on_sources(model: SICoTModel, sources: list[CacheSource], cfg: TrainConfig, *,
                     log_prior: torch.Tensor | None = None,
                     reg: TailRegularizers | None = None, desc: str = "train") -> TrainResult:
    """``cfg.epochs`` epochs over cached views of one or more sources (batches mix them),
    SGD + schedule from :mod:`training.engine`, loss :func:`sicot_loss` (λ, τ from ``cfg``).
    ``cfg.channels_last``: the tail runs channels-last (~1.5x faster depthwise convolutions
    on CPU); the model is returned in the default layout."""
    reg = reg or TailRegularizers()
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=layout)  # type: ignore[call-overload]
    k = model.cfg.freeze_blocks
    net = CachedTail(model, k)
    text = model.text is not None and any(s.ids is not None for s in sources)
    per_epoch = sum(s.per_epoch if s.per_epoch is not None else len(s.maps) for s in sources)
    spe = max(1, per_epoch // cfg.batch_size)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, spe)
    torch.manual_seed(cfg.seed)
    res = TrainResult()
    model.train()
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        g = np.random.default_rng((cfg.seed, epoch))
        parts_ = []
        for s_i, src in enumerate(sources):
            items, views = src.draw(g)
            parts_.append(np.stack([np.full(len(items), s_i), items, views], axis=1))
        picks = np.concatenate(parts_)
        if len(sources) > 1:
            picks = picks[g.permutation(len(picks))]
        sums: dict[str, float] = {}
        for s in tqdm(range(spe), desc=f"{desc} {epoch + 1}/{cfg.epochs}", mininterval=10):
            fmap, y, y_cat, ids, mask = _batch_from(
                sources, picks[s * cfg.batch_size:(s + 1) * cfg.batch_size], text)
            fmap = mix_style(fmap, reg.mix_style_p, reg.mix_style_alpha).contiguous(
                memory_format=layout)
            if reg.feature_dropout > 0:
                fmap = F.dropout2d(fmap, reg.feature_dropout, training=True)
            out = net(fmap, ids, mask)
            loss, parts = sicot_loss(out, y, y_cat, lam=cfg.lam, tau=cfg.tau,
                                     log_prior=log_prior, cat_weight=cfg.cat_weight,
                                     margin=reg.margin)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for key, v in parts.items():
                sums[key] = sums.get(key, 0.0) + v
            res.images += len(y)
        if not math.isfinite(sums.get("total", 0.0)):
            raise FloatingPointError(f"{desc}: loss is not finite in epoch {epoch + 1}")
        res.history.append({"epoch": epoch + 1, "lr": float(sched.get_last_lr()[0]),
                            **{key: v / spe for key, v in sums.items()}})
        log.info("%s epoch %d: %s", desc, epoch + 1, res.history[-1])
    res.seconds = time.perf_counter() - t0
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return res


def train_on_cache(model: SICoTModel, cache: np.ndarray, labels: torch.Tensor,
                   categories: torch.Tensor, cfg: TrainConfig, *,
                   ids: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                   log_prior: torch.Tensor | None = None, feature_dropout: float = 0.0,
                   desc: str = "train") -> TrainResult:
    """One source, each image once per epoch (a random cached view): :func:`train_on_sources`.
    ``feature_dropout``: channel dropout on the cached maps (regularisation)."""
    return train_on_sources(model, [CacheSource(cache, labels, categories, ids, mask)], cfg,
                            log_prior=log_prior, reg=TailRegularizers(feature_dropout), desc=desc)


@torch.no_grad()
def predict_on_cache(model: SICoTModel, maps: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Visual path (as served) on cached clean maps (M, C, H, W): sku / category logits, v."""
    net = CachedTail(model, model.cfg.freeze_blocks)
    was = model.training
    model.eval()
    outs: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(maps), batch_size):
        out = net(torch.from_numpy(maps[s:s + batch_size].astype(np.float32)))
        for key in ("sku_logits", "category_logits", "v"):
            outs.setdefault(key, []).append(out[key].numpy())
    model.train(was)
    return {key: np.concatenate(v) for key, v in outs.items()}


@torch.no_grad()
def pooled_features(backbone: Any, k: int, maps: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Frozen backbone features (N, C) from cached maps: ``tail_features`` in eval mode."""
    was = backbone.training
    backbone.eval()
    feats = [tail_features(backbone, k, torch.from_numpy(maps[s:s + batch_size].astype(np.float32)))
             for s in range(0, len(maps), batch_size)]
    backbone.train(was)
    return torch.cat(feats).numpy()
