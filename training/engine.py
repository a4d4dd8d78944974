"""The inner loops: optimiser and LR schedule, one training epoch, batched prediction."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.augment import BatchAugment, batch_seed
from training.distributed import DistInfo, all_reduce_mean, unwrap
from training.losses import sicot_loss
from training.models.sharded_head import sharded_classifier
from training.settings import TrainConfig
from training.sharded_fc import clip_grad_norm, sharded_sicot_loss

# (model output, batch, global step) → (loss, its parts as floats)
LossFn = Callable[[dict[str, Any], dict[str, Any], int], tuple[torch.Tensor, dict[str, float]]]

log = logging.getLogger(__name__)


def logit_margin(cfg: TrainConfig) -> float:
    """The cosine head's additive margin in logit units (γ·m); 0 for a linear head."""
    return cfg.cosine_margin * cfg.cosine_scale if cfg.head == "cosine" else 0.0


def make_loss_fn(cfg: TrainConfig, model: nn.Module, log_prior: torch.Tensor | None) -> LossFn:
    """The SICoT loss of ``cfg``: dense, or over the model's sharded classifier (whose rows of
    the log prior it keeps)."""
    kw = {"lam": cfg.lam, "tau": cfg.tau, "cat_weight": cfg.cat_weight,
          "margin": logit_margin(cfg)}
    fc = sharded_classifier(unwrap(model))
    if fc is None:
        def dense(out: dict[str, Any], batch: dict[str, Any], step: int
                  ) -> tuple[torch.Tensor, dict[str, float]]:
            return sicot_loss(out, batch["label"], batch["category"], log_prior=log_prior, **kw)
        return dense
    prior = log_prior[fc.shard.start:fc.shard.stop].clone() if log_prior is not None else None

    def sharded(out: dict[str, Any], batch: dict[str, Any], step: int
                ) -> tuple[torch.Tensor, dict[str, float]]:
        return sharded_sicot_loss(out, batch["label"], batch["category"], fc, log_prior=prior,
                                  sample_rate=cfg.fc_sample_rate, step=step, **kw)
    return sharded


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Backbone vs the rest (``backbone_lr_scale``); no weight decay on biases and norms."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (name.startswith("backbone."), p.ndim > 1)
        groups.setdefault(key, []).append(p)
    out = []
    for (is_backbone, decay), params in sorted(groups.items()):
        out.append({"params": params,
                    "lr": cfg.lr * (cfg.backbone_lr_scale if is_backbone else 1.0),
                    "weight_decay": cfg.weight_decay if decay else 0.0})
    return out


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum,
                           nesterov=cfg.nesterov and cfg.momentum > 0)


def lr_factor(step: int, *, schedule: str, steps_per_epoch: int, total_steps: int, gamma: float,
              step_epochs: float, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr after ``step`` optimiser steps (per-step schedule)."""
    if warmup_steps and step < warmup_steps:
        return 0.01 + 0.99 * step / warmup_steps
    if schedule == "step":
        return float(gamma ** math.floor(step / max(1.0, step_epochs * steps_per_epoch)))
    if schedule == "cosine":
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    fn = functools.partial(
        lr_factor, schedule=cfg.schedule, steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * cfg.epochs, gamma=cfg.step_gamma,
        step_epochs=cfg.step_epochs, warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        min_ratio=cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(opt, fn)


@dataclass
class EpochResult:
    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    stopped: bool = False
    sums: dict[str, float] = field(default_factory=dict)

    def means(self) -> dict[str, float]:
        return {k: v / max(1, self.steps) for k, v in self.sums.items()}


def _to(batch: dict[str, Any], device: torch.device, channels_last: bool) -> dict[str, Any]:
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
           for k, v in batch.items()}
    if channels_last:
        out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
    return out


def forward(model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    if "ids" in batch:
        out: dict[str, torch.Tensor] = model(batch["image"], batch["ids"], batch["mask"])
        return out
    result: dict[str, torch.Tensor] = model(batch["image"])
    return result


def train_one_epoch(
    model: nn.Module, loader: DataLoader[dict[str, Any]], optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, augment: BatchAugment, *,
    cfg: TrainConfig, info: DistInfo, device: torch.device, epoch: int, first_step: int,
    step_in_epoch: int, loss_fn: LossFn,
    on_step: Callable[[int], bool] | None = None,
) -> EpochResult:
    """One (possibly resumed) epoch.  ``on_step(global_step)`` runs after each optimiser step
    and returns True to stop (checkpoint-every / stop-after handling lives in the caller)."""
    model.train()
    res = EpochResult()
    t0 = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not info.is_main,
               initial=step_in_epoch, total=step_in_epoch + len(loader), leave=False)
    for i, batch in enumerate(bar):
        batch = _to(batch, device, cfg.channels_last)
        batch["image"] = augment(batch["image"],
                                 batch_seed(cfg.seed, epoch, step_in_epoch + i, info.rank))
        out = forward(model, batch)
        loss, parts = loss_fn(out, batch, first_step + i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            clip_grad_norm(model, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        res.steps += 1
        res.images += len(batch["label"])
        logged = {"loss": float(loss.detach()),
                  **{k: float(v) for k, v in parts.items() if k not in ("loss", "total")}}
        values = all_reduce_mean(torch.tensor(list(logged.values()), dtype=torch.float64), info)
        for k, v in zip(logged, values.tolist(), strict=True):
            res.sums[k] = res.sums.get(k, 0.0) + v
        if not math.isfinite(res.sums["loss"]):
            raise FloatingPointError(f"loss is {res.sums['loss']} at step {first_step + i + 1}")
        bar.set_postfix(loss=f"{logged['loss']:.3f}", lr=f"{scheduler.get_last_lr()[0]:.4g}")
        if on_step is not None and on_step(first_step + i + 1):
            res.stopped = True
            break
    res.seconds = time.perf_counter() - t0
    return res


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader[dict[str, Any]], device: torch.device,
            channels_last: bool = False, desc: str = "predict") -> dict[str, np.ndarray]:
    """Visual path only (as served): sku_logits, category_logits, labels, categories."""
    was_training = model.training
    model.eval()
    outs: dict[str, list[np.ndarray]] = {}
    for batch in tqdm(loader, desc=desc, leave=False):
        batch = _to(batch, device, channels_last)
        out = model(batch["image"])
        for key in ("sku_logits", "category_logits"):
            outs.setdefault(key, []).append(out[key].float().cpu().numpy())
        outs.setdefault("labels", []).append(batch["label"].cpu().numpy())
        outs.setdefault("categories", []).append(batch["category"].cpu().numpy())
    model.train(was_training)
    return {k: np.concatenate(v) for k, v in outs.items()}
