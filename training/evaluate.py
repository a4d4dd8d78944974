"""Evaluation: pure metric functions over numpy arrays, and the ``sku-eval`` command.

Metrics follow the SICoT paper (top-1 and top-3, overall and for head / tail classes split by
their number of training images) plus many / medium / few-shot groups, the class-mean top-1
(each class weighs the same, whatever its number of test images), category accuracy and a
post-hoc logit adjustment sweep (Menon et al. 2021: ``logits - tau * log prior``).

Conventions: accuracies are percentages; a prediction is a top-k hit when fewer than k other
classes score at least as high as the true class (ties count against the model, so a constant
output scores 0, not 100).  Groups are defined on the *training* counts of the true class:
head ``>= head_threshold``, tail ``< head_threshold``; many ``> many_threshold``, medium
``head_threshold .. many_threshold``, few ``< head_threshold``.

``sku-eval`` scores an exported artifact with ONNX Runtime and the shared preprocessing, so
its figures are what serving would get; it needs neither torch nor the training code's
dataset classes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

DEFAULT_TAUS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
Counts = Sequence[int] | np.ndarray  # training images per class
log = logging.getLogger(__name__)


def _check(logits: np.ndarray, labels: np.ndarray) -> None:
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels):
        raise ValueError(f"need logits (N,C) and labels (N,), got {logits.shape} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError("labels outside [0, C)")


def true_class_rank(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0-based rank of the true class; ties are counted as ranked above it."""
    _check(logits, labels)
    true = logits[np.arange(len(labels)), labels][:, None]
    return (logits >= true).sum(axis=1) - 1


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    return true_class_rank(logits, labels) < k


def _pct(x: np.ndarray) -> float:
    return float(100.0 * x.mean()) if x.size else float("nan")


def class_groups(train_counts: Counts, head_threshold: int = 20,
                 many_threshold: int = 100) -> dict[str, np.ndarray]:
    """Boolean masks over classes for head/tail and many/medium/few."""
    c = np.asarray(train_counts)
    return {
        "head": c >= head_threshold,
        "tail": c < head_threshold,
        "many": c > many_threshold,
        "medium": (c >= head_threshold) & (c <= many_threshold),
        "few": c < head_threshold,
    }


