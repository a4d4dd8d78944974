"""Accuracy study (issue 9): recipes for customer photos, compared under one CPU budget.

Every variant trains the tail of EfficientNet-Lite0 (blocks ``--cut``.. + head conv +
projection + SKU classifier W (+ category head, + SICoT's title stream)) on cached trunk
maps (stem + blocks[:cut] frozen, ONNX Runtime, float16), from two sources:

* ``train``: the long-tailed training set (``train/``, noisy titles), view 0 clean, the
  others random resized crop + ``training.augment`` (photometric + style breakers);
* ``catalog``: the catalog packshots (``catalog/``, both catalog vendors of every SKU, clean
  titles), view 0 the packshot itself, the others *customer views*
  (``training.customer_views``: the packshot as the main product of a synthetic real-shot
  scene, cropped like the online path with the localizer's box noise).

Each variant is scored on cached true-box crops (+10 %) of every query set given with
``--query NAME=MANIFEST`` (test half by the hash rule of ``training.online_eval`` for sets
named ``b1``/``b2``, all photos otherwise) and on the held-out training-style images:
classifier top-1/3 (overall, head, tail), the index alone (recall@1/3 of the nearest catalog
images by the served embedding, both vendors indexed) and classifier + index merged as the
service merges them (``service.fusion.merge_with_neighbours``). ``--export VARIANT`` writes
the serving artifact of a variant for the full online path (``training.online_eval``).

Caches are built once per (size, cut, views) and reused by every variant; the report has the
minutes of each part so a recipe's budget is cache + training.

    .venv/bin/python bench/accuracy_study.py --data /work/data/emoji-full \\
        --query b1=/work/data/q-twitter/queries/manifest.jsonl \\
        --query b2=/work/data/emoji-full/queries/manifest.jsonl --out /work/runs/study
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.fusion import merge_with_neighbours, softmax  # noqa: E402
from training import builders  # noqa: E402
from training.augment import BatchAugment  # noqa: E402
from training.customer_views import CustomerViewConfig, CustomerViewDataset  # noqa: E402
from training.data import ImageSource, SkuDataset, TrainTransform, known_items, load_items  # noqa: E402
from training.distributed import DistInfo  # noqa: E402
from training.evaluate import accuracy_summary, json_safe  # noqa: E402
from training.export import export_artifact  # noqa: E402
from training.localizer.cutout import make_cutout  # noqa: E402
from training.losses import log_prior_from_counts  # noqa: E402
from training.online_eval import in_test_half  # noqa: E402
from training.recipe import RECIPE  # noqa: E402
from training.settings import TrainConfig, split_source  # noqa: E402
from training.trunk_cache import (  # noqa: E402
    CacheSource,
    TailRegularizers,
    TrunkRunner,
    ViewBatches,
    build_cache,
    predict_on_cache,
    train_on_sources,
)

log = logging.getLogger("accuracy_study")
TEST_SETS = ("b1", "b2")  # default --test-half: benchmark sets scored on their test half


@dataclass(frozen=True)
class Variant:
    """One recipe of the study; the defaults are the shared budget of :data:`RECIPE` with
    today's (pre-study) head: linear, no margin, no MixStyle."""

    text_encoder: str | None = "bilinear_attention"
    tau: float = RECIPE.tau
    head: str = "linear"
    scale: float = RECIPE.cosine_scale
    margin: float = 0.0  # cosine margin m (logit margin = scale × m)
    sources: str = "train+catalog"
    catalog_per_epoch: int = RECIPE.catalog_views_per_epoch
    train_per_epoch: int | None = RECIPE.train_per_epoch  # None: all training images
    vendors: str | None = None  # e.g. "google": style hold-out (train and index one vendor)
    mix_style: float = 0.0
    feature_dropout: float = RECIPE.feature_dropout
    dropout: float = RECIPE.dropout
    epochs: int = RECIPE.epochs
    lr: float = RECIPE.lr
    backbone_lr_scale: float = RECIPE.backbone_lr_scale  # trained trunk blocks: lr × this
    lam: float = 1.0


def recipe_variant(**changes: Any) -> Variant:
    """The chosen recipe (:data:`training.recipe.RECIPE`) as a study variant."""
    return replace(Variant(head=RECIPE.head, scale=RECIPE.cosine_scale,
                           margin=RECIPE.cosine_margin, mix_style=RECIPE.mix_style_p), **changes)


