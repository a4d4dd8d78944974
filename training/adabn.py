"""AdaBN: re-estimate the batch-norm statistics of a served SICoT model on unlabeled real-shot
crops (the service's retained queries), and export the result as a new artifact.

A model trained on catalog-style images normalises every layer with statistics of that
domain (the frozen trunk even keeps ImageNet's).  AdaBN (Li et al., 2016) replaces them with
the target domain's, without labels: the weights stay, only ``running_mean`` /
``running_var`` of the chosen BatchNorm layers are recomputed from the crops (cumulative
average over every crop, not a momentum estimate).  ``alpha`` blends old and new statistics
(1 = pure AdaBN).  The index must then be rebuilt with the new artifact: catalog rows and
queries are embedded by the same network.

Scopes: ``trunk``: the frozen trunk's BN layers (stem + the first ``freeze_blocks`` blocks;
what training never adapted); ``backbone``: every BN layer of the backbone.

    sku-adabn --artifact A --out DIR --name N [--images DIR_OR_MANIFEST | --redis-url URL]
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from service.artifact import ArtifactConfig, ArtifactError, read_artifact_config
from service.preprocess import preprocess
from training.checkpoint import load_checkpoint
from training.export import export_artifact
from training.models.sicot import SICoTConfig, SICoTModel

log = logging.getLogger(__name__)

Scope = Literal["trunk", "backbone"]
SCOPES: tuple[str, ...] = ("trunk", "backbone")


def load_sicot(artifact_dir: str | Path) -> tuple[SICoTModel, ArtifactConfig, dict[str, Any]]:
    """The torch model of a SICoT artifact, rebuilt from its ``checkpoint.pt`` (eval mode)."""
    path = Path(artifact_dir)
    config = read_artifact_config(path)
    if config.kind != "sicot":
        raise ArtifactError(f"{path} is a {config.kind} artifact, not a SICoT one")
    if config.checkpoint_file is None:
        raise ArtifactError(f"{path} holds no checkpoint ({config.name} was exported without "
                            "one): AdaBN needs the torch weights")
    ckpt = load_checkpoint(path / config.checkpoint_file)
    cfg = SICoTConfig(**{**ckpt["model_config"], "pretrained": False, "weights_path": None})
    model = SICoTModel(cfg)
    model.load_state_dict(ckpt["model_state"])
    return model.eval(), config, ckpt


def bn_layers(model: SICoTModel, scope: Scope) -> list[nn.BatchNorm2d]:
    """The BatchNorm2d layers of the backbone in ``scope`` (module docstring)."""
    layers = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    if scope == "trunk":
        frozen = {id(m) for f in getattr(model.backbone, "_frozen", []) for m in f.modules()}
        layers = [m for m in layers if id(m) in frozen]
    elif scope != "backbone":
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    return layers


@torch.no_grad()
def adapt_batchnorm(model: SICoTModel, batches: Iterable[torch.Tensor], scope: Scope = "trunk",
                    alpha: float = 1.0) -> dict[str, Any]:
    """Recompute the statistics of ``bn_layers(model, scope)`` over ``batches`` (N,3,S,S), then
    blend: ``alpha · new + (1 − alpha) · old``.  Every other layer stays in eval mode, so
    dropout is off and the other BN layers keep theirs.  Returns a summary."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    layers = bn_layers(model, scope)
    if not layers:
        raise ValueError(f"the model has no BatchNorm2d layers in scope {scope!r}")
    old = [(m.running_mean.clone(), m.running_var.clone(), m.momentum) for m in layers]  # type: ignore[union-attr]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch
        m.train()
    images = 0
    try:
        for x in batches:
            model.backbone.forward_features(x)
            images += len(x)
    finally:
        for m, (mean, var, momentum) in zip(layers, old, strict=True):
            m.eval()
            m.momentum = momentum
            if images == 0:
                m.running_mean.copy_(mean)  # type: ignore[union-attr]
                m.running_var.copy_(var)  # type: ignore[union-attr]
    if images == 0:
        raise ValueError("no images to estimate the statistics from")
    shift = []
    for m, (mean, var, _) in zip(layers, old, strict=True):
        new_mean, new_var = m.running_mean.clone(), m.running_var.clone()  # type: ignore[union-attr]
        m.running_mean.copy_(alpha * new_mean + (1 - alpha) * mean)  # type: ignore[union-attr]
        m.running_var.copy_(alpha * new_var + (1 - alpha) * var)  # type: ignore[union-attr]
        shift.append(float(((new_mean - mean).abs() / var.sqrt().clamp_min(1e-5)).mean()))
    return {"scope": scope, "alpha": alpha, "images": images, "layers": len(layers),
            "mean_shift_sd": round(float(np.mean(shift)), 4)}


