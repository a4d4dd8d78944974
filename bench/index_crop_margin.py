"""What the index's crop margin does to the online path: the catalog's boxed rows embedded with
margin 0 (the index builder before issue 14) and with the artifact's ``crop_margin`` (what
training and serving use, the builder since issue 14), everything else equal: the same
artifact, localizer, query photos and online path (localize → crop → classify → index check).

    python bench/index_crop_margin.py --sicot demo-output/runs/sicot/artifact/demo-sicot \\
        --localizer demo-output/runs/localizer/artifact \\
        --catalog demo-output/catalog/catalog/manifest.jsonl \\
        --queries demo-output/catalog/queries/manifest.jsonl

A catalog without boxes (the emoji-catalog's and the demo's packshots) is cropped to the whole
image either way, so the margin cannot move it; the script says how many catalog rows have a
box. ``--boxed-references`` measures a catalog whose rows do have boxes (real-shot reference
photos, like Google Product Search's bounding polys or feedback rows): the first query photo
of each SKU (with its true box) is added to the index, the other photos are the queries.
The last row measures the other crop change of issue 14: the online path's crop rounded to
the nearest pixel (before) instead of outwards (floor / ceil, now the one rule).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service import recognizer as recognizer_module  # noqa: E402
from service.artifact import Artifact, load_artifact  # noqa: E402
from service.catalog import CatalogItem  # noqa: E402
from service.imageio import decode_photo, read_image_bytes  # noqa: E402
from service.localize import LocalizerConfig  # noqa: E402
from service.preprocess import crop_rect  # noqa: E402
from service.recognition import (  # noqa: E402
    IndexSnapshot,  # noqa: E402
    OnlineConfig,
    RecognizeOptions,
)
from service.recognizer import Recognizer  # noqa: E402
from training.data import load_items  # noqa: E402
from training.online_eval import NoMetadata, build_snapshot  # noqa: E402


def with_margin(art: Artifact, margin: float) -> Artifact:
    pre = art.preprocess.model_copy(update={"crop_margin": margin})
    return dataclasses.replace(art, config=art.config.model_copy(update={"preprocess": pre}))


def nearest_rect(box: Sequence[float], margin: float,
                 size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The crop rectangle as the online path made it before issue 14 (rounded to nearest)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    mw, mh = (x1 - x0) * margin, (y1 - y0) * margin
    w, h = size
    return (round(max(0.0, x0 - mw)), round(max(0.0, y0 - mh)),
            round(min(float(w), x1 + mw)), round(min(float(h), y1 + mh)))


def write_manifest(items: list[CatalogItem], path: str) -> None:
    """``items`` as a JSONL manifest with absolute image paths."""
    with open(path, "w", encoding="utf-8") as fh:
        for it in items:
            row = {"sku_id": it.sku_id, "image": str(Path(it.image).resolve()),
                   "title": it.title, "category": it.category, "tags": list(it.tags)}
            if it.box is not None:
                row["box"] = list(it.box)
            fh.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sicot", required=True)
    p.add_argument("--localizer", default=None)
    p.add_argument("--catalog", required=True)
    p.add_argument("--queries", required=True)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--boxed-references", action="store_true",
                   help="add each SKU's first query photo (with its box) to the catalog; "
                   "score the other photos")
    args = p.parse_args(argv)

    import faiss

    faiss.omp_set_num_threads(1)
    sicot = load_artifact(args.sicot)
    loc = load_artifact(args.localizer) if args.localizer else None
    loc_cfg = LocalizerConfig.from_model_cfg(loc.config.model) if loc else LocalizerConfig()
    weight = float(sicot.config.evaluation.get("fusion_weight", OnlineConfig.fusion_weight))
    rec = Recognizer(sicot, loc, OnlineConfig(localizer=loc_cfg, fusion_weight=weight))
    catalog = load_items(args.catalog)
    queries = load_items(args.queries)
    catalog_path = args.catalog
    if args.boxed_references:
        first: dict[str, CatalogItem] = {}
        for q in queries:
            if q.box is not None:
                first.setdefault(q.sku_id, q)
        refs = list(first.values())
        queries = [q for q in queries if q not in refs]
        catalog = catalog + refs
        catalog_path = str(Path(args.json or "/tmp/index_crop_margin").with_suffix(".catalog.jsonl"))
        write_manifest(catalog, catalog_path)
    images = [decode_photo(read_image_bytes(q.image), sicot.preprocess.input_size)
              for q in queries]
    served = sicot.preprocess.crop_margin
    out = {"catalog_rows": len(catalog), "rows_with_box": sum(it.box is not None for it in catalog),
           "queries": len(queries), "serving_crop_margin": served, "rows": {}}
    def score(snap: IndexSnapshot) -> dict[str, float]:
        top1 = top3 = 0
        for q, img in zip(queries, images, strict=True):
            res = rec.recognize(img, snap, NoMetadata(), RecognizeOptions(top_k=3))
            ids = [c.sku_id for c in res.candidates[:3]]
            top1 += bool(ids) and ids[0] == q.sku_id
            top3 += q.sku_id in ids
        return {"top1": round(100 * top1 / len(queries), 2),
                "top3": round(100 * top3 / len(queries), 2)}

    for margin in (0.0, served):
        snap = build_snapshot(with_margin(sicot, margin), catalog_path)
        out["rows"][f"index margin {margin:g}"] = score(snap)
    # the online path's crop before issue 14: the grown box rounded to the nearest pixel
    # (expand_box + int(round())) instead of outwards (floor / ceil, the training rule)
    recognizer_module.crop_rect = nearest_rect
    out["rows"][f"index margin {served:g}, online crop rounded to nearest"] = score(snap)
    recognizer_module.crop_rect = crop_rect
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
