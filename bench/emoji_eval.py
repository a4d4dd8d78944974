"""Benchmark on the emoji-catalog data set (issue 3): baseline vs SICoT vs SICoT + logit
adjustment vs the Table-3 text-encoder ablation, plus two reference rows that train nothing of
ours, all under ONE budget, evaluated on held-out training-style images and on the query photos
cropped to their true box (+10 %).

Budget (the defaults; ~75 min on 2 shared CPU cores for everything):
* EfficientNet-Lite0 (ImageNet) at 112 px, stem + blocks 0-13 frozen.  The frozen trunk's
  block-14 input maps (192x4x4) are computed ONCE (ONNX Runtime) for V=4 views of every
  training image: the clean image and 3 views with random resized crop + the style-breaking
  augmentation of training.augment, stored float16 (training.trunk_cache).
* Every variant trains blocks 14-15 + head conv + projection + classifier (+ text stream) on
  that cache: same seed, same data order, same schedule (SGD, cosine, warm-up), feature
  dropout on the cached maps.  Post-hoc logit adjustment (τ sweep) is scored on every variant.
* References from the frozen ImageNet features of the clean view (same 112 px): nearest
  catalog image (cosine kNN, class score = best of its catalog images) and a linear
  classifier (+ post-hoc LA τ = 1).

Writes ``<out>/report.json``, run folders ``<out>/runs/<variant>`` (report.json + eval/*.npz),
the best SICoT variant's serving artifact (``<out>/artifacts/``, re-scored end-to-end with
ONNX Runtime by ``sku-eval``), ``docs/results/emoji-catalog.md`` and the per-class plot.

    .venv/bin/python bench/emoji_eval.py                       # the documented run
    .venv/bin/python bench/emoji_eval.py --skus 100 --epochs 1 --data /tmp/emoji-100 \\
        --out /tmp/emoji-smoke --docs /tmp/emoji-smoke/docs    # smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import emoji_eval_refs as refs  # noqa: E402
from bench.emoji_eval_report import write_markdown  # noqa: E402
from training import builders  # noqa: E402
from training.augment import BatchAugment  # noqa: E402
from training.data import ImageSource, SkuDataset, TrainTransform, known_items, load_items  # noqa: E402
from training.distributed import DistInfo  # noqa: E402
from training.evaluate import evaluate_outputs, json_safe  # noqa: E402
from training.export import export_artifact  # noqa: E402
from training.losses import log_prior_from_counts  # noqa: E402
from training.settings import TrainConfig  # noqa: E402
from training.trunk_cache import (  # noqa: E402
    TrunkRunner,
    ViewBatches,
    build_cache,
    predict_on_cache,
    train_on_cache,
)

log = logging.getLogger("emoji_eval")
ROOT = Path(__file__).resolve().parents[1]
DATASET = Path("/work/shared/datasets/emoji-catalog")
# name → (text encoder, training τ); the first is the baseline, the second the main SICoT row
VARIANTS: dict[str, tuple[str | None, float]] = {
    "baseline": (None, 0.0),
    "sicot": ("bilinear_attention", 0.0),
    "sicot_la": ("bilinear_attention", 1.0),
    "sicot_mean": ("mean", 0.0),
    "sicot_bilstm": ("bilstm", 0.0),
    "sicot_bilstm_attention": ("bilstm_attention", 0.0),
}
SPLITS = ("queries", "heldout")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="emoji_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("/tmp/emoji-full"),
                   help="materialized data set (made with materialize.py if stats.json is missing)")
    p.add_argument("--skus", type=int, default=0, help="materialize only N SKUs (0 = all)")
    p.add_argument("--out", type=Path, default=Path("/tmp/emoji_eval"), help="work/output folder")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "results",
                   help="where emoji-catalog.md and its plot go")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    p.add_argument("--input-size", type=int, default=112)
    p.add_argument("--freeze-blocks", type=int, default=14, help="trunk = stem + blocks[:K]")
    p.add_argument("--views", type=int, default=4, help="cached views per image (1 clean + V-1)")
    p.add_argument("--style", type=float, default=1.0, help="style-breaker strength (augment)")
    p.add_argument("--strength", type=float, default=1.0, help="photometric/affine strength")
    p.add_argument("--erasing", type=float, default=0.25, help="random erasing probability")
    p.add_argument("--crop-scale-min", type=float, default=0.35)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--feature-dropout", type=float, default=0.1, help="on cached maps")
    p.add_argument("--dropout", type=float, default=0.3, help="on pooled features")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads while training (1: on shared cores 2 threads ran 4x "
                   "slower, OpenMP barriers wait for the descheduled thread)")
    p.add_argument("--trunk-engine", choices=["ort", "torch"], default="ort")
    p.add_argument("--no-export", action="store_true", help="skip the artifact export")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite the Markdown/plot from <out>/report.json and <out>/runs")
    p.add_argument("--deadline-min", type=float, default=75.0,
                   help="skip the remaining variants (recorded) when the next one would end "
                   "after this many minutes of wall time (0 = never)")
    return p.parse_args(argv)


def ensure_data(args: argparse.Namespace) -> None:
    if (args.data / "stats.json").is_file() and (args.data / "queries" / "manifest.jsonl").is_file():
        return
    cmd = [sys.executable, str(DATASET / "materialize.py"), "--out", str(args.data), "--jobs", "2"]
    if args.skus:
        cmd += ["--skus", str(args.skus)]
    log.info("materializing: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def make_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        train_manifest=args.data / "train" / "manifest.jsonl",
        query_manifest=args.data / "queries" / "manifest.jsonl",
        input_size=args.input_size, freeze_blocks=args.freeze_blocks, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        schedule="cosine", warmup_epochs=0.25, dropout=args.dropout, seed=args.seed,
        crop_scale_min=args.crop_scale_min, augment_strength=args.strength,
        style_strength=args.style, erasing_p=args.erasing, text_encoder="bilinear_attention",
        output_dir=args.out / "runs", export=False)


def cached(path: Path, make: Any) -> np.ndarray:
    if path.is_file():
        log.info("reusing %s", path)
        return np.load(path)
    arr = make()
    np.save(path, arr)
    return arr


def build_caches(args: argparse.Namespace, cfg: TrainConfig, splits: builders.Splits,
                 model: Any, pcfg: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    source = ImageSource(cache="bytes")
    catalog = known_items(load_items(args.data / "catalog" / "manifest.jsonl"), splits.labels)
    source.preload(splits.train + splits.heldout + splits.queries + catalog)
    lm = splits.labels
    sets = {"train": SkuDataset(splits.train, lm, source, pcfg),
            "heldout": SkuDataset(splits.heldout, lm, source, pcfg),
            "queries": SkuDataset(splits.queries, lm, source, pcfg, crop_margin=cfg.crop_margin),
            "catalog": SkuDataset(catalog, lm, source, pcfg)}
    aug_ds = SkuDataset(splits.train, lm, source, pcfg, seed=cfg.seed, train_transform=TrainTransform(
        pcfg, scale=(cfg.crop_scale_min, 1.0)))
    augment = BatchAugment(pcfg.mean, pcfg.std, strength=cfg.augment_strength,
                           style=cfg.style_strength, erasing_p=cfg.erasing_p)
    runner = TrunkRunner(model.backbone, cfg.freeze_blocks, pcfg.input_size, args.trunk_engine,
                         onnx_path=args.out / "trunk.onnx")
    probe = torch.stack([sets["queries"][i]["image"] for i in range(min(8, len(sets["queries"])))])
    info: dict[str, Any] = {"trunk_engine": args.trunk_engine,
                            "trunk_vs_torch_max_abs_diff": runner.max_diff(probe)}
    key = f"k{cfg.freeze_blocks}-s{pcfg.input_size}-seed{cfg.seed}-st{cfg.style_strength}"
    caches: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    n0 = runner.images
    caches["train"] = cached(args.out / f"cache-train-{key}-v{args.views}.npy", lambda: build_cache(
        ViewBatches(sets["train"], aug_ds, augment, args.views, 64, cfg.seed), runner,
        workers=1, desc="trunk cache train"))
    for name in ("heldout", "queries", "catalog"):
        caches[name] = cached(args.out / f"cache-{name}-{key}.npy", lambda n=name: build_cache(
            ViewBatches(sets[n], None, None, 1, 64), runner, workers=1, desc=f"trunk {n}")[:, 0])
    secs = time.perf_counter() - t0
    info.update({"seconds": secs, "images": runner.images - n0,
                 "images_per_s": (runner.images - n0) / max(secs, 1e-9),
                 "bytes": int(sum(c.nbytes for c in caches.values())),
                 "train_map_shape": list(caches["train"].shape)})
    sidecar = args.out / f"cache-info-{key}-v{args.views}.json"
    if info["images"] == 0 and sidecar.is_file():  # all reused: report how they were built
        info.update({**json.loads(sidecar.read_text()), "reused": True})
    elif info["images"]:
        keys = ("seconds", "images", "images_per_s", "bytes", "train_map_shape")
        sidecar.write_text(json.dumps({k: info[k] for k in keys}))
    info["targets"] = {n: ds.targets.numpy() for n, ds in sets.items()}
    info["categories"] = sets["train"].categories
    return caches, info


def run_variant(name: str, encoder: str | None, tau: float, cfg: TrainConfig,
                splits: builders.Splits, text: builders.TextData, caches: dict[str, np.ndarray],
                info: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    vcfg = cfg.model_copy(update={"text_encoder": encoder, "tau": tau})
    model = builders.build_model(vcfg, splits.labels, text if encoder else None)
    lm = splits.labels
    prior = torch.from_numpy(log_prior_from_counts(lm.train_counts))
    res = train_on_cache(model, caches["train"], torch.from_numpy(info["targets"]["train"]),
                         info["categories"], vcfg, ids=text.ids if encoder else None,
                         mask=text.mask if encoder else None, log_prior=prior if tau else None,
                         feature_dropout=args.feature_dropout, desc=name)
    run_dir = args.out / "runs" / name
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    evaluation = {}
    for split in SPLITS:
        outs = predict_on_cache(model, caches[split])
        labels = info["targets"][split]
        np.savez_compressed(run_dir / "eval" / f"{split}.npz", sku_logits=outs["sku_logits"],
                            labels=labels, train_counts=np.asarray(lm.train_counts))
        evaluation[split] = evaluate_outputs(
            outs["sku_logits"], labels, lm.train_counts, category_logits=outs["category_logits"],
            sku_category=lm.sku_category, taus=cfg.eval_taus)
    rep = {"name": name, "text_encoder": encoder, "train_tau": tau, "evaluation": evaluation,
           "training": {"seconds": res.seconds, "images": res.images,
                        "images_per_s": res.images_per_s, "history": res.history}}
    (run_dir / "report.json").write_text(json.dumps(json_safe(rep), indent=2))
    torch.save({"model_config": model.cfg.model_dump(mode="json"),
                "model_state": model.state_dict()}, run_dir / "model.pt")
    q = evaluation["queries"]
    log.info("%s: queries top-1 %.2f (head %.2f tail %.2f), %.0f img/s", name, q["top1"],
             q["groups"]["head"]["top1"], q["groups"]["tail"]["top1"], res.images_per_s)
    rep["_model"] = model
    return rep


def export_best(reps: dict[str, dict[str, Any]], cfg: TrainConfig, splits: builders.Splits,
                pcfg: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Export the best SICoT variant (query top-1) and re-score it end-to-end with sku-eval."""
    sicot = {n: r for n, r in reps.items() if r["text_encoder"]}
    if not sicot:
        return {}
    name = max(sicot, key=lambda n: sicot[n]["evaluation"]["queries"]["top1"])
    model = sicot[name]["_model"]
    path = export_artifact(model, out_dir=args.out / "artifacts", name=f"emoji-{name}",
                           labels=splits.labels, preprocess=pcfg,
                           model_config=model.cfg.model_dump(mode="json"), overwrite=True,
                           evaluation={"queries_top1": sicot[name]["evaluation"]["queries"]["top1"]})
    from training.evaluate import main as sku_eval

    out_json = args.out / "artifact_queries_eval.json"
    sku_eval(["--artifact", str(path), "--manifest", str(cfg.query_manifest), "--crop-to-box",
              "--threads", "1", "--out", str(out_json)])
    e2e = json.loads(out_json.read_text())
    return {"variant": name, "path": str(path), "onnx_queries_top1": e2e["top1"],
            "onnx_queries_top3": e2e["top3"],
            "cached_queries_top1": sicot[name]["evaluation"]["queries"]["top1"]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("gensim").setLevel(logging.WARNING)
    t_start = time.perf_counter()
    if args.report_only:
        summary = json.loads((args.out / "report.json").read_text())
        sys.stdout.write(f"wrote {write_markdown(summary, args.out / 'runs', args.docs)}\n")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    ensure_data(args)
    torch.set_num_threads(args.threads)
    cfg = make_config(args)
    splits = builders.prepare_splits(cfg)
    text = builders.prepare_text(cfg, splits.train, DistInfo())
    assert text is not None
    base_model = builders.build_model(cfg.model_copy(update={"text_encoder": None}),
                                      splits.labels, None)
    pcfg = builders.preprocess_config(cfg, base_model)
    caches, info = build_caches(args, cfg, splits, base_model, pcfg)
    reference = refs.reference_rows(cfg, splits, caches, info, args.out / "runs")
    reps: dict[str, dict[str, Any]] = {}
    skipped: list[str] = []
    names = [v for v in args.variants.split(",") if v]
    for name in names:
        elapsed = time.perf_counter() - t_start
        per_variant = max((r["training"]["seconds"] for r in reps.values()), default=0.0)
        if args.deadline_min and elapsed + 1.1 * per_variant > 60 * args.deadline_min:
            log.warning("skipping %s: %.0f min elapsed, deadline %s min", name, elapsed / 60,
                        args.deadline_min)
            skipped.append(name)
            continue
        encoder, tau = VARIANTS[name]
        reps[name] = run_variant(name, encoder, tau, cfg, splits, text, caches, info, args)
        write_all(args, argv, cfg, splits, text, info, reference, reps, {}, skipped, t_start)
    artifact = {} if args.no_export else export_best(reps, cfg, splits, pcfg, args)
    md, wall = write_all(args, argv, cfg, splits, text, info, reference, reps, artifact, skipped,
                         t_start)
    sys.stdout.write(f"wrote {args.out / 'report.json'} and {md} in {wall / 60:.1f} min\n")
    return 0


def write_all(args: argparse.Namespace, argv: list[str] | None, cfg: TrainConfig,
              splits: builders.Splits, text: builders.TextData, info: dict[str, Any],
              reference: dict[str, Any], reps: dict[str, dict[str, Any]],
              artifact: dict[str, Any], skipped: list[str], t_start: float) -> tuple[Path, float]:
    """JSON report + Markdown (rewritten after every variant, so a cut-off run leaves both)."""
    wall = time.perf_counter() - t_start
    summary = {
        "command": "bench/emoji_eval.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": cfg.to_json_dict(), "args": {k: str(v) for k, v in vars(args).items()},
        "data": {"classes": splits.labels.num_classes, "train_images": len(splits.train),
                 "heldout_images": len(splits.heldout), "query_images": len(splits.queries),
                 "head_classes": int((np.asarray(splits.labels.train_counts) >= 20).sum()),
                 "vocab": len(text.vocab)},
        "cache": {k: v for k, v in info.items() if k not in ("targets", "categories")},
        "reference": reference, "artifact": artifact, "wall_seconds": wall, "skipped": skipped,
        "variants": {n: {k: v for k, v in r.items() if k != "_model"} for n, r in reps.items()},
    }
    (args.out / "report.json").write_text(json.dumps(json_safe(summary), indent=2))
    return write_markdown(summary, args.out / "runs", args.docs), wall


if __name__ == "__main__":
    raise SystemExit(main())
