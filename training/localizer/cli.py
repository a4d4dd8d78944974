"""``sku-train-localizer``: train the product localizer on synthetic composites of catalog
packshots and export it as an ONNX artifact (kind "localizer").

Example (emoji-catalog, ~20 min on 2 CPU cores)::

    sku-train-localizer --catalog /data/emoji/catalog/manifest.jsonl \\
        --out artifacts/localizer-emoji --time-limit-min 20 \\
        --eval-manifest /data/emoji/queries/manifest.jsonl

The query photos given by ``--eval-manifest`` are only scored, never trained on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.settings import SettingsError, load_settings
from training.localizer.settings import DEFAULT_FREEZE_BLOCKS, LocalizerTrainConfig
from training.localizer.synth import SceneConfig
from training.localizer.train import train


def build_parser() -> argparse.ArgumentParser:
    d = LocalizerTrainConfig(catalogs=[], out="")
    p = argparse.ArgumentParser(
        prog="sku-train-localizer",
        description="Train the product localizer (CenterNet-style head at stride 8 on a small "
        "backbone) on synthetic scenes composited from catalog packshots, export it to "
        "an ONNX artifact folder, and report localization metrics.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--catalog", action="append", required=True, metavar="MANIFEST",
                   help="catalog manifest (JSONL/CSV) whose images are products on a plain "
                   "background; repeat to combine catalogs")
    p.add_argument("--out", required=True, help="artifact folder to write")
    p.add_argument("--name", default=d.name, help="artifact name")
    p.add_argument("--backbone", default=d.backbone, help="registered backbone")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="random init (tests); default loads the backbone's ImageNet weights")
    p.add_argument("--freeze-blocks", type=int, default=None,
                   help="freeze the stem and this many backbone blocks (default: the backbone's "
                   f"own, {DEFAULT_FREEZE_BLOCKS}, else -1); -1 (or all the blocks the "
                   "localizer uses: 11 for efficientnet_lite0, 16 with --top-stride 32); the "
                   "frozen blocks (all, or the first K) run in ONNX Runtime during training, "
                   "~10x faster on CPU, the later ones train in torch")
    p.add_argument("--input-size", type=int, default=d.input_size,
                   help="square input side (a multiple of 16)")
    p.add_argument("--neck-channels", type=int, default=d.neck_channels)
    p.add_argument("--top-stride", type=int, choices=(16, 32), default=d.top_stride,
                   help="coarsest backbone feature map the neck uses (32: the stride-32 "
                   "blocks run too, more context for large products)")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps at most")
    p.add_argument("--time-limit-min", type=float, default=None,
                   help="stop training after this many minutes (the LR schedule follows)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--workers", type=int, default=d.workers, help="scene-rendering workers")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--val-scenes", type=int, default=d.val_scenes,
                   help="synthetic validation scenes of held-out products (0: none)")
    p.add_argument("--max-sources", type=int, default=None,
                   help="use at most this many source images")
    p.add_argument("--scene", default=None, metavar="JSON_FILE",
                   help="overrides of the synthetic scene config (a JSON object of "
                   "training.localizer.synth.SceneConfig fields, e.g. {\"max_distractors\": 6})")
    p.add_argument("--eval-manifest", default=None,
                   help="query manifest with true boxes to score after training (not trained on)")
    p.add_argument("--eval-limit", type=int, default=None, help="score only the first N queries")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        scene = load_scene_overrides(args.scene) if args.scene else {}
        cfg = load_settings(
            LocalizerTrainConfig, catalogs=args.catalog, out=args.out, name=args.name,
            backbone=args.backbone, pretrained=args.pretrained, freeze_blocks=args.freeze_blocks,
            input_size=args.input_size, neck_channels=args.neck_channels, top_stride=args.top_stride,
            steps=args.steps,
            time_limit_min=args.time_limit_min, batch_size=args.batch_size, lr=args.lr,
            workers=args.workers, threads=args.threads, seed=args.seed,
            val_scenes=args.val_scenes, max_sources=args.max_sources, scene=scene,
        )
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None
    summary = train(cfg)
    if args.eval_manifest:
        summary["queries"] = evaluate_queries(args.out, args.eval_manifest, args.eval_limit)
    sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    return 0


def load_scene_overrides(path: str) -> dict[str, Any]:
    """The :class:`SceneConfig` fields set by the JSON object in ``path`` (the settings
    validate their types; the rest keep their defaults); :class:`SettingsError` names an
    unreadable file or an unknown field."""
    try:
        overrides = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SettingsError(f"--scene {path}: {exc}") from None
    if not isinstance(overrides, dict):
        raise SettingsError(f"--scene {path}: expected a JSON object")
    known = {f.name for f in dataclasses.fields(SceneConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SettingsError(f"--scene {path}: unknown field(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
    return overrides


def evaluate_queries(artifact_dir: str, manifest: str, limit: int | None) -> dict:
    from service.artifact import load_artifact, write_artifact_config
    from training.data import load_items
    from training.localizer.evaluate import evaluate_manifest

    art = load_artifact(artifact_dir)
    items = load_items(manifest)[:limit] if limit else load_items(manifest)
    report, latency = evaluate_manifest(art, items)
    result = {"manifest": manifest, **report.as_dict(), "latency": latency}
    evaluation = {**art.config.evaluation, "queries": result}
    write_artifact_config(artifact_dir, art.config.model_copy(update={"evaluation": evaluation}))
    return result


if __name__ == "__main__":
    raise SystemExit(main())