# The study's variants, in the order they were tried; every one is reported.
VARIANTS: dict[str, Variant] = {
    "old_recipe": Variant(sources="train"),  # today's SICoT + LA recipe on the new cache
    "old_recipe_baseline": Variant(text_encoder=None, sources="train"),
    "catalog_views": Variant(),
    "catalog_views_baseline": Variant(text_encoder=None),
    "cosine": Variant(head="cosine", scale=16.0, margin=0.1),
    "cosine_baseline": Variant(text_encoder=None, head="cosine", scale=16.0, margin=0.1),
    "cosine_mixstyle": recipe_variant(),  # the chosen recipe (training.recipe)
    "cosine_mixstyle_baseline": recipe_variant(text_encoder=None),
    "cosine_mixstyle_lam05": recipe_variant(lam=0.5),  # SICoT's mixed term at half weight (sec. 13)
    "holdout_noto": Variant(vendors="google"),
    "holdout_noto_cosine_mixstyle": Variant(vendors="google", head="cosine", margin=0.1,
                                            mix_style=0.5),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="accuracy_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="materialized emoji-catalog")
    p.add_argument("--query", action="append", default=[], metavar="NAME=MANIFEST",
                   help="query set scored on true-box crops (see --test-half)")
    p.add_argument("--test-half", type=lambda v: tuple(v.split(",")), default=TEST_SETS,
                   help="query sets scored on their test half only (training.online_eval rule)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--input-size", type=int, default=RECIPE.input_size)
    p.add_argument("--cut", type=int, default=RECIPE.freeze_blocks,
                   help="trunk = stem + blocks[:cut] (frozen)")
    p.add_argument("--train-views", type=int, default=RECIPE.train_views)
    p.add_argument("--catalog-views", type=int, default=RECIPE.catalog_views)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--export", default="", help="comma-separated variants to export")
    p.add_argument("--export-prefix", default="emoji",
                   help="artifact name = PREFIX-VARIANT (under OUT/artifacts)")
    p.add_argument("--epochs", type=int, default=0, help="override every variant's epochs")
    p.add_argument("--backbone-lr-scale", type=float, default=None,
                   help="override every variant's lr multiplier of the trained trunk blocks "
                   "(blocks[cut:] + head conv; the projection and heads keep the full lr)")
    p.add_argument("--extra-train", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="more training manifests (e.g. `sku-feedback export` pairs), each image "
                   "seen WEIGHT times per epoch, viewed like the training set; every variant")
    p.add_argument("--cache-dir", type=Path, help="where the trunk caches are (default: --out)")
    p.add_argument("--style-strength", type=float, default=RECIPE.style_strength,
                   help="art-style breakers (training.augment) in the cached training and "
                   "customer views (a cache setting: every variant)")
    p.add_argument("--rand-conv", type=float, default=RECIPE.rand_conv_p,
                   help="probability of a colour-keeping random convolution in the cached "
                   "training and customer views (a cache setting: every variant)")
    return p.parse_args(argv)


@dataclass
class Study:
    args: argparse.Namespace
    cfg: TrainConfig
    splits: builders.Splits
    text: builders.TextData
    catalog: list[Any]
    pcfg: Any
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    test_mask: dict[str, np.ndarray] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    extra: list[tuple[list[Any], float, str]] = field(default_factory=list)  # items, weight, digest


def base_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        train_manifest=args.data / "train" / "manifest.jsonl", input_size=args.input_size,
        freeze_blocks=args.cut, batch_size=args.batch_size, schedule="cosine",
        warmup_epochs=0.25, weight_decay=5e-4, seed=args.seed, crop_scale_min=0.35,
        augment_strength=1.0, style_strength=args.style_strength, erasing_p=0.25,
        rand_conv_p=args.rand_conv,
        text_encoder="bilinear_attention", output_dir=args.out / "runs", export=False,
        channels_last=True)


def _cached(path: Path, make: Any) -> np.ndarray:
    if path.is_file():
        log.info("reusing %s", path)
        return np.load(path, mmap_mode=None)
    arr = make()
    np.save(path, arr)
    return arr


