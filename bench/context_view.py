"""What the context view buys: the service's Recognizer in-process on query photos, each
photo's main object recognized from its crop (one view, the default) and again from its
localizer box grown by each candidate ``context_margin``; then every (margin, threshold)
rule of ``OnlineConfig.context_margin`` / ``context_below`` is applied to the same outputs
with the service's own decision (:func:`service.recognizer.best_score`), so one pass over the
photos scores the whole grid.

Prints, per query set and rule, top-1 / top-3 of the main object, the share of photos that
take the second model call (the latency cost: one more ~5 ms crop for those only) and the
share whose answer comes from the wider view, split by whether the main box hits the true
box (IoU >= 0.5) or not, and the latency against one view measured in the same run: the mean
of the service's total per request plus, for the requests that look twice, the measured time
of recognizing their wider crop alone (model, search and fusion; the localizer is not run
twice). ``--out`` writes the same as JSON.

    python bench/context_view.py --sicot ART --localizer LOC --catalog CATALOG.jsonl \\
        --queries dev=DEV.jsonl --queries harsh=HARSH.jsonl --margins 0.5 1.0 3.0 \\
        --below 0.3 0.5 0.7 1.01
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.artifact import load_artifact  # noqa: E402
from service.binary_index import configure_faiss  # noqa: E402
from service.fusion import FUSION_WEIGHT  # noqa: E402
from service.imageio import decode_photo, decoded_scale, read_image_bytes  # noqa: E402
from service.localize import LocalizerConfig, box_iou  # noqa: E402
from service.preprocess import crop_rect, scale_box  # noqa: E402
from service.recognition import OnlineConfig, Recognition, RecognizeOptions  # noqa: E402
from service.recognizer import Recognizer  # noqa: E402
from service.settings import OnnxRuntimeSettings  # noqa: E402
from training.data import load_items  # noqa: E402
from training.online_eval import NoMetadata, build_snapshot  # noqa: E402


@dataclass
class View:
    score: float  # the best candidate's score (what the service gates and chooses on)
    top: list[str]  # the SKU ids of the first three candidates


@dataclass
class Photo:
    sku: str
    hit: bool  # the main box has IoU >= 0.5 with the true box
    primary: View
    wide: dict[float, View] = field(default_factory=dict)  # by context margin; none: no box
    primary_ms: float = 0.0  # the service's total for the one-view request
    wide_ms: dict[float, float] = field(default_factory=dict)  # a wider crop alone (no localizer)


def view_of(res: Recognition) -> View:
    obj = res.objects[0]
    return View(obj.candidates[0].score if obj.candidates else 0.0,
                [c.sku_id for c in obj.candidates[:3]])


def choose(p: Photo, margin: float, below: float) -> tuple[View, bool, bool]:
    """(the view that answers, whether the second call ran, whether the wider view won):
    the rule of :meth:`Recognizer.recognize`."""
    wide = p.wide.get(margin)
    if wide is None or p.primary.score >= below:
        return p.primary, False, False
    return (wide, True, True) if wide.score > p.primary.score else (p.primary, True, False)


def score_rule(photos: list[Photo], margin: float | None, below: float) -> dict[str, float]:
    rows = [choose(p, margin, below) if margin is not None else (p.primary, False, False)
            for p in photos]
    out: dict[str, float] = {}
    # latency: every request pays the one-view path, those that look twice also a crop
    base = float(np.mean([p.primary_ms for p in photos]))
    extra = float(np.mean([p.wide_ms[margin] if second else 0.0
                           for p, (_, second, _) in zip(photos, rows, strict=True)]))
    out["mean ms"] = round(base + extra, 2)
    out["ms / one view"] = round((base + extra) / base, 3) if base > 0 else 1.0
    for name, sel in (("all", [True] * len(photos)), ("box hit", [p.hit for p in photos]),
                      ("box missed", [not p.hit for p in photos])):
        idx = [i for i, s in enumerate(sel) if s]
        if not idx:
            continue
        top1 = [rows[i][0].top[:1] == [photos[i].sku] for i in idx]
        out[f"{name} top1"] = round(100 * float(np.mean(top1)), 2)
        if name == "all":
            out["top3"] = round(100 * float(np.mean([photos[i].sku in rows[i][0].top for i in idx])), 2)
            out["second call %"] = round(100 * float(np.mean([rows[i][1] for i in idx])), 2)
            out["wider view answers %"] = round(100 * float(np.mean([rows[i][2] for i in idx])), 2)
        else:
            out[f"{name} share %"] = round(100 * len(idx) / len(photos), 2)
    return out


def collect(rec: Recognizer, snap, items, margins: list[float], desc: str) -> list[Photo]:
    photos = []
    for item in tqdm(items, desc=desc, unit="img"):
        img = decode_photo(read_image_bytes(item.image), rec.sicot.preprocess.input_size)
        res = rec.recognize(img, snap, NoMetadata())
        obj = res.objects[0]
        true = np.asarray([scale_box(item.box, decoded_scale(img))], np.float32)
        hit = False
        if obj.detection is not None:
            hit = float(box_iou(true, np.asarray([obj.detection], np.float32))[0, 0]) >= 0.5
        p = Photo(item.sku_id, hit, view_of(res), primary_ms=res.timings_ms["total"])
        if obj.box_source == "localizer" and obj.detection is not None:
            for m in margins:
                roi = crop_rect(obj.detection, m, img.size)
                wide = rec.recognize(img, snap, NoMetadata(), RecognizeOptions(roi=roi))
                p.wide[m] = view_of(wide)
                p.wide_ms[m] = wide.timings_ms["total"] - wide.timings_ms.get("metadata", 0.0)
        photos.append(p)
    return photos


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sicot", required=True, help="SICoT artifact folder")
    p.add_argument("--localizer", required=True, help="localizer artifact folder")
    p.add_argument("--catalog", required=True, help="catalog manifest to index")
    p.add_argument("--queries", action="append", required=True, metavar="NAME=MANIFEST",
                   help="query set with true boxes (all its photos are scored)")
    p.add_argument("--margins", type=float, nargs="+", default=[0.5, 1.0, 3.0],
                   help="candidate context margins")
    p.add_argument("--below", type=float, nargs="+", default=[0.3, 0.5, 0.7, 1.01],
                   help="candidate thresholds (above 1: always look twice)")
    p.add_argument("--limit", type=int, default=None, help="first N photos of each set")
    p.add_argument("--out", default=None, help="write the table as JSON here")
    args = p.parse_args(argv)
    configure_faiss().omp_set_num_threads(1)
    rt = OnnxRuntimeSettings(intra_op_threads=1)
    sicot, loc = load_artifact(args.sicot, rt), load_artifact(args.localizer, rt)
    snap = build_snapshot(sicot, args.catalog)
    cfg = OnlineConfig(context_margin=None,  # one view; the rules are applied below
                       localizer=LocalizerConfig.from_model_cfg(loc.config.model),
                       fusion_weight=float(sicot.config.evaluation.get("fusion_weight",
                                                                       FUSION_WEIGHT)))
    rec = Recognizer(sicot, loc, cfg)
    report: dict[str, dict[str, dict[str, float]]] = {}
    rules: list[tuple[float | None, float]] = [(None, 0.0)] + [
        (m, b) for m in args.margins for b in args.below]
    for spec in args.queries:
        name, _, manifest = spec.partition("=")
        items = [it for it in load_items(manifest) if it.box is not None][: args.limit]
        photos = collect(rec, snap, items, args.margins, name)
        report[name] = {("one view" if m is None else f"margin {m} below {b}"):
                        score_rule(photos, m, b) for m, b in rules}
    names = list(report)
    print("rule".ljust(26) + "".join(f"{n} top1 / top3 / 2nd call % / wider % / hit / missed".ljust(56)
                                     for n in names) + "mean top1   ms / one view")
    for key in report[names[0]]:
        cells = [report[n][key] for n in names]
        line = key.ljust(26) + "".join(
            f"{c['all top1']:.1f} / {c['top3']:.1f} / {c['second call %']:.1f} / "
            f"{c['wider view answers %']:.1f} / {c.get('box hit top1', 0):.1f} / "
            f"{c.get('box missed top1', 0):.1f}".ljust(56) for c in cells)
        print(line + f"{np.mean([c['all top1'] for c in cells]):.2f}".ljust(12)
              + f"{np.mean([c['ms / one view'] for c in cells]):.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