def crop_batches(crops: Sequence[bytes | Image.Image], config: ArtifactConfig,
                 batch_size: int = 64) -> Iterable[torch.Tensor]:
    """JPEG bytes (or images) → preprocessed batches, as the service would feed them."""
    for start in range(0, len(crops), batch_size):
        imgs = [c if isinstance(c, Image.Image) else Image.open(io.BytesIO(c))
                for c in crops[start:start + batch_size]]
        yield torch.from_numpy(np.stack([preprocess(i.convert("RGB"), config.preprocess)
                                         for i in imgs]))


def adabn_artifact(artifact_dir: str | Path, crops: Sequence[bytes | Image.Image], *,
                   out_dir: str | Path, name: str, scope: Scope = "trunk", alpha: float = 1.0,
                   batch_size: int = 64, overwrite: bool = False) -> Path:
    """A new artifact ``out_dir/name``: ``artifact_dir``'s model with AdaBN on ``crops``."""
    model, config, ckpt = load_sicot(artifact_dir)
    summary = adapt_batchnorm(model, crop_batches(crops, config, batch_size), scope, alpha)
    summary["source_model_version"] = config.model_version
    log.info("AdaBN: %s", summary)
    assert config.labels is not None
    payload = {**ckpt, "model_state": model.state_dict(), "adabn": summary}
    return export_artifact(model, out_dir=out_dir, name=name, labels=config.labels,
                           preprocess=config.preprocess, model_config=ckpt["model_config"],
                           evaluation={**config.evaluation, "adabn": summary},
                           checkpoint=payload, overwrite=overwrite)


def _image_files(src: Path) -> list[Path]:
    if src.is_dir():
        return sorted(p for p in src.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    from service.catalog import read_catalog

    return [Path(it.image) for it in read_catalog(src).items]


def retained_crops(redis_url: str, key_prefix: str, limit: int) -> list[bytes]:
    """The crops of the service's retained queries (newest first, at most ``limit``)."""
    from service.feedback import FeedbackLog
    from service.redis_server import connect

    client = connect(redis_url)
    try:
        flog = FeedbackLog(client, key_prefix)
        queries = [q for q in flog.get_many(list(flog.retained_ids())) if q is not None]
    finally:
        client.close()
    queries.sort(key=lambda q: -q.created_at)
    return [q.crop for q in queries[:limit]]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sku-adabn", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--artifact", type=Path, required=True, help="the served SICoT artifact")
    p.add_argument("--out", type=Path, required=True, help="folder of the new artifact")
    p.add_argument("--name", required=True, help="the new artifact's name")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", type=Path, help="a folder of crops or a JSONL manifest "
                     "(default: the service's retained queries in Redis)")
    src.add_argument("--redis-url", help="Redis of the retained queries (default: REDIS_URL)")
    p.add_argument("--key-prefix", default="sku", help="the service's key prefix")
    p.add_argument("--scope", choices=SCOPES, default="trunk")
    p.add_argument("--alpha", type=float, default=1.0, help="1 = new statistics only")
    p.add_argument("--max-images", type=int, default=20000)
    p.add_argument("--min-images", type=int, default=200,
                   help="refuse to adapt on fewer crops (statistics of a few photos are noise)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--overwrite", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    try:
        if args.images is not None:
            crops: list[bytes] = [f.read_bytes() for f in _image_files(args.images)[:args.max_images]]
        else:
            url = args.redis_url or os.environ.get("REDIS_URL")
            if not url:
                sys.stderr.write("sku-adabn: give --images, or the service's Redis with "
                                 "--redis-url / REDIS_URL\n")
                return 2
            crops = retained_crops(url, args.key_prefix, args.max_images)
        if len(crops) < args.min_images:
            sys.stderr.write(f"sku-adabn: {len(crops)} crops, fewer than --min-images "
                             f"{args.min_images}: nothing written\n")
            return 2
        path = adabn_artifact(args.artifact, crops, out_dir=args.out, name=args.name,
                              scope=args.scope, alpha=args.alpha, overwrite=args.overwrite)
    except (ArtifactError, FileNotFoundError, ValueError) as e:
        sys.stderr.write(f"sku-adabn: {e}\n")
        return 2
    sys.stdout.write(f"sku-adabn: {len(crops)} crops → {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