def per_class_accuracy(hits: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Mean hit rate per class (NaN for classes without test samples)."""
    n = np.bincount(labels, minlength=num_classes).astype(np.float64)
    h = np.bincount(labels, weights=hits.astype(np.float64), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, h / np.maximum(n, 1), np.nan)


def accuracy_summary(
    logits: np.ndarray, labels: np.ndarray, train_counts: Counts, *,
    ks: Sequence[int] = (1, 3), head_threshold: int = 20, many_threshold: int = 100,
) -> dict[str, Any]:
    """Overall, per-group and class-mean accuracies (percent) of one set of logits."""
    _check(logits, labels)
    if len(train_counts) != logits.shape[1]:
        raise ValueError("train_counts needs one entry per class")
    hits = {k: topk_hits(logits, labels, k) for k in ks}
    out: dict[str, Any] = {"n": int(len(labels))}
    out.update({f"top{k}": _pct(h) for k, h in hits.items()})
    pc = per_class_accuracy(hits[ks[0]], labels, logits.shape[1])
    out[f"class_mean_top{ks[0]}"] = float(100 * np.nanmean(pc)) if np.isfinite(pc).any() else float("nan")
    groups: dict[str, Any] = {}
    for name, cls_mask in class_groups(train_counts, head_threshold, many_threshold).items():
        sample_mask = cls_mask[labels]
        g: dict[str, Any] = {"n": int(sample_mask.sum()),
                             "classes": int((cls_mask & np.isfinite(pc)).sum())}
        g.update({f"top{k}": _pct(h[sample_mask]) for k, h in hits.items()})
        groups[name] = g
    out["groups"] = groups
    return out


def log_prior(train_counts: Counts) -> np.ndarray:
    """log of the training class frequencies (a class with no image counts as one)."""
    c = np.maximum(np.asarray(train_counts, dtype=np.float64), 1.0)
    return np.log(c / c.sum())


def adjust_logits(logits: np.ndarray, train_counts: Counts, tau: float) -> np.ndarray:
    """Post-hoc logit adjustment: ``logits - tau * log prior`` (favours rare classes)."""
    if tau == 0:
        return logits
    return logits - tau * log_prior(train_counts)[None, :].astype(logits.dtype)


def tau_sweep(logits: np.ndarray, labels: np.ndarray, train_counts: Counts,
              taus: Sequence[float] = DEFAULT_TAUS, **kw: Any) -> list[dict[str, Any]]:
    return [{"tau": float(t), **accuracy_summary(adjust_logits(logits, train_counts, t), labels,
                                                 train_counts, **kw)} for t in taus]


def category_accuracy(category_logits: np.ndarray, category_labels: np.ndarray) -> float:
    """Top-1 (percent) of the category head."""
    return _pct(topk_hits(category_logits, category_labels, 1))


def evaluate_outputs(
    sku_logits: np.ndarray, labels: np.ndarray, train_counts: Counts, *,
    category_logits: np.ndarray | None = None, sku_category: Sequence[int] | None = None,
    taus: Sequence[float] = DEFAULT_TAUS, head_threshold: int = 20, many_threshold: int = 100,
) -> dict[str, Any]:
    """Everything for one evaluation split: the summary, category accuracies, τ sweep."""
    kw: dict[str, Any] = {"head_threshold": head_threshold, "many_threshold": many_threshold}
    out = accuracy_summary(sku_logits, labels, train_counts, **kw)
    if sku_category is not None:
        cat_of = np.asarray(sku_category)
        cat_labels = cat_of[labels]
        out["category_from_sku_top1"] = _pct(cat_of[sku_logits.argmax(1)] == cat_labels)
        if category_logits is not None:
            out["category_top1"] = category_accuracy(category_logits, cat_labels)
    out["tau_sweep"] = tau_sweep(sku_logits, labels, train_counts, taus, **kw)
    out["thresholds"] = {"head": head_threshold, "many": many_threshold}
    return out


def json_safe(obj: Any) -> Any:
    """NaN / inf → None (strict JSON: jq and browsers reject NaN), recursively."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def format_summary(name: str, res: dict[str, Any]) -> str:
    """One line: ``name: top-1 (top-3) overall, head, tail, class-mean``."""
    def f(x: float | None) -> str:
        return "–" if x is None or not np.isfinite(x) else f"{x:.2f}"

    g = res["groups"]
    line = (f"{name}: n={res['n']} top1 {f(res['top1'])} ({f(res.get('top3'))}) "
            f"| head {f(g['head']['top1'])} | tail {f(g['tail']['top1'])} "
            f"| class-mean {f(res['class_mean_top1'])}")
    if "category_top1" in res:
        line += f" | category {f(res['category_top1'])}"
    return line


# ---------------------------------------------------------------------------- sku-eval CLI


def _score_manifest(artifact: Any, manifest: Path, crop_to_box: bool, margin: float | None,
                    batch_size: int) -> tuple[dict[str, np.ndarray], np.ndarray, int]:
    from service.catalog import read_catalog
    from service.imageio import ImageError, load_image
    from service.preprocess import crop_box, preprocess_batch

    labels_map = artifact.config.labels
    index = labels_map.index_of()
    margin = artifact.preprocess.crop_margin if margin is None else margin
    items = read_catalog(manifest, on_error="skip").items
    known = [it for it in items if it.sku_id in index]
    skipped = len(items) - len(known)
    outs: dict[str, list[np.ndarray]] = {}
    labels: list[int] = []
    for start in tqdm(range(0, len(known), batch_size), desc="sku-eval", unit="batch"):
        imgs = []
        for it in known[start:start + batch_size]:
            try:
                img = load_image(it.image)
                imgs.append(crop_box(img, it.box, margin) if crop_to_box else img)
                labels.append(index[it.sku_id])
            except (ImageError, ValueError) as exc:
                log.warning("%s: %s", it.source, exc)
                skipped += 1
        if imgs:
            for k, v in artifact.model.run(preprocess_batch(imgs, artifact.preprocess)).items():
                outs.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in outs.items()}, np.asarray(labels, np.int64), skipped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sku-eval",
        description="Score an exported SKU artifact on a manifest with ONNX Runtime and the "
        "serving preprocessing: top-1/top-3, head/tail, many/medium/few, class-mean, category "
        "accuracy and a post-hoc logit adjustment sweep.",
    )
    parser.add_argument("--artifact", required=True, type=Path, help="artifact folder")
    parser.add_argument("--manifest", required=True, type=Path, help="JSONL or CSV with labels")
    parser.add_argument("--crop-to-box", action="store_true", help="crop images to their box")
    parser.add_argument("--margin", type=float, default=None,
                        help="box margin (fraction; default: the artifact's preprocess.crop_margin)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads")
    parser.add_argument("--head-threshold", type=int, default=20)
    parser.add_argument("--many-threshold", type=int, default=100)
    parser.add_argument("--taus", type=str, default=",".join(map(str, DEFAULT_TAUS)))
    parser.add_argument("--out", type=Path, help="write the JSON report here")
    parser.add_argument("--save-outputs", type=Path, help="write logits + labels (.npz) here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from service.artifact import load_artifact
    from service.settings import OnnxRuntimeSettings

    artifact = load_artifact(args.artifact, OnnxRuntimeSettings(intra_op_threads=args.threads))
    lm = artifact.config.labels
    if lm is None:
        parser.error(f"{args.artifact} has no label map")
    outs, labels, skipped = _score_manifest(artifact, args.manifest, args.crop_to_box,
                                            args.margin, args.batch_size)
    if not len(labels):
        parser.error("no scorable rows (are the SKUs known to the artifact?)")
    res = evaluate_outputs(
        outs["sku_logits"], labels, lm.train_counts, category_logits=outs.get("category_logits"),
        sku_category=lm.sku_category, taus=[float(t) for t in args.taus.split(",") if t.strip()],
        head_threshold=args.head_threshold, many_threshold=args.many_threshold)
    res.update({"manifest": str(args.manifest), "artifact": str(args.artifact),
                "model_version": artifact.config.model_version, "crop_to_box": args.crop_to_box,
                "skipped": skipped})
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(json_safe(res), indent=2))
    if args.save_outputs:
        np.savez_compressed(args.save_outputs, labels=labels, **outs)  # type: ignore[arg-type]
    sys.stdout.write(format_summary(artifact.config.name, res) + f" | skipped {skipped}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
