"""``sku-eval-online``: what each step of the online path buys, on full query photos.

For every query photo of a catalog (the manifest's ``box`` is the true product box) the SICoT
artifact recognizes (a) the whole photo, (b) the localizer's main box with the margin, (c) the
true box + 10 % (upper bound) — plain classifier top-k — and (d) the service's own
:class:`service.recognizer.Recognizer` (predicted crop, fused category, category-constrained
top-k, index check). The index is the catalog embedded by the same artifact
(``service.embed``), searched exactly (FAISS Flat, inner product).

Queries are split in two by a hash of their file name: the **validation** half chooses the
category-fusion weight (sweep over ``--weights``), every table reports the **test** half.
Writes ``<out>/report.json`` and, with ``--docs``, the markdown tables
(:mod:`training.online_report`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.artifact import Artifact, load_artifact
from service.binary_index import BinarySpec
from service.embed import embed_items
from service.fusion import fuse, search_vote, softmax
from service.imageio import decode_photo, decoded_scale, read_image_bytes
from service.localize import LocalizerConfig, box_iou, localize_image
from service.preprocess import preprocess, scale_box
from service.recognition import IndexSnapshot, OnlineConfig
from service.recognizer import Recognizer, pool_views
from service.vector_index import IndexSpec, VectorIndex
from training.data import load_items
from training.localizer.evaluate import score_image, summarize, true_boxes
from training.online_report import write_markdown

log = logging.getLogger(__name__)
VIEWS = ("whole", "pred_crop", "true_crop")


class NoMetadata:
    """The SKU store stand-in: the evaluation needs ids, not titles (no Redis round trip)."""

    def get_skus(
        self, version: str, sku_ids: Sequence[str], *, published: bool = False
    ) -> list[dict[str, Any] | None]:
        return [{} for _ in sku_ids]


@dataclass
class QueryRecord:
    sku: int  # class index of the true SKU (-1: unknown to the classifier)
    category: int
    test: bool
    topk: dict[str, list[int]] = field(default_factory=dict)  # view → plain top-3 classes
    p_model: dict[str, np.ndarray] = field(default_factory=dict)
    p_vote: dict[str, np.ndarray] = field(default_factory=dict)
    main_iou: float = float("nan")  # the main box's IoU with the true box
    best_iou: float = float("nan")  # the best IoU of any detection with the true box


def build_snapshot(sicot: Artifact, catalog: str) -> IndexSnapshot:
    items = load_items(catalog)
    emb = embed_items(items, sicot, workers=1)
    ok = [items[i] for i in emb.ok]
    spec = IndexSpec(float_factory="Flat", binary=BinarySpec(kind="none"))
    return IndexSnapshot(
        version="eval", built_at="", index=VectorIndex.build(emb.embeddings, spec),
        row_sku_ids=np.asarray([it.sku_id for it in ok]),
        row_categories=np.asarray([it.category for it in ok]),
        model_version=sicot.config.model_version,
    )


def _views(rec: Recognizer, img, item) -> dict[str, list[Any]]:
    """The photo, the crops of the localizer's main box and the crops of the true box, both
    with the recognizer's crop rule (:meth:`Recognizer.crop_rects`: its artifact's margin,
    then any test-time extra margins)."""
    box, src, _ = rec.locate(img)
    true = scale_box(item.box, decoded_scale(img))
    return {"whole": [img],
            "pred_crop": [img.crop(r) for r in rec.crop_rects(box, src, img.size)],
            "true_crop": [img.crop(r) for r in rec.crop_rects(true, "localizer", img.size)]}


def in_test_half(image: str, val_share: float = 0.5) -> bool:
    """The split rule of every query evaluation: a hash of the file name, so the halves do
    not depend on manifest order; ``val_share`` of the photos tune, the rest are reported."""
    return zlib.crc32(Path(image).name.encode()) % 1000 >= val_share * 1000


def first_pass(rec: Recognizer, snap: IndexSnapshot, items, cfg: OnlineConfig, val_share: float):
    """Plain top-k and the two category distributions per view; localization per photo."""
    idx = rec.sicot.config.labels.index_of()  # type: ignore[union-attr]
    cat_idx = {c: i for i, c in enumerate(rec.categories)}
    loc_cfg = cfg.localizer
    records, ious, n_dets, recalled, n_true, decode_ms = [], [], [], 0, 0, []
    for item in tqdm(items, desc="queries", unit="img"):
        data = read_image_bytes(item.image)
        t0 = time.perf_counter()
        img = decode_photo(data, rec.sicot.preprocess.input_size)
        decode_ms.append((time.perf_counter() - t0) * 1000)
        test = in_test_half(item.image, val_share)
        r = QueryRecord(idx.get(item.sku_id, -1), cat_idx.get(item.category, -1), test)
        if rec.localizer is not None:
            dets = localize_image(rec.localizer, img, loc_cfg)
            tb = true_boxes(item) * np.tile(decoded_scale(img), 2)  # in decoded pixels
            iou, hit = score_image(dets, tb, img.size, loc_cfg)
            r.main_iou = iou
            r.best_iou = float(box_iou(tb[:1], dets.boxes).max()) if len(dets) else 0.0
            if test:
                ious.append(iou)
                n_dets.append(len(dets))
                recalled += hit
                n_true += len(tb)
        for view, crops in _views(rec, img, item).items():
            batch = np.stack([preprocess(c, rec.sicot.preprocess) for c in crops])
            out = pool_views(rec.sicot.model.run(batch), np.zeros(len(crops), np.int64), 1)
            r.topk[view] = np.argsort(-out["sku_logits"][0], kind="stable")[:3].tolist()
            r.p_model[view] = softmax(out["category_logits"][0])
            sims, rows = snap.index.search(out["embedding"].astype(np.float32), cfg.search_k)
            ok = rows[0] >= 0
            cats = [cat_idx.get(str(c), -1) for c in snap.row_categories[rows[0][ok]]]
            r.p_vote[view] = search_vote(np.asarray(cats, np.int64), sims[0][ok],
                                         len(rec.categories), temperature=cfg.vote_temperature)
        records.append(r)
    loc = summarize(ious, recalled, n_true, n_dets).as_dict() if ious else {}
    return records, loc, float(np.median(decode_ms))


def topk_table(records: list[QueryRecord], head: np.ndarray, picks: dict[str, Any]) -> dict:
    """top-1/3 overall/head/tail per row; ``picks[row](record) -> list of class indices``."""
    table = {}
    for name, pick in picks.items():
        hits1, hits3, is_head = [], [], []
        for r in records:
            top = pick(r)
            hits1.append(bool(top[:1]) and top[0] == r.sku)
            hits3.append(r.sku in top[:3])
            is_head.append(r.sku >= 0 and bool(head[r.sku]))
        h1, h3, hd = np.asarray(hits1), np.asarray(hits3), np.asarray(is_head)
        table[name] = {
            "top1": 100 * h1.mean(), "top3": 100 * h3.mean(),
            "head_top1": 100 * h1[hd].mean() if hd.any() else 0.0,
            "tail_top1": 100 * h1[~hd].mean() if (~hd).any() else 0.0,
            "head_top3": 100 * h3[hd].mean() if hd.any() else 0.0,
            "tail_top3": 100 * h3[~hd].mean() if (~hd).any() else 0.0,
        }
    return table


# where the localizer leaves the product, per photo (the rows of ``by_localization``)
LOCALIZATION_CASES = ("main box IoU >= 0.7", "main box IoU 0.5-0.7",
                      "wrong main pick (another box has IoU >= 0.5)",
                      "product not found (no box with IoU >= 0.5)")


def localization_case(main_iou: float, best_iou: float) -> str:
    """The case of a photo from its main box's IoU with the true box and the best IoU of any
    detection with it (one of :data:`LOCALIZATION_CASES`)."""
    if main_iou >= 0.7:
        return LOCALIZATION_CASES[0]
    if main_iou >= 0.5:
        return LOCALIZATION_CASES[1]
    return LOCALIZATION_CASES[2] if best_iou >= 0.5 else LOCALIZATION_CASES[3]


def by_localization(records: list[QueryRecord], service_tops: list[list[int]]) -> dict:
    """Share of the test photos and top-1 of (b), (c), (d) in each localization case: what
    the localizer's box costs, and where."""
    out = {}
    for name in LOCALIZATION_CASES:
        rows = [(r, top) for r, top in zip(records, service_tops, strict=True)
                if localization_case(r.main_iou, r.best_iou) == name]
        if not rows:
            continue
        out[name] = {
            "share": round(100 * len(rows) / len(records), 2),
            **{f"{v}_top1": round(100 * float(np.mean([r.topk[v][:1] == [r.sku] for r, _ in rows])), 2)
               for v in ("pred_crop", "true_crop")},
            "service_top1": round(100 * float(np.mean([top[:1] == [r.sku] for r, top in rows])), 2),
        }
    return out


