"""The end of a run (rank 0): final evaluation, artifact export, reports, summary."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training import checkpoint, report
from training.builders import Splits
from training.data import SkuDataset, eval_loader
from training.engine import predict
from training.evaluate import evaluate_outputs, format_summary, json_safe
from training.export import export_artifact, verify_onnx
from training.models import SICoTModel
from training.settings import TrainConfig

log = logging.getLogger(__name__)


def evaluate_splits(cfg: TrainConfig, model: SICoTModel, splits: Splits,
                    evals: dict[str, SkuDataset], device: torch.device) -> dict[str, Any]:
    """Predict every evaluation split, score it, save its outputs to ``eval/<split>.npz``."""
    results: dict[str, Any] = {}
    (cfg.output_dir / "eval").mkdir(parents=True, exist_ok=True)
    lm = splits.labels
    for name, ds in evals.items():
        outs = predict(model, eval_loader(ds, cfg.eval_batch_size, cfg.workers), device,
                       cfg.channels_last, desc=name)
        arrays = {**outs, "train_counts": np.asarray(lm.train_counts)}
        np.savez_compressed(cfg.output_dir / "eval" / f"{name}.npz", **arrays)  # type: ignore[arg-type]
        results[name] = evaluate_outputs(
            outs["sku_logits"], outs["labels"], lm.train_counts,
            category_logits=outs["category_logits"], sku_category=lm.sku_category,
            taus=cfg.eval_taus, head_threshold=cfg.head_threshold,
            many_threshold=cfg.many_threshold)
    return results


def compact(results: dict[str, Any]) -> dict[str, Any]:
    """The few figures that go into the artifact's config.json."""
    out = {}
    for name, r in results.items():
        g = r["groups"]
        out[name] = {"n": r["n"], "top1": r["top1"], "top3": r["top3"],
                     "head_top1": g["head"]["top1"], "tail_top1": g["tail"]["top1"],
                     "class_mean_top1": r["class_mean_top1"],
                     "category_top1": r.get("category_top1")}
    return out


def _probe_batch(evals: dict[str, SkuDataset], input_size: int) -> np.ndarray:
    for ds in evals.values():
        return torch.stack([ds[i]["image"] for i in range(min(4, len(ds)))]).numpy()
    return np.random.default_rng(0).standard_normal((2, 3, input_size, input_size), np.float32)


def finish_run(cfg: TrainConfig, model: SICoTModel, payload: dict[str, Any], splits: Splits,
               evals: dict[str, SkuDataset], pcfg: Any, device: torch.device, *,
               train_seconds: float) -> dict[str, Any]:
    out = cfg.output_dir
    best = out / checkpoint.BEST_FILE
    if cfg.export_from == "best" and best.is_file():
        payload = checkpoint.load_checkpoint(best)
        model.load_state_dict(payload["model_state"])
        log.info("exporting the best checkpoint (step %d)", payload["step"])
    results = evaluate_splits(cfg, model, splits, evals, device)
    artifact = None
    onnx_diff = None
    if cfg.export:
        model.cpu()
        artifact = export_artifact(
            model, out_dir=out / "artifact", name=cfg.name, labels=splits.labels,
            preprocess=pcfg, model_config=payload["model_config"],
            evaluation=json_safe(compact(results)),
            checkpoint=payload, overwrite=True)
        onnx_diff = verify_onnx(artifact, model, _probe_batch(evals, pcfg.input_size))
        model.to(device)
    counts = np.asarray(splits.labels.train_counts)
    rep = {
        "name": cfg.name, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "text_encoder": cfg.text_encoder, "config": cfg.to_json_dict(),
        "data": {"classes": splits.labels.num_classes,
                 "categories": len(splits.labels.categories),
                 "train_images": len(splits.train), "heldout_images": len(splits.heldout),
                 "query_images": len(splits.queries),
                 "head_classes": int((counts >= cfg.head_threshold).sum()),
                 "tail_classes": int((counts < cfg.head_threshold).sum())},
        "training": {"seconds": train_seconds, "steps": payload["step"],
                     "history": payload["history"]},
        "evaluation": results,
        "artifact": str(artifact) if artifact else None, "onnx_max_abs_diff": onnx_diff,
    }
    (out / "report.json").write_text(json.dumps(json_safe(rep), indent=2))
    report.write_run_report(out)
    lines = [f"sku-train {cfg.name}: {splits.labels.num_classes} classes, {len(splits.train)} "
             f"train images, {payload['step']} steps in {train_seconds:.0f} s"]
    lines += ["  " + format_summary(name, r) for name, r in results.items()]
    if artifact:
        lines.append(f"  artifact: {artifact} (ONNX vs torch max abs diff {onnx_diff:.1e})")
    lines.append(f"  report: {out / 'report.md'}")
    sys.stdout.write("\n".join(lines) + "\n")
    return rep


def load_report(run_dir: str | Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((Path(run_dir) / "report.json").read_text())
    return data
