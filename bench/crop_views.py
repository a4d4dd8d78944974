"""What test-time crops cost: the service's Recognizer in-process, one ONNX Runtime thread,
with each set of extra crop margins (``extra_crop_margins``), the points interleaved round by
round; prints the median ms per stage of each and the ratio of its total to one crop.

The index is the catalog embedded by the same artifact (FAISS Flat, as ``sku-eval-online``).
What the crops buy in accuracy is ``sku-eval-online --extra-margins`` (docs/results/
accuracy-study.md, section 6).

    python bench/crop_views.py --sicot ART --localizer LOC --catalog CATALOG.jsonl \\
        --queries QUERIES.jsonl --sets "" 0.3 "0.2 0.3"
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.artifact import load_artifact  # noqa: E402
from service.binary_index import configure_faiss  # noqa: E402
from service.imageio import decode_photo, read_image_bytes  # noqa: E402
from service.localize import LocalizerConfig  # noqa: E402
from service.recognition import OnlineConfig  # noqa: E402
from service.recognizer import Recognizer  # noqa: E402
from service.settings import OnnxRuntimeSettings  # noqa: E402
from training.data import load_items  # noqa: E402
from training.online_eval import NoMetadata, build_snapshot  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sicot", required=True)
    p.add_argument("--localizer", required=True)
    p.add_argument("--catalog", required=True, help="catalog manifest to index")
    p.add_argument("--queries", required=True, help="query photos (manifest)")
    p.add_argument("--limit", type=int, default=40, help="photos per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sets", nargs="+", default=["", "0.3", "0.2 0.3"],
                   help="extra-margin sets, each a space-separated list ('' = one crop)")
    args = p.parse_args(argv)
    configure_faiss().omp_set_num_threads(1)
    rt = OnnxRuntimeSettings(intra_op_threads=1)
    sicot, loc = load_artifact(args.sicot, rt), load_artifact(args.localizer, rt)
    snap = build_snapshot(sicot, args.catalog)
    cfg = OnlineConfig(localizer=LocalizerConfig.from_model_cfg(loc.config.model))
    points = {tuple(float(m) for m in s.split()): None for s in args.sets}
    recs = {m: Recognizer(sicot, loc, replace(cfg, extra_margins=m)) for m in points}
    items = load_items(args.queries)[: args.limit]
    imgs = [decode_photo(read_image_bytes(it.image), sicot.preprocess.input_size) for it in items]
    stages: dict[tuple[float, ...], dict[str, list[float]]] = {m: {} for m in recs}
    for _ in range(args.rounds):
        for m, rec in recs.items():
            for img in imgs:
                for k, v in rec.recognize(img, snap, NoMetadata()).timings_ms.items():
                    stages[m].setdefault(k, []).append(v)
    base = statistics.median(stages[next(iter(recs))]["total"])
    for m, by in stages.items():
        med = {k: statistics.median(v) for k, v in by.items()}
        print(f"extra margins {str(list(m)):<12} " + "  ".join(f"{k} {v:.2f}" for k, v in med.items())
              + f"  ms; total / first set {med['total'] / base:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