def category_accuracy(records: list[QueryRecord], view: str, weight: float) -> dict[str, float]:
    y = np.asarray([r.category for r in records])
    pm = np.stack([r.p_model[view] for r in records])
    pv = np.stack([r.p_vote[view] for r in records])
    return {"model": 100 * float((pm.argmax(1) == y).mean()),
            "vote": 100 * float((pv.argmax(1) == y).mean()),
            "fused": 100 * float((fuse(pm, pv, weight).argmax(1) == y).mean())}


def sweep_weight(records: list[QueryRecord], weights: Sequence[float]) -> tuple[float, dict]:
    """The fusion weight with the best category accuracy on the predicted crops (first best)."""
    accs = {w: category_accuracy(records, "pred_crop", w)["fused"] for w in weights}
    best = max(weights, key=lambda w: (accs[w], -abs(w - 0.5)))
    return best, {str(w): round(a, 2) for w, a in accs.items()}


def second_pass(rec: Recognizer, snap: IndexSnapshot, items, records
                ) -> tuple[list, dict, dict]:
    """The service path (constrained top-k + index check): its top-3 per test photo, its
    stage latencies, and how often the context view looked again and answered."""
    idx = rec.sicot.config.labels.index_of()  # type: ignore[union-attr]
    tops: list[list[int]] = []
    stages: dict[str, list[float]] = {}
    looked = answered = 0
    for item, r in tqdm(list(zip(items, records, strict=True)), desc="service path"):
        if not r.test:
            continue
        img = decode_photo(read_image_bytes(item.image), rec.sicot.preprocess.input_size)
        res = rec.recognize(img, snap, NoMetadata())
        tops.append([idx.get(c.sku_id, -2) for c in res.candidates[:3]])
        for k, v in res.timings_ms.items():
            stages.setdefault(k, []).append(v)
        if "context" in res.timings_ms:  # the stage is timed only when it ran
            looked += 1
            main = res.objects[0]
            if main.detection is not None and main.box != tuple(
                    float(v) for v in rec.crop_rects(main.detection, "localizer", img.size)[0]):
                answered += 1  # the wider crop, not the box's own, is what was recognized
    n = max(len(tops), 1)
    context = {"looked_again": round(100 * looked / n, 2),
               "answered_by_wider_view": round(100 * answered / n, 2)}
    return tops, {k: round(float(np.median(v)), 2) for k, v in stages.items()}, context


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    # One query at a time: FAISS's OpenMP threads only contend with ONNX Runtime's (measured
    # on 2 shared cores: Flat search over 3k rows 144 ms median with OpenMP, 1.4 ms without).
    faiss.omp_set_num_threads(1)
    sicot = load_artifact(args.sicot)
    loc = load_artifact(args.localizer) if args.localizer else None
    loc_cfg = LocalizerConfig.from_model_cfg(loc.config.model) if loc else LocalizerConfig()
    cfg = OnlineConfig(margin=args.margin, extra_margins=tuple(args.extra_margins),
                       context_margin=args.context_margin, context_below=args.context_below,
                       search_k=args.search_k, localizer=loc_cfg)
    snap = build_snapshot(sicot, args.catalog)
    items = [it for it in load_items(args.queries) if it.box is not None][: args.limit]
    rec = Recognizer(sicot, loc, cfg)
    records, loc_report, decode_ms = first_pass(rec, snap, items, cfg, args.val_share)
    val = [r for r in records if not r.test]
    test = [r for r in records if r.test]
    if not val or not test:  # too few queries to split: tune and report on all of them
        log.warning("%d queries cannot be split; weights are tuned on the test queries", len(records))
        for r in records:
            r.test = True
        val = test = records
    weight, sweep = sweep_weight(val, args.weights)
    rec.config = replace(cfg, fusion_weight=weight)
    service_tops, latency, context = second_pass(rec, snap, items, records)
    labels = sicot.config.labels
    head = np.asarray(labels.train_counts) >= args.head_min  # type: ignore[union-attr]
    picks: dict[str, Any] = {f"({c}) {v}": (lambda r, v=v: r.topk[v])
                             for c, v in zip("abc", VIEWS, strict=True)}
    localization_cases = by_localization(test, service_tops) if loc else {}
    tops = iter(service_tops)
    table = topk_table(test, head, picks)
    table.update(topk_table(test, head, {"(d) pred_crop + constraint + index": lambda r: next(tops)}))
    return {
        "sicot": sicot.config.model_version,
        "localizer": loc.config.model_version if loc else None,
        "localizer_training": loc.config.evaluation.get("train", {}) if loc else {},
        "queries": {"total": len(records), "validation": len(val), "test": len(test)},
        "fusion_weight": weight, "fusion_sweep_validation": sweep,
        "sku": {k: {m: round(x, 2) for m, x in v.items()} for k, v in table.items()},
        "category": {v: {m: round(x, 2) for m, x in category_accuracy(test, v, weight).items()}
                     for v in VIEWS},
        "localization": loc_report, "by_localization": localization_cases,
        "latency_ms": {"decode": round(decode_ms, 2), **latency},
        "context_view": context,  # % of the test photos
        "config": {k: v for k, v in vars(args).items() if k != "func"},
    }


