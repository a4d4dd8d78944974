"""Building a run's parts from its :class:`TrainConfig`: data splits, title vocabulary and
word2vec vectors, the model, its preprocessing, and the datasets.

Kept apart from the loop (``training.train``) so tests and benchmarks can build the same
pieces without training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from service.artifact import LabelMap
from service.catalog import CatalogItem
from service.preprocess import PreprocessConfig
from training.augment import mix_style
from training.customer_views import (
    CustomerViewConfig,
    CustomerViewDataset,
    EpochConcat,
    load_cutouts_or_none,
)
from training.data import (
    EpochDataset,
    ImageSource,
    SkuDataset,
    TrainTransform,
    build_label_map,
    item_text,
    known_items,
    load_items,
    split_heldout,
)
from training.distributed import DistInfo, broadcast_object
from training.models import SICoTConfig, SICoTModel, Vocab, tokenize, train_word2vec
from training.models.sharded_head import Shard, ShardedClassifier
from training.settings import TrainConfig, split_source

log = logging.getLogger(__name__)


@dataclass
class Splits:
    train: list[CatalogItem]
    heldout: list[CatalogItem]
    queries: list[CatalogItem]
    labels: LabelMap
    catalog: list[CatalogItem] = field(default_factory=list)  # trained on as customer views


@dataclass
class TextData:
    vocab: Vocab
    ids: torch.Tensor
    mask: torch.Tensor
    vectors: np.ndarray | None


def prepare_splits(cfg: TrainConfig) -> Splits:
    """Training manifest → (train, held-out) + label map; query manifest filtered to known SKUs."""
    items = load_items(cfg.train_manifest)
    train, heldout = split_heldout(items, cfg.heldout_per_class, cfg.heldout_min_images, cfg.seed)
    labels = build_label_map(items, train)
    train = train + extra_sources(cfg, labels)
    queries = known_items(load_items(cfg.query_manifest), labels) if cfg.query_manifest else []
    catalog = (known_items(load_items(cfg.catalog_manifest), labels)
               if cfg.catalog_manifest and cfg.catalog_views_per_epoch else [])
    log.info("%d classes, %d categories: %d train, %d held-out, %d query, %d catalog images",
             labels.num_classes, len(labels.categories), len(train), len(heldout), len(queries),
             len(catalog))
    return Splits(train, heldout, queries, labels, catalog)


def weighted_repeat(items: list[CatalogItem], weight: float, seed: int) -> list[CatalogItem]:
    """Each item ``floor(weight)`` times, plus a seeded ``weight % 1`` share of them once more,
    so a source's share of an epoch follows its weight whatever the sampler."""
    whole, frac = divmod(weight, 1.0)
    out = items * int(whole)
    if frac > 0 and items:
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(items), int(round(frac * len(items))), replace=False)
        out += [items[i] for i in sorted(pick)]
    return out


def extra_sources(cfg: TrainConfig, labels: LabelMap) -> list[CatalogItem]:
    """The ``extra_train`` manifests (e.g. exported real-shot feedback pairs), weighted."""
    out: list[CatalogItem] = []
    for n, spec in enumerate(cfg.extra_train):
        path, weight = split_source(spec)
        items = known_items(load_items(path), labels)
        out += weighted_repeat(items, weight, cfg.seed + n)
        log.info("extra source %s: %d images x weight %g", path, len(items), weight)
    return out


def epoch_class_counts(cfg: TrainConfig, splits: Splits) -> np.ndarray:
    """Expected images per class in one epoch (training set + catalog views): the class prior
    that logit adjustment must use, since the catalog views flatten the long tail."""
    index = splits.labels.index_of()
    counts = np.zeros(splits.labels.num_classes, dtype=np.float64)
    for it in splits.train:  # the training manifest and the weighted extra sources
        counts[index[it.sku_id]] += 1
    for it in splits.catalog:
        counts[index[it.sku_id]] += cfg.catalog_views_per_epoch
    return counts


def prepare_text(cfg: TrainConfig, train: list[CatalogItem], info: DistInfo,
                 saved_vocab: dict[str, Any] | None = None) -> TextData | None:
    """Vocabulary (+ word2vec vectors) from the training titles; None for the baseline.

    Rank 0 builds them and broadcasts, so every rank holds the same vocabulary.  A resumed run
    passes ``saved_vocab`` and skips word2vec (the vectors are in the checkpoint's weights)."""
    if cfg.text_encoder is None:
        return None
    tokens = [tokenize(item_text(it, cfg.title_with_tags)) for it in train]
    vectors: np.ndarray | None = None
    if saved_vocab is not None:
        vocab = Vocab.from_dict(saved_vocab)
    else:
        payload = None
        if info.is_main:
            vocab = Vocab.build(tokens, min_count=cfg.vocab_min_count, max_df=cfg.vocab_max_df,
                                max_size=cfg.vocab_max_size)
            if cfg.word2vec_epochs > 0 and len(vocab) > 2:
                vectors = train_word2vec(tokens, vocab, dim=cfg.word_dim,
                                         epochs=cfg.word2vec_epochs, seed=cfg.seed, workers=1)
            payload = (vocab.to_dict(), vectors)
        vocab_dict, vectors = broadcast_object(payload, info)
        vocab = Vocab.from_dict(vocab_dict)
    ids, mask = vocab.encode(tokens, cfg.max_title_len)
    empty = int((~mask.any(1)).sum())
    log.info("vocabulary %d words; %d of %d titles have no known word", len(vocab), empty, len(tokens))
    return TextData(vocab, ids, mask, vectors)