def build_study(args: argparse.Namespace) -> Study:
    cfg = base_config(args)
    splits = builders.prepare_splits(cfg)
    text = builders.prepare_text(cfg, splits.train, DistInfo())
    assert text is not None
    model = builders.build_model(cfg.model_copy(update={"text_encoder": None}), splits.labels, None)
    pcfg = builders.preprocess_config(cfg, model)
    catalog = known_items(load_items(args.data / "catalog" / "manifest.jsonl"), splits.labels)
    st = Study(args, cfg, splits, text, catalog, pcfg)
    lm, source = splits.labels, ImageSource(cache="bytes")
    cache_dir = args.cache_dir or args.out
    cache_dir.mkdir(parents=True, exist_ok=True)
    queries = {}
    for spec in args.query:
        name, path = spec.split("=", 1)
        queries[name] = known_items(load_items(path), lm)
    for spec in args.extra_train:
        path, weight = split_source(spec)
        st.extra.append((known_items(load_items(path), lm), weight,
                         hashlib.sha256(Path(path).read_bytes()).hexdigest()[:10]))
    source.preload(splits.train + splits.heldout + catalog + [q for v in queries.values() for q in v]
                   + [it for items, _, _ in st.extra for it in items])
    runner = TrunkRunner(model.backbone, args.cut, args.input_size, "ort", threads=args.threads,
                         onnx_path=cache_dir / f"trunk-k{args.cut}-s{args.input_size}.onnx")
    key = f"k{args.cut}-s{args.input_size}-seed{args.seed}"
    view_key = (key + (f"-st{args.style_strength:g}" if args.style_strength != 1.0 else "")
                + (f"-rc{args.rand_conv:g}" if args.rand_conv else ""))  # augmented views only
    t0 = time.perf_counter()
    aug = BatchAugment(pcfg.mean, pcfg.std, strength=1.0, style=args.style_strength,
                       erasing_p=0.25, rand_conv=args.rand_conv)
    aug_ds = SkuDataset(splits.train, lm, source, pcfg, seed=args.seed,
                        train_transform=TrainTransform(pcfg, scale=(0.35, 1.0)))
    st.maps["train"] = _cached(cache_dir / f"cache-train-{view_key}-v{args.train_views}.npy",
                               lambda: build_cache(ViewBatches(
                                   SkuDataset(splits.train, lm, source, pcfg), aug_ds, aug,
                                   args.train_views, 64, args.seed), runner, desc="train views"))
    st.timing["cache_train_s"] = time.perf_counter() - t0
    for n, (items, _, digest) in enumerate(st.extra):
        # extra sources (e.g. exported real-shot pairs): viewed like the training set
        extra_aug = SkuDataset(items, lm, source, pcfg, seed=args.seed,
                               train_transform=TrainTransform(pcfg, scale=(0.35, 1.0)))
        st.maps[f"extra{n}"] = _cached(
            cache_dir / f"cache-extra-{digest}-{view_key}-v{args.train_views}.npy",
            lambda items=items, extra_aug=extra_aug: build_cache(ViewBatches(
                SkuDataset(items, lm, source, pcfg), extra_aug, aug, args.train_views, 64,
                args.seed), runner, desc="extra views"))
    t0 = time.perf_counter()
    cuts = [make_cutout(source.load(it.image)) for it in catalog]
    style = BatchAugment(pcfg.mean, pcfg.std, strength=0.0, style=args.style_strength,
                         erasing_p=0.0, rand_conv=args.rand_conv)
    views = CustomerViewDataset(catalog, cuts, lm, pcfg, CustomerViewConfig(), seed=args.seed)
    st.maps["catalog_views"] = _cached(
        cache_dir / f"cache-catalogviews-{view_key}-v{args.catalog_views}.npy",
        lambda: build_cache(ViewBatches(SkuDataset(catalog, lm, source, pcfg), views, style,
                                        args.catalog_views, 64, args.seed), runner,
                            desc="catalog views"))
    st.timing["cache_catalog_views_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    evals = {"heldout": SkuDataset(splits.heldout, lm, source, pcfg),
             "catalog": SkuDataset(catalog, lm, source, pcfg)}
    for name, items in queries.items():
        evals[name] = SkuDataset(items, lm, source, pcfg, crop_to_box=True)
        st.test_mask[name] = np.asarray([in_test_half(it.image) if name in args.test_half else True
                                         for it in items])
    for name, ds in evals.items():
        st.maps[name] = _cached(cache_dir / f"cache-eval-{name}-{key}.npy", lambda ds=ds, n=name: build_cache(
            ViewBatches(ds, None, None, 1, 64), runner, desc=f"trunk {n}")[:, 0])
        st.targets[name] = ds.targets.numpy()
    st.test_mask["heldout"] = np.ones(len(splits.heldout), bool)
    st.timing["cache_eval_s"] = time.perf_counter() - t0
    return st


def _vendor_mask(items: list[Any], vendor: str | None) -> np.ndarray:
    if vendor is None:
        return np.ones(len(items), bool)
    return np.asarray([it.extra.get("vendor") == vendor for it in items])


