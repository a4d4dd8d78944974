"""Reference rows of ``bench/emoji_eval.py`` that train nothing of ours: frozen ImageNet
EfficientNet-Lite0 features (pooled 1280-d, computed from the cached clean view, so the same
input size as the trained variants) used by

* ``ref_knn``: nearest catalog image, cosine similarity; the score of a class is the best
  similarity among its catalog images (2 vendors per SKU), so top-k is over SKUs;
* ``ref_linear``: a linear classifier (softmax regression, Adam, standardised features) on
  the clean training images; its post-hoc logit adjustment rows come from the τ sweep.

Each is written as a run folder (report.json + eval/<split>.npz) so the report code treats it
like a trained variant.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.builders import Splits
from training.evaluate import evaluate_outputs, json_safe
from training.models import create_backbone
from training.settings import TrainConfig
from training.trunk_cache import pooled_features

SPLITS = ("queries", "heldout")


def knn_scores(query: np.ndarray, catalog: np.ndarray, catalog_labels: np.ndarray,
               num_classes: int) -> np.ndarray:
    """(Nq, C) best cosine similarity per class; classes without catalog images get -1e9."""
    q = query / np.linalg.norm(query, axis=1, keepdims=True).clip(1e-12)
    c = catalog / np.linalg.norm(catalog, axis=1, keepdims=True).clip(1e-12)
    sims = q @ c.T
    scores = np.full((len(q), num_classes), -1e9, dtype=np.float32)
    for j, lab in enumerate(catalog_labels):
        np.maximum(scores[:, lab], sims[:, j], out=scores[:, lab])
    return scores


def train_linear(x: np.ndarray, y: np.ndarray, num_classes: int, *, epochs: int = 15,
                 seed: int = 0) -> tuple[torch.nn.Linear, np.ndarray, np.ndarray]:
    """Softmax regression on standardised features; returns (layer, mean, std)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy((x - mean) / std).float()
    yt = torch.from_numpy(y).long()
    torch.manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], num_classes)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=g).split(256):
            loss = F.cross_entropy(layer(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return layer, mean, std


def _write_run(runs_dir: Path, name: str, logits: dict[str, np.ndarray],
               targets: dict[str, np.ndarray], cfg: TrainConfig, splits: Splits,
               extra: dict[str, Any], taus: list[float]) -> dict[str, Any]:
    lm = splits.labels
    run_dir = runs_dir / name
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    evaluation = {}
    for split in SPLITS:
        np.savez_compressed(run_dir / "eval" / f"{split}.npz", sku_logits=logits[split],
                            labels=targets[split], train_counts=np.asarray(lm.train_counts))
        evaluation[split] = evaluate_outputs(logits[split], targets[split], lm.train_counts,
                                             sku_category=lm.sku_category, taus=taus)
    rep = {"name": name, "text_encoder": None, "evaluation": evaluation, **extra}
    (run_dir / "report.json").write_text(json.dumps(json_safe(rep), indent=2))
    return rep


def reference_rows(cfg: TrainConfig, splits: Splits, caches: dict[str, np.ndarray],
                   info: dict[str, Any], runs_dir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    bb = create_backbone(cfg.backbone, pretrained=True, freeze_blocks=-1).eval()
    k = cfg.freeze_blocks
    feats = {name: pooled_features(bb, k, caches[name]) for name in (*SPLITS, "catalog")}
    feats["train"] = pooled_features(bb, k, caches["train"][:, 0])
    targets, n_cls = info["targets"], splits.labels.num_classes
    knn = {s: knn_scores(feats[s], feats["catalog"], targets["catalog"], n_cls) for s in SPLITS}
    t_knn = time.perf_counter() - t0
    layer, mean, std = train_linear(feats["train"], targets["train"], n_cls, seed=cfg.seed)
    with torch.no_grad():
        lin = {s: layer(torch.from_numpy((feats[s] - mean) / std).float()).numpy() for s in SPLITS}
    out = {
        "ref_knn": _write_run(runs_dir, "ref_knn", knn, targets, cfg, splits,
                              {"method": "nearest catalog image, cosine, frozen ImageNet features"},
                              [0.0]),  # similarities are no logits: no logit adjustment
        "ref_linear": _write_run(runs_dir, "ref_linear", lin, targets, cfg, splits,
                                 {"method": "linear classifier on frozen ImageNet features"},
                                 list(cfg.eval_taus)),
    }
    for rep in out.values():
        rep["seconds"] = time.perf_counter() - t0 if rep["name"] == "ref_linear" else t_knn
    return out
