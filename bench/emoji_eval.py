"""Benchmark on the emoji-catalog data set (issue 3): baseline vs SICoT vs SICoT + logit
adjustment vs the Table-3 text-encoder ablation, plus two reference rows that train nothing of
ours, all under ONE budget, evaluated on held-out training-style images and on the query photos
cropped to their true box (+10 %).

Budget (the defaults: the recipe of ``training.recipe``, chosen by ``bench/accuracy_study.py``):
* EfficientNet-Lite0 (ImageNet) at 160 px, stem + blocks 0-11 frozen.  The frozen trunk's
  maps are computed ONCE (ONNX Runtime, float16, the study's caches and file names, so a run
  beside the study reuses them) for 4 views of every training image (the clean image and 3
  with random resized crop + the style-breaking augmentation of training.augment) and for 16
  *customer views* of every catalog packshot (training.customer_views).
* Every variant trains blocks 12-15 + head conv + projection + cosine classifier with margin
  (+ text stream) on those caches: same seed, same data order, same schedule (SGD, cosine,
  warm-up), MixStyle and channel dropout on the cached maps; 10,000 training images + 4
  customer views of each catalog image per epoch.  Post-hoc logit adjustment (τ sweep) is
  scored on every variant.
* References from the frozen ImageNet features of the clean view (same 160 px): nearest
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

from bench import accuracy_study as study  # noqa: E402
from bench import emoji_eval_refs as refs  # noqa: E402
from bench.emoji_eval_report import write_markdown  # noqa: E402
from training.evaluate import evaluate_outputs, json_safe  # noqa: E402
from training.export import export_artifact  # noqa: E402
from training.recipe import RECIPE  # noqa: E402
from training.settings import TrainConfig  # noqa: E402
from training.trunk_cache import predict_on_cache  # noqa: E402

log = logging.getLogger("emoji_eval")
ROOT = Path(__file__).resolve().parents[1]
# the benchmark lives in ../shared beside the repository (``--dataset`` to point elsewhere)
DEFAULT_DATASET = ROOT.parent / "shared" / "datasets" / "emoji-catalog"
# name → (text encoder, training τ); the first is the baseline, the second the main SICoT row
# (every row trains with the recipe, logit adjustment included: Table 2 is baseline vs SICoT
# under the shipped recipe; the pre-recipe rows of τ = 0 are in git history)
VARIANTS: dict[str, tuple[str | None, float]] = {
    "baseline": (None, RECIPE.tau),
    "sicot": ("bilinear_attention", RECIPE.tau),
    "sicot_mean": ("mean", RECIPE.tau),
    "sicot_bilstm": ("bilstm", RECIPE.tau),
    "sicot_bilstm_attention": ("bilstm_attention", RECIPE.tau),
}
EXPORT = "sicot"  # the recipe's row is the shipped artifact (never chosen on query scores)
SPLITS = ("queries", "heldout")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="emoji_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=DEFAULT_DATASET,
                   help="the emoji-catalog benchmark (its materialize.py renders --data)")
    p.add_argument("--data", type=Path, default=Path("/tmp/emoji-full"),
                   help="materialized data set (made with materialize.py if stats.json is missing)")
    p.add_argument("--skus", type=int, default=0, help="materialize only N SKUs (0 = all)")
    p.add_argument("--out", type=Path, default=Path("/tmp/emoji_eval"), help="work/output folder")
    p.add_argument("--cache-dir", type=Path,
                   help="the study's trunk caches, if not in --out (accuracy_study --cache-dir)")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "results",
                   help="where emoji-catalog.md and its plot go")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset")
    p.add_argument("--input-size", type=int, default=RECIPE.input_size)
    p.add_argument("--cut", "--freeze-blocks", dest="cut", type=int, default=RECIPE.freeze_blocks,
                   help="trunk = stem + blocks[:K]")
    p.add_argument("--train-views", "--views", dest="train_views", type=int,
                   default=RECIPE.train_views, help="cached views per training image")
    p.add_argument("--catalog-views", type=int, default=RECIPE.catalog_views,
                   help="cached customer views per catalog image")
    p.add_argument("--epochs", type=int, default=RECIPE.epochs)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads while training (1: on shared cores 2 threads ran 4x "
                   "slower, OpenMP barriers wait for the descheduled thread)")
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
    cmd = [sys.executable, str(args.dataset / "materialize.py"), "--out", str(args.data), "--jobs", "2"]
    if args.skus:
        cmd += ["--skus", str(args.skus)]
    log.info("materializing: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)


def build_caches(args: argparse.Namespace) -> tuple[study.Study, dict[str, Any]]:
    """The study's caches (reused when ``--out`` holds them) + the OpenMoji query crops (all
    of them, as Tables 2-4 always reported)."""
    ns = study.parse_args([  # the study's own defaults for every cache setting not given here
        "--data", str(args.data), "--out", str(args.out), "--input-size", str(args.input_size),
        "--cut", str(args.cut), "--train-views", str(args.train_views),
        "--catalog-views", str(args.catalog_views), "--batch-size", str(args.batch_size),
        "--seed", str(args.seed), "--threads", str(args.threads),
        "--query", f"queries={args.data / 'queries' / 'manifest.jsonl'}",
        *(["--cache-dir", str(args.cache_dir)] if args.cache_dir else [])])
    st = study.build_study(ns)
    lm = st.splits.labels
    index = lm.index_of()
    train_y = np.asarray([index[it.sku_id] for it in st.splits.train])
    info: dict[str, Any] = {
        "trunk_engine": "ort", "seconds": sum(st.timing.values()),
        "bytes": int(sum(m.nbytes for m in st.maps.values())),
        "train_map_shape": list(st.maps["train"].shape),
        "catalog_views_shape": list(st.maps["catalog_views"].shape),
        "timing": st.timing,
        "targets": {**st.targets, "train": train_y},
        "categories": torch.tensor(lm.sku_category)[torch.from_numpy(train_y)]}
    return st, info


def run_variant(name: str, encoder: str | None, tau: float, st: study.Study,
                info: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    v = study.recipe_variant(text_encoder=encoder, tau=tau, epochs=args.epochs)
    model, training = trained_before(st, v, args.out / "runs")
    if model is None:
        model, res = study.train_variant(st, v, name)
        training = {"seconds": res.seconds, "images": res.images,
                    "images_per_s": res.images_per_s, "history": res.history}
    lm = st.splits.labels
    run_dir = args.out / "runs" / name
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    evaluation = {}
    for split in SPLITS:
        outs = predict_on_cache(model, st.maps[split])
        labels = info["targets"][split]
        np.savez_compressed(run_dir / "eval" / f"{split}.npz", sku_logits=outs["sku_logits"],
                            labels=labels, train_counts=np.asarray(lm.train_counts))
        evaluation[split] = evaluate_outputs(
            outs["sku_logits"], labels, lm.train_counts, category_logits=outs["category_logits"],
            sku_category=lm.sku_category, taus=st.cfg.eval_taus)
    rep = {"name": name, "text_encoder": encoder, "train_tau": tau, "variant": v.__dict__,
           "setup": study.cache_setup(st.args),
           "evaluation": evaluation,
           "training": training}
    (run_dir / "report.json").write_text(json.dumps(json_safe(rep), indent=2))
    torch.save({"model_config": model.cfg.model_dump(mode="json"),
                "model_state": model.state_dict()}, run_dir / "model.pt")
    q = evaluation["queries"]
    log.info("%s: queries top-1 %.2f (head %.2f tail %.2f), %.0f img/s", name, q["top1"],
             q["groups"]["head"]["top1"], q["groups"]["tail"]["top1"], training["images_per_s"])
    rep["_model"] = model
    return rep


def trained_before(st: study.Study, v: study.Variant,
                   runs: Path) -> tuple[Any, dict[str, Any] | None]:
    """A run under ``runs`` (this bench's or the study's, on the same caches) that trained
    exactly this variant on the same caches (data, size, cut, views, seed): its model and
    training record instead of training it again (same caches, seed and data order give the
    same weights)."""
    want = json.dumps(json_safe({"variant": v.__dict__, "setup": study.cache_setup(st.args)}),
                      sort_keys=True)
    for rep_path in sorted(runs.glob("*/report.json")):
        rep = json.loads(rep_path.read_text())
        weights = rep_path.parent / "model.pt"
        have = {"variant": rep.get("variant"), "setup": rep.get("setup")}
        if json.dumps(have, sort_keys=True) == want and weights.is_file():
            model = study.build_variant_model(st, v)
            model.load_state_dict(torch.load(weights, map_location="cpu")["model_state"])
            log.info("reusing %s (the same variant, trained before)", rep_path.parent)
            return model, {**rep["training"], "reused_from": str(rep_path.parent)}
    return None, None


def export_recipe(reps: dict[str, dict[str, Any]], st: study.Study,
                  args: argparse.Namespace) -> dict[str, Any]:
    """Export the recipe's row (:data:`EXPORT`) and re-score it end-to-end with sku-eval."""
    if EXPORT not in reps:
        return {}
    model = reps[EXPORT]["_model"]
    cached_top1 = reps[EXPORT]["evaluation"]["queries"]["top1"]
    path = export_artifact(model, out_dir=args.out / "artifacts", name=f"emoji-{EXPORT}",
                           labels=st.splits.labels, preprocess=st.pcfg,
                           model_config=model.cfg.model_dump(mode="json"), overwrite=True,
                           evaluation={"queries_top1": cached_top1})
    from training.evaluate import main as sku_eval

    out_json = args.out / "artifact_queries_eval.json"
    sku_eval(["--artifact", str(path), "--manifest", str(args.data / "queries" / "manifest.jsonl"),
              "--crop-to-box", "--threads", "1", "--out", str(out_json)])
    e2e = json.loads(out_json.read_text())
    return {"variant": EXPORT, "path": str(path), "onnx_queries_top1": e2e["top1"],
            "onnx_queries_top3": e2e["top3"], "cached_queries_top1": cached_top1}


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
    st, info = build_caches(args)
    cfg = st.cfg.model_copy(update={"query_manifest": args.data / "queries" / "manifest.jsonl"})
    reference = refs.reference_rows(cfg, st.splits, st.maps, info, args.out / "runs")
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
        reps[name] = run_variant(name, encoder, tau, st, info, args)
        write_all(args, argv, cfg, st, info, reference, reps, {}, skipped, t_start)
    artifact = {} if args.no_export else export_recipe(reps, st, args)
    md, wall = write_all(args, argv, cfg, st, info, reference, reps, artifact, skipped, t_start)
    sys.stdout.write(f"wrote {args.out / 'report.json'} and {md} in {wall / 60:.1f} min\n")
    return 0