def model_config(cfg: TrainConfig, labels: LabelMap, text: TextData | None) -> SICoTConfig:
    return SICoTConfig(
        backbone=cfg.backbone, pretrained=cfg.pretrained,
        weights_path=str(cfg.weights_path) if cfg.weights_path else None,
        freeze_blocks=cfg.freeze_blocks, embed_dim=cfg.embed_dim,
        num_classes=labels.num_classes, num_categories=len(labels.categories),
        text_encoder=cfg.text_encoder, vocab_size=len(text.vocab) if text else 2,
        word_dim=cfg.word_dim, dropout=cfg.dropout, seed=cfg.seed, head=cfg.head,
        cosine_scale=cfg.cosine_scale,
    )


def build_model(cfg: TrainConfig, labels: LabelMap, text: TextData | None,
                info: DistInfo | None = None) -> SICoTModel:
    """The SICoT model; with ``cfg.sharded_fc`` it holds this rank's rows of W only."""
    mcfg = model_config(cfg, labels, text)
    classifier = None
    if cfg.sharded_fc:
        info = info or DistInfo()
        classifier = ShardedClassifier(mcfg.embed_dim, Shard(mcfg.num_classes, info.rank,
                                       info.world_size), mcfg.head, mcfg.cosine_scale, cfg.seed)
    model = SICoTModel(mcfg, word_vectors=text.vectors if text is not None else None,
                       classifier=classifier)
    if cfg.mix_style_p > 0:
        if 0 <= cfg.freeze_blocks < len(model.backbone._block_list()):
            install_mix_style(model, cfg.mix_style_p)
        else:  # the whole backbone frozen: no trained block to mix the statistics of
            log.info("MixStyle off: no trained backbone block (freeze_blocks %d)",
                     cfg.freeze_blocks)
    return model


def install_mix_style(model: SICoTModel, p: float, alpha: float = 0.1) -> None:
    """MixStyle on the input of the first trained block, in training mode only (the cached-
    trunk path applies it at the same place: on the cached maps)."""
    blocks = list(model.backbone._block_list())
    k = model.cfg.freeze_blocks
    if not 0 <= k < len(blocks):
        raise ValueError(f"MixStyle needs a trained block after the frozen {k}")

    def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        return (mix_style(args[0], p, alpha),) if module.training else None

    blocks[k].register_forward_pre_hook(hook)


def preprocess_config(cfg: TrainConfig, model: SICoTModel) -> PreprocessConfig:
    """The backbone's own preprocessing with the config's input size / resize mode."""
    base: PreprocessConfig = model.default_preprocess
    updates: dict[str, Any] = {}
    if cfg.input_size is not None:
        updates["input_size"] = cfg.input_size
    if cfg.resize is not None:
        updates["resize"] = cfg.resize
    updates["crop_margin"] = cfg.crop_margin  # stored in the artifact: every crop follows it
    return PreprocessConfig(**{**base.model_dump(), **updates})


def train_dataset(cfg: TrainConfig, splits: Splits, source: ImageSource, pcfg: PreprocessConfig,
                  text: TextData | None) -> EpochDataset:
    """The training images (random resized crop) and, with a catalog, its customer views
    (``catalog_views_per_epoch`` of each packshot per epoch)."""
    transform = TrainTransform(pcfg, scale=(cfg.crop_scale_min, 1.0), hflip_p=cfg.hflip_p)
    train = SkuDataset(
        splits.train, splits.labels, source, pcfg, train_transform=transform,
        crop_to_box=True, seed=cfg.seed,
        ids=text.ids if text else None, mask=text.mask if text else None,
    )
    if not splits.catalog:
        return train
    cuts = load_cutouts_or_none([it.image for it in splits.catalog], source)
    ids, mask = (text.vocab.encode([item_text(it, cfg.title_with_tags) for it in splits.catalog],
                                   cfg.max_title_len) if text else (None, None))
    views = CustomerViewDataset(splits.catalog, cuts, splits.labels, pcfg,
                                CustomerViewConfig(margin=pcfg.crop_margin), seed=cfg.seed,
                                ids=ids, mask=mask, repeats=cfg.catalog_views_per_epoch)
    return EpochConcat([train, views])


def eval_datasets(cfg: TrainConfig, splits: Splits, source: ImageSource,
                  pcfg: PreprocessConfig) -> dict[str, SkuDataset]:
    """``heldout`` (training distribution) and ``queries`` (cropped to the true box)."""
    out: dict[str, SkuDataset] = {}
    if splits.heldout:
        out["heldout"] = SkuDataset(splits.heldout, splits.labels, source, pcfg,
                                    crop_to_box=True)
    if splits.queries:
        out["queries"] = SkuDataset(splits.queries, splits.labels, source, pcfg,
                                    crop_to_box=cfg.query_crop)
    return out
