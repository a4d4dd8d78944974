"""``sku-eval-objects``: multi-object recall of the online path on query photos.

For ``max_objects`` N (default 1, 3 and 5) the service's own
:class:`~service.recognizer.Recognizer` recognises every query photo, and a photo counts when
its *true* product (the manifest's ``sku_id`` and ``box``) is among the returned objects: an
object whose localizer box has IoU ≥ 0.5 with the true box (the box before the crop margin;
the whole photo when nothing was detected) and whose top-1 is the true SKU.  Photos with
other products in frame (``distractor_boxes`` / ``distractor_skus`` of the demo catalog's
queries) are scored a second way too: the share of *all* their products found so.

The index is the catalog embedded by the same artifact, searched exactly (as
:mod:`training.online_eval`); nothing is tuned here, so every query is reported.  Writes
``<out>/report.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.artifact import load_artifact
from service.catalog import CatalogItem
from service.imageio import decode_photo, decoded_scale, read_image_bytes
from service.localize import LocalizerConfig, box_iou
from service.preprocess import scale_box
from service.recognition import OnlineConfig, Recognition, RecognizeOptions
from service.recognizer import Recognizer
from training.data import load_items
from training.online_eval import NoMetadata, build_snapshot, query_eval_parser, save_report

log = logging.getLogger(__name__)
IOU = 0.5


def products(item: CatalogItem) -> list[tuple[tuple[float, ...], str]]:
    """(box, sku_id) of every product in a query photo: the true one first."""
    assert item.box is not None
    boxes = item.extra.get("distractor_boxes") or []
    skus = item.extra.get("distractor_skus") or []
    return [(tuple(item.box), item.sku_id),
            *((tuple(b), str(s)) for b, s in zip(boxes, skus, strict=True))]


def found(res: Recognition, box: Sequence[float], sku_id: str) -> bool:
    """Some object overlaps ``box`` (IoU ≥ 0.5) and names ``sku_id`` first."""
    for o in res.objects:
        if not o.candidates or o.candidates[0].sku_id != sku_id:
            continue
        if box_iou(np.asarray([o.detection or o.box]), np.asarray([box]))[0, 0] >= IOU:
            return True
    return False


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    faiss.omp_set_num_threads(1)  # one query at a time (see training.online_eval)
    sicot = load_artifact(args.sicot)
    loc = load_artifact(args.localizer)
    loc_cfg = LocalizerConfig.from_model_cfg(loc.config.model)
    weight = float(sicot.config.evaluation.get("fusion_weight", OnlineConfig.fusion_weight))
    rec = Recognizer(sicot, loc, OnlineConfig(localizer=loc_cfg, fusion_weight=weight))
    snap = build_snapshot(sicot, args.catalog)
    items = [it for it in load_items(args.queries) if it.box is not None][: args.limit]
    images = [decode_photo(read_image_bytes(it.image), sicot.preprocess.input_size)
              for it in items]
    table: dict[str, dict[str, float]] = {}
    for n in args.max_objects:
        photos, hits, total, objects, ms = 0, 0, 0, [], []
        for item, img in tqdm(list(zip(items, images, strict=True)), desc=f"max_objects={n}"):
            res = rec.recognize(img, snap, NoMetadata(), RecognizeOptions(top_k=1, max_objects=n))
            scale = decoded_scale(img)  # true boxes in the decoded photo's pixels
            every = [(scale_box(b, scale), s) for b, s in products(item)]
            photos += found(res, *every[0])
            hits += sum(found(res, *p) for p in every)
            total += len(every)
            objects.append(len(res.objects))
            ms.append(res.timings_ms["total"])
        table[str(n)] = {
            "photos": round(100 * photos / len(items), 2),
            "products": round(100 * hits / total, 2),
            "objects_mean": round(float(np.mean(objects)), 2),
            "total_ms_median": round(float(np.median(ms)), 2),
        }
    return {
        "sicot": sicot.config.model_version, "localizer": loc.config.model_version,
        "queries": len(items), "products": sum(len(products(it)) for it in items),
        "fusion_weight": weight, "iou": IOU, "max_objects": table,
        "config": {k: str(v) for k, v in vars(args).items()},
    }


def markdown_table(report: dict[str, Any]) -> str:
    lines = ["| max_objects | true product found, top-1 right (% of photos) | every product "
             "(% of products) | objects/photo | median ms (recognizer path) |",
             "|---|---|---|---|---|"]
    for n, m in report["max_objects"].items():
        lines.append(f"| {n} | {m['photos']:.1f} | {m['products']:.1f} | "
                     f"{m['objects_mean']:.2f} | {m['total_ms_median']:.1f} |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = query_eval_parser("sku-eval-objects", __doc__, localizer_required=True)
    p.add_argument("--max-objects", type=int, nargs="+", default=[1, 3, 5])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if any(not 1 <= n <= 10 for n in args.max_objects):
        sys.stderr.write("sku-eval-objects: --max-objects values must be in [1, 10]\n")
        return 2
    report = evaluate(args)
    save_report(report, "training.multi_object_eval", argv, Path(args.out))
    sys.stdout.write(markdown_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