def query_eval_parser(prog: str, doc: str, *, localizer_required: bool
                      ) -> argparse.ArgumentParser:
    """The arguments every evaluation on query photos takes."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sicot", required=True, help="SICoT artifact folder")
    p.add_argument("--localizer", required=localizer_required, default=None,
                   help="localizer artifact folder")
    p.add_argument("--catalog", required=True, help="catalog manifest to index")
    p.add_argument("--queries", required=True, help="query manifest with true boxes")
    p.add_argument("--out", required=True, help="folder for report.json")
    p.add_argument("--limit", type=int, default=None, help="first N queries only")
    return p


def build_parser() -> argparse.ArgumentParser:
    p = query_eval_parser("sku-eval-online", __doc__, localizer_required=False)
    p.add_argument("--docs", default=None, help="also write this markdown file")
    p.add_argument("--margin", type=float, default=None,
                   help="crop margin around a box (default: the artifact's preprocess.crop_margin)")
    p.add_argument("--extra-margins", type=float, nargs="*", default=[],
                   help="test-time crops: also crop every box with these margins and average "
                   "the model's outputs (the service's extra_crop_margins)")
    p.add_argument("--context-margin", type=float, default=OnlineConfig.context_margin,
                   help="context view: recognize an unsure object again from its box grown "
                   "by this margin, the surer view answers (the service's context_margin)")
    p.add_argument("--context-below", type=float, default=OnlineConfig.context_below,
                   help="best-candidate score under which the context view is tried (0: off)")
    p.add_argument("--search-k", type=int, default=30, help="neighbours of the search vote")
    p.add_argument("--val-share", type=float, default=0.5, help="queries used to tune weights")
    p.add_argument("--weights", type=float, nargs="+",
                   default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
    p.add_argument("--head-min", type=int, default=20, help="train images of a head SKU")
    return p


def save_report(report: dict[str, Any], module: str, argv: Sequence[str] | None,
                out: Path) -> None:
    """``<out>/report.json``, with the command that reproduces it."""
    report["command"] = f".venv/bin/python -m {module} " + " ".join(
        list(sys.argv[1:] if argv is None else argv))
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = evaluate(args)
    save_report(report, "training.online_eval", argv, Path(args.out))
    if args.docs:
        write_markdown(report, Path(args.docs))
    sys.stdout.write(json.dumps({k: report[k] for k in ("sku", "category", "localization", "by_localization",
                                                        "latency_ms", "fusion_weight")},
                                indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