def sources_for(st: Study, v: Variant) -> list[CacheSource]:
    lm = st.splits.labels
    cats = torch.tensor(lm.sku_category)
    out = []
    if "train" in v.sources.split("+"):
        keep = _vendor_mask(st.splits.train, v.vendors)
        idx = lm.index_of()
        y = torch.tensor([idx[it.sku_id] for it in st.splits.train])
        n = int(keep.sum())
        out.append(CacheSource(st.maps["train"][keep] if not keep.all() else st.maps["train"],
                               y[keep], cats[y[keep]], st.text.ids[keep], st.text.mask[keep],
                               per_epoch=min(n, v.train_per_epoch or n), name="train"))
    if "catalog" in v.sources.split("+"):
        keep = _vendor_mask(st.catalog, v.vendors)
        idx = lm.index_of()
        y = torch.tensor([idx[it.sku_id] for it in st.catalog])
        ids, mask = st.text.vocab.encode([it.title for it in st.catalog], st.cfg.max_title_len)
        maps = st.maps["catalog_views"]
        out.append(CacheSource(maps[keep] if not keep.all() else maps, y[keep], cats[y[keep]],
                               ids[keep], mask[keep], per_epoch=int(keep.sum()) * v.catalog_per_epoch,
                               name="catalog"))
    for n, (items, weight, _) in enumerate(st.extra):
        idx = lm.index_of()
        y = torch.tensor([idx[it.sku_id] for it in items])
        ids, mask = st.text.vocab.encode([it.title for it in items], st.cfg.max_title_len)
        out.append(CacheSource(st.maps[f"extra{n}"], y, cats[y], ids, mask,
                               per_epoch=max(1, round(len(items) * weight)), name=f"extra{n}"))
    return out


def epoch_counts(sources: list[CacheSource], num_classes: int) -> np.ndarray:
    """Expected images per class in one epoch of these sources: the class prior that logit
    adjustment must use (catalog views flatten the training set's long tail)."""
    counts = np.zeros(num_classes)
    for src in sources:
        per_item = (src.per_epoch or len(src.labels)) / len(src.labels)
        counts += per_item * np.bincount(src.labels.numpy(), minlength=num_classes)
    return counts


def score(st: Study, model: Any, v: Variant) -> dict[str, Any]:
    lm = st.splits.labels
    cat_out = predict_on_cache(model, st.maps["catalog"])
    index_rows = _vendor_mask(st.catalog, v.vendors)
    emb_c = cat_out["v"][index_rows]
    emb_c /= np.linalg.norm(emb_c, axis=1, keepdims=True).clip(1e-12)
    row_sku = np.asarray([it.sku_id for it in st.catalog])[index_rows]
    res: dict[str, Any] = {}
    for name in [n for n in st.maps if n in st.test_mask]:  # the scored sets
        keep = st.test_mask[name]
        out = predict_on_cache(model, st.maps[name][keep])
        y = st.targets[name][keep]
        logits = out["sku_logits"]
        r = {"classifier": accuracy_summary(logits, y, lm.train_counts)}
        if name != "heldout":
            q = out["v"] / np.linalg.norm(out["v"], axis=1, keepdims=True).clip(1e-12)
            sims = q @ emb_c.T
            nn_idx = np.argsort(-sims, axis=1)[:, :30]
            r["index"] = index_recall(row_sku[nn_idx], y, lm.sku_ids)
            r["merged"] = merged_accuracy(logits, sims, nn_idx, row_sku, y, lm)
        res[name] = r
    return res


def index_recall(neigh_skus: np.ndarray, y: np.ndarray, sku_ids: list[str]) -> dict[str, float]:
    """recall@1/3 over distinct SKUs of the nearest catalog images."""
    hits1, hits3 = [], []
    for row, t in zip(neigh_skus, y, strict=True):
        distinct = list(dict.fromkeys(row.tolist()))
        hits1.append(distinct[0] == sku_ids[t])
        hits3.append(sku_ids[t] in distinct[:3])
    return {"top1": 100 * float(np.mean(hits1)), "top3": 100 * float(np.mean(hits3))}


def merged_accuracy(logits: np.ndarray, sims: np.ndarray, nn_idx: np.ndarray,
                    row_sku: np.ndarray, y: np.ndarray, lm: Any, weight: float = 0.5,
                    temperature: float = 0.03) -> dict[str, float]:
    """Top-1/3 of the classifier's top-10 merged with the 30 nearest catalog images, as the
    service merges them (no category constraint, no localization: the true crop)."""
    hits1, hits3 = [], []
    for i, t in enumerate(y):
        p = softmax(logits[i].astype(np.float64))
        top = np.argsort(-p)[:10]
        merged = merge_with_neighbours([lm.sku_ids[j] for j in top], p[top],
                                       list(row_sku[nn_idx[i]]), sims[i, nn_idx[i]], k=3,
                                       weight=weight, temperature=temperature)
        ids = [m.sku_id for m in merged]
        hits1.append(bool(ids) and ids[0] == lm.sku_ids[t])
        hits3.append(lm.sku_ids[t] in ids[:3])
    return {"top1": 100 * float(np.mean(hits1)), "top3": 100 * float(np.mean(hits3))}


