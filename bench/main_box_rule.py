"""How the localizer's decoding and main-box rule find the product a customer photographed:
for query photos with true boxes, run the localizer once (at the lowest score threshold of the
sweep), then for every (score threshold, size power, centre power) report the share of photos
whose main box has IoU >= 0.5 with the true box, a wrong main pick (another detection has it)
and the product not found (no detection has it).  Localizer only: no recognizer, no index.

    python bench/main_box_rule.py --localizer LOC --queries dev=Q1.jsonl --queries harsh=Q2.jsonl

``--dump DIR`` also writes, at the artifact's defaults, the photos of the first set whose
product was missed or mis-picked, with the true box (green), the detections (red; the main
box thick) and their scores, for looking at (a selection set only, never a benchmark).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.artifact import load_artifact  # noqa: E402
from service.imageio import decode_photo, decoded_scale, read_image_bytes  # noqa: E402
from service.localize import Detections, LocalizerConfig, box_iou, localize_image, select_main_box  # noqa: E402
from service.settings import OnnxRuntimeSettings  # noqa: E402
from training.data import load_items  # noqa: E402
from training.localizer.evaluate import true_boxes  # noqa: E402
from training.online_eval import LOCALIZATION_CASES, localization_case  # noqa: E402


def detect(loc, manifest: str, threshold: float, limit: int | None, flip: bool | None = None):
    cfg = LocalizerConfig.from_model_cfg(loc.config.model, score_threshold=threshold, flip=flip)
    out = []
    for item in tqdm([it for it in load_items(manifest) if it.box is not None][:limit],
                     desc=Path(manifest).parent.parent.name, unit="img"):
        img = decode_photo(read_image_bytes(item.image), loc.preprocess.input_size)
        tb = true_boxes(item)[:1] * np.tile(decoded_scale(img), 2)
        out.append((localize_image(loc, img, cfg), tb, img.size, item.image))
    return out


def case_of(dets: Detections, tb: np.ndarray, size, threshold: float, size_power: float,
            center_power: float) -> tuple[str, Detections, int | None]:
    """(localization case, detections above ``threshold``, index of the main box)."""
    keep = dets.scores >= threshold
    d = Detections(dets.boxes[keep], dets.scores[keep])
    ious = box_iou(tb, d.boxes)[0] if len(d) else np.zeros(0)
    i = select_main_box(d, size, size_power=size_power, center_power=center_power)
    case = localization_case(float(ious[i]) if i is not None else 0.0,
                             float(ious.max()) if len(d) else 0.0)
    return case, d, i


def score(photos, threshold: float, size_power: float, center_power: float) -> dict[str, float]:
    """Share of the photos in each case of ``training.online_eval.localization_case``."""
    cases: Counter[str] = Counter()
    for dets, tb, size, _ in photos:
        cases[case_of(dets, tb, size, threshold, size_power, center_power)[0]] += 1
    share = {c: 100 * cases[c] / len(photos) for c in LOCALIZATION_CASES}
    good, loose, wrong, missed = (share[c] for c in LOCALIZATION_CASES)
    return {"main_iou50": good + loose, "wrong_pick": wrong, "not_found": missed}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--localizer", required=True)
    p.add_argument("--queries", action="append", required=True, metavar="NAME=MANIFEST")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.25])
    p.add_argument("--size-powers", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--center-powers", type=float, nargs="+", default=[0.0, 1.0, 2.0])
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="the localizer's test-time flip on / off (default: the artifact's)")
    p.add_argument("--dump", default=None, metavar="DIR",
                   help="write the first set's missed / mis-picked photos, boxes drawn")
    args = p.parse_args(argv)
    loc = load_artifact(args.localizer, OnnxRuntimeSettings(intra_op_threads=1))
    default = LocalizerConfig.from_model_cfg(loc.config.model)
    sets = {q.split("=", 1)[0]: detect(loc, q.split("=", 1)[1], min(args.thresholds), args.limit,
                                       args.flip)
            for q in args.queries}
    print(f"artifact defaults: score_threshold {default.score_threshold}, size_power "
          f"{default.size_power}, center_power {default.center_power}, flip {default.flip}; "
          f"this run: flip {default.flip if args.flip is None else args.flip}")
    print("threshold size_pow center_pow | " + " | ".join(
        f"{n}: main IoU>=.5 / wrong pick / not found" for n in sets) + " | mean main IoU>=.5")
    for t, sp, cp in itertools.product(args.thresholds, args.size_powers, args.center_powers):
        rows = [score(ph, t, sp, cp) for ph in sets.values()]
        print(f"{t:9.2f} {sp:8.1f} {cp:10.1f} | " + " | ".join(
            f"{r['main_iou50']:5.1f} / {r['wrong_pick']:4.1f} / {r['not_found']:4.1f}" for r in rows)
            + f" | {np.mean([r['main_iou50'] for r in rows]):5.1f}")
    for name, photos in sets.items():
        merged = merge_rescues(photos, default)
        print(f"{name}: of the {merged[1]} photos whose product was not found at the defaults, "
              f"{merged[0]} ({100 * merged[0] / max(merged[1], 1):.0f} %) would be found by the "
              "main box merged with every detection touching it (IoU >= 0.5)")
    if args.dump:
        n = dump_misses(next(iter(sets.values())), default, loc.preprocess.input_size,
                        Path(args.dump))
        print(f"{n} missed or mis-picked photos drawn in {args.dump}")
    return 0


def merge_rescues(photos, cfg: LocalizerConfig, pad: float = 0.02) -> tuple[int, int]:
    """(not-found photos that the main box merged with the detections touching it would
    find, not-found photos): how many misses are parts of one product boxed apart (a
    diagnosis, not a rule the service applies). Touching: boxes within ``pad`` of the photo's
    longer side."""
    rescued = missed = 0
    for dets, tb, size, _ in photos:
        case, d, main = case_of(dets, tb, size, cfg.score_threshold, cfg.size_power,
                                cfg.center_power)
        if case != LOCALIZATION_CASES[3] or main is None:
            continue
        missed += 1
        m = max(size) * pad
        box = d.boxes[main].copy()
        grow = np.array([-m, -m, m, m])
        touching = box_iou(box + grow, d.boxes + grow)[0] > 0
        merged = np.concatenate([d.boxes[touching, :2].min(0), d.boxes[touching, 2:].max(0)])
        rescued += bool(box_iou(tb, merged)[0, 0] >= 0.5)
    return rescued, missed


def dump_misses(photos, cfg: LocalizerConfig, input_size: int, out: Path) -> int:
    from PIL import ImageDraw

    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for dets, tb, size, path in photos:
        case, d, main = case_of(dets, tb, size, cfg.score_threshold, cfg.size_power,
                                cfg.center_power)
        if case not in LOCALIZATION_CASES[2:]:
            continue
        img = decode_photo(read_image_bytes(path), input_size).convert("RGB")
        draw = ImageDraw.Draw(img)
        draw.rectangle(tuple(float(v) for v in tb[0]), outline=(0, 220, 0), width=2)
        for j, (box, s) in enumerate(zip(d.boxes, d.scores, strict=True)):
            draw.rectangle(tuple(float(v) for v in box), outline=(230, 0, 0),
                           width=3 if j == main else 1)
            draw.text((float(box[0]) + 2, float(box[1]) + 1), f"{s:.2f}", fill=(230, 0, 0))
        img.save(out / f"{'wrong' if case == LOCALIZATION_CASES[2] else 'missed'}-{Path(path).stem}.png")
        n += 1
    return n


if __name__ == "__main__":
    raise SystemExit(main())
