"""Training loop of the localizer on synthetic composites, then export.

Sources are the product images of one or more catalog manifests (packshots on a plain
background); a seeded tenth of the SKUs is held out as the products of the synthetic
validation scenes (when there are at least 20 SKUs), so validation measures unseen products.
Sample ``i`` of the training stream is rendered from a generator seeded by ``(seed, i)``, so
the data do not depend on the number of loader workers. The learning rate warms up, then
follows a cosine driven by whichever ends first: ``steps`` or ``time_limit_min``.
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from service.artifact import load_artifact, write_artifact_config
from service.catalog import CatalogItem
from service.localize import image_to_input_boxes
from service.preprocess import PreprocessConfig, resize_to_input, to_tensor
from training.data import load_items
from training.localizer.cutout import load_cutouts
from training.localizer.evaluate import evaluate_images
from training.localizer.export import write_localizer_artifact
from training.localizer.model import STRIDE, LocalizerNet, build_localizer
from training.localizer.settings import LocalizerTrainConfig
from training.localizer.synth import SceneConfig, render_scene
from training.localizer.targets import localizer_loss, make_targets
from training.localizer.trunk import OrtTrunk
from training.models.backbones import create_backbone

log = logging.getLogger(__name__)
VAL_SEED_OFFSET = 1_000_003


class SceneDataset(Dataset):
    """``length`` scenes; item ``i`` is (input, heat, box, weight) from rng (seed, i)."""

    def __init__(self, cutouts: list, pp: PreprocessConfig, length: int, seed: int,
                 scene: SceneConfig):
        self.cutouts, self.pp, self.length, self.seed, self.scene = (
            cutouts, pp, length, seed, scene)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        rng = np.random.default_rng([self.seed, i])
        img, boxes = render_scene(self.cutouts, rng, self.scene)
        s = self.pp.input_size
        x = to_tensor(resize_to_input(img, self.pp), self.pp)
        b = image_to_input_boxes(boxes, img.size, self.pp)
        if rng.random() < 0.5:  # mirror
            x = np.ascontiguousarray(x[:, :, ::-1])
            b = np.stack([s - b[:, 2], b[:, 1], s - b[:, 0], b[:, 3]], axis=1)
        heat, box_t, weight = make_targets(b, s, STRIDE)
        return tuple(torch.from_numpy(a) for a in (x, heat, box_t, weight))


def split_sources(
    items: list[CatalogItem], seed: int, max_sources: int | None
) -> tuple[list[str], list[str]]:
    """(train image paths, validation image paths): a seeded tenth of the SKUs held out."""
    skus = sorted({it.sku_id for it in items})
    held = ({s for s in skus if zlib.crc32(f"{seed}:{s}".encode()) % 10 == 0}
            if len(skus) >= 20 else set())
    train = sorted({it.image for it in items if it.sku_id not in held})
    val = sorted({it.image for it in items if it.sku_id in held}) or train
    if max_sources is not None:
        rng = np.random.default_rng(seed)
        if len(train) > max_sources:
            train = sorted(rng.choice(train, max_sources, replace=False).tolist())
    return train, val


def _lr_factor(step: int, progress: float, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _param_groups(model: LocalizerNet, cfg: LocalizerTrainConfig) -> list[dict[str, Any]]:
    back = [p for p in model.features.parameters() if p.requires_grad]
    back_ids = {id(p) for p in back}
    head = [p for p in model.parameters() if p.requires_grad and id(p) not in back_ids]
    return [{"params": head, "lr": cfg.lr, "base_lr": cfg.lr},
            {"params": back, "lr": cfg.lr * cfg.backbone_lr_mult,
             "base_lr": cfg.lr * cfg.backbone_lr_mult}]


def make_preprocess(backbone: str, input_size: int) -> PreprocessConfig:
    """The backbone's mean/std at the localizer's size; letterbox with a neutral grey pad (a
    white pad would look like a packshot's background)."""
    default = create_backbone(backbone, pretrained=False).default_preprocess
    return PreprocessConfig(input_size=input_size, resize="letterbox", mean=default.mean,
                            std=default.std, pad_rgb=(114, 114, 114))


def frozen_prefix(model: LocalizerNet) -> int:
    """How many of the localizer's trunk blocks (from the first) train no parameter: that
    prefix (with the stem, when it is frozen too) runs in ONNX Runtime during training."""
    feats = model.features
    if any(p.requires_grad for p in feats.stem.parameters()):
        return 0
    k = 0
    for block in feats.blocks:
        if any(p.requires_grad for p in block.parameters()):
            break
        k += 1
    return k


def validation_scenes(cutouts: list, n: int, seed: int, scene: SceneConfig):
    rng = np.random.default_rng([seed, VAL_SEED_OFFSET])
    return [render_scene(cutouts, rng, scene) for _ in range(n)]


def train(cfg: LocalizerTrainConfig) -> dict[str, Any]:
    """Train, export to ``cfg.out`` and return the summary (also in config.json)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    items = [it for path in cfg.catalogs for it in load_items(path)]
    train_paths, val_paths = split_sources(items, cfg.seed, cfg.max_sources)
    cutouts = load_cutouts(train_paths)
    val_cutouts = load_cutouts(val_paths) if val_paths != train_paths else cutouts
    pp = make_preprocess(cfg.backbone, cfg.input_size)
    model = build_localizer(cfg.backbone, pretrained=cfg.pretrained,
                            freeze_blocks=cfg.trunk_freeze_blocks, neck_channels=cfg.neck_channels,
                            top_stride=cfg.top_stride)
    opt = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    data = SceneDataset(cutouts, pp, cfg.steps * cfg.batch_size, cfg.seed, cfg.scene)
    loader = DataLoader(data, batch_size=cfg.batch_size, num_workers=cfg.workers,
                        persistent_workers=cfg.workers > 0)
    limit_s = cfg.time_limit_min * 60 if cfg.time_limit_min else None
    prefix = frozen_prefix(model)
    trunk = (OrtTrunk(model.features, cfg.input_size, cfg.threads,
                      prefix_blocks=prefix if prefix < len(model.features.blocks) else None)
             if prefix else None)
    model.train()
    # channels_last: ~1.5x faster depthwise convs on CPU when the trunk trains in torch
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    start, step, stats = time.monotonic(), 0, {"heat": 0.0, "giou": 0.0}
    for x, heat_t, box_t, weight in loader:
        elapsed = time.monotonic() - start
        progress = max(step / cfg.steps, elapsed / limit_s if limit_s else 0.0)
        if progress >= 1.0:
            break
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * _lr_factor(step, progress, cfg.warmup_steps)
        if trunk is not None:
            maps = trunk(x)
            if prefix < len(model.features.blocks):  # the later blocks train in torch
                *early, xk = maps
                maps = model.features.forward_from(
                    prefix, xk.contiguous(memory_format=torch.channels_last), tuple(early))
            heat, log_ltrb = model.forward_head(*maps)
        else:
            heat, log_ltrb = model.forward_raw(x.contiguous(memory_format=torch.channels_last))
        loss, parts = localizer_loss(heat, log_ltrb, heat_t, box_t, weight, STRIDE)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        for k in stats:
            stats[k] = 0.9 * stats[k] + 0.1 * parts[k] if step > 1 else parts[k]
        if step % cfg.log_every == 0 or step == 1:
            log.info("step %d  heat %.3f  giou %.3f  %.1f img/s", step, stats["heat"],
                     stats["giou"], step * cfg.batch_size / max(elapsed, 1e-9))
    train_s = time.monotonic() - start
    model.eval()
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    summary: dict[str, Any] = {
        "steps": step, "images_seen": step * cfg.batch_size, "train_minutes": round(train_s / 60, 2),
        "loss_heat": round(stats["heat"], 4), "loss_giou": round(stats["giou"], 4),
        "train_sources": len(cutouts), "val_sources": len(val_cutouts),
        "freeze_blocks": cfg.trunk_freeze_blocks, "frozen_prefix_blocks": prefix,
        "images_per_s": round(step * cfg.batch_size / max(train_s, 1e-9), 1),
    }
    checkpoint = {"state_dict": model.state_dict(), "config": _jsonable(cfg), "step": step}
    write_localizer_artifact(cfg.out, model, name=cfg.name, backbone=cfg.backbone,
                             preprocess=pp, neck_channels=cfg.neck_channels,
                             top_stride=cfg.top_stride,
                             checkpoint=checkpoint, evaluation={"train": summary})
    if cfg.val_scenes > 0:
        art = load_artifact(cfg.out)
        scenes = validation_scenes(val_cutouts, cfg.val_scenes, cfg.seed, cfg.scene)
        report = evaluate_images(art, [s[0] for s in scenes], [s[1] for s in scenes])
        summary["synthetic_val"] = report.as_dict()
        config = art.config.model_copy(update={"evaluation": {"train": summary}})
        write_artifact_config(cfg.out, config)
    (Path(cfg.out) / "train_config.json").write_text(_dump(cfg))
    return summary


def _jsonable(cfg: LocalizerTrainConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def _dump(cfg: LocalizerTrainConfig) -> str:
    return json.dumps(_jsonable(cfg), indent=2)