def cache_setup(args: argparse.Namespace) -> dict[str, Any]:
    """What a trained run depends on besides its variant: the caches it was trained on."""
    return {"data": str(args.data), "input_size": args.input_size, "cut": args.cut,
            "train_views": args.train_views, "catalog_views": args.catalog_views,
            "seed": args.seed, "extra_train": args.extra_train, "style_strength": args.style_strength,
            "rand_conv": args.rand_conv}


def variant_config(st: Study, v: Variant) -> TrainConfig:
    return st.cfg.model_copy(update={
        "text_encoder": v.text_encoder, "tau": v.tau, "epochs": v.epochs, "lr": v.lr,
        "backbone_lr_scale": v.backbone_lr_scale,
        "lam": v.lam, "dropout": v.dropout, "head": v.head, "cosine_scale": v.scale,
        "cosine_margin": v.margin, "mix_style_p": v.mix_style})


def build_variant_model(st: Study, v: Variant) -> Any:
    return builders.build_model(variant_config(st, v), st.splits.labels,
                                st.text if v.text_encoder else None)


def train_variant(st: Study, v: Variant, desc: str) -> tuple[Any, Any]:
    """Build the variant's model and train it on the cached sources: (model, TrainResult)."""
    vcfg = variant_config(st, v)
    model = build_variant_model(st, v)
    sources = sources_for(st, v)
    prior = torch.from_numpy(log_prior_from_counts(epoch_counts(sources, model.cfg.num_classes)))
    reg = TailRegularizers(feature_dropout=v.feature_dropout, mix_style_p=v.mix_style,
                           margin=v.margin * v.scale if v.head == "cosine" else 0.0)
    res = train_on_sources(model, sources, vcfg, log_prior=prior if v.tau else None,
                           reg=reg, desc=desc)
    return model, res


def run_variant(st: Study, name: str, v: Variant) -> dict[str, Any]:
    model, res = train_variant(st, v, name)
    t0 = time.perf_counter()
    scores = score(st, model, v)
    rep = {"name": name, "variant": v.__dict__, "setup": cache_setup(st.args), "scores": scores,
           "training": {"seconds": res.seconds, "images": res.images,
                        "images_per_s": res.images_per_s, "history": res.history},
           "score_seconds": time.perf_counter() - t0}
    run_dir = st.args.out / "runs" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(json_safe(rep), indent=2))
    payload = {"model_config": model.cfg.model_dump(mode="json"), "model_state": model.state_dict()}
    torch.save(payload, run_dir / "model.pt")
    log.info("%s: %s", name, one_line(scores))
    if name in st.args.export.split(","):
        path = export_artifact(model, out_dir=st.args.out / "artifacts", name=f"{st.args.export_prefix}-{name}",
                               labels=st.splits.labels, preprocess=st.pcfg,
                               model_config=model.cfg.model_dump(mode="json"), overwrite=True,
                               evaluation={k: v2["classifier"]["top1"] for k, v2 in scores.items()},
                               checkpoint=payload)
        rep["artifact"] = str(path)
    return rep


def one_line(scores: dict[str, Any]) -> str:
    parts = []
    for name, r in scores.items():
        s = f"{name} cls {r['classifier']['top1']:.1f}"
        if "index" in r:
            s += f" idx {r['index']['top1']:.1f} merged {r['merged']['top1']:.1f}"
        parts.append(s)
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("gensim").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    st = build_study(args)
    log.info("caches: %s", {k: (v.shape, f"{v.nbytes / 2**20:.0f} MiB") for k, v in st.maps.items()})
    summary_path = args.out / "study.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"variants": {}}
    summary["timing"] = {**summary.get("timing", {}), **st.timing}
    summary["setup"] = {**cache_setup(args), "queries": args.query}
    for name in [n for n in args.variants.split(",") if n]:
        v = VARIANTS[name]
        if args.epochs:
            v = replace(v, epochs=args.epochs)
        if args.backbone_lr_scale is not None:
            v = replace(v, backbone_lr_scale=args.backbone_lr_scale)
        rep = run_variant(st, name, v)
        summary["variants"][name] = rep
        summary_path.write_text(json.dumps(json_safe(summary), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