def write_all(args: argparse.Namespace, argv: list[str] | None, cfg: TrainConfig,
              st: study.Study, info: dict[str, Any], reference: dict[str, Any],
              reps: dict[str, dict[str, Any]], artifact: dict[str, Any], skipped: list[str],
              t_start: float) -> tuple[Path, float]:
    """JSON report + Markdown (rewritten after every variant, so a cut-off run leaves both)."""
    wall = time.perf_counter() - t_start
    splits = st.splits
    summary = {
        "command": "bench/emoji_eval.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "config": cfg.to_json_dict(), "args": {k: str(v) for k, v in vars(args).items()},
        "recipe": RECIPE.__dict__,
        "data": {"classes": splits.labels.num_classes, "train_images": len(splits.train),
                 "heldout_images": len(splits.heldout), "query_images": len(st.maps["queries"]),
                 "catalog_images": len(st.catalog),
                 "head_classes": int((np.asarray(splits.labels.train_counts) >= 20).sum()),
                 "vocab": len(st.text.vocab)},
        "cache": {k: v for k, v in info.items() if k not in ("targets", "categories")},
        "reference": reference, "artifact": artifact, "wall_seconds": wall, "skipped": skipped,
        "variants": {n: {k: v for k, v in r.items() if k != "_model"} for n, r in reps.items()},
    }
    (args.out / "report.json").write_text(json.dumps(json_safe(summary), indent=2))
    return write_markdown(summary, args.out / "runs", args.docs), wall


if __name__ == "__main__":
    raise SystemExit(main())
