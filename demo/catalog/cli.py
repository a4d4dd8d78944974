"""``sku-demo-catalog``: generate the synthetic packaged-goods demo catalog.

sku-demo-catalog --out data/demo --skus 200
sku-demo-catalog --out data/demo-2k --skus 2000 --jobs 8 --contact-sheet demo.png
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .generate import SPLITS, generate_demo_catalog

DESCRIPTION = """\
Generate a deterministic synthetic catalog of packaged goods (drinks, snacks, cosmetics,
personal care, household, dairy, canned food, coffee & tea): generated brands with their own
colours, patterns and logos, SKUs = brand + product + variant + size, drawn as shaded
bottles, cans, jars, tubes, bags, boxes and cartons.

Writes, into --out, the layout of the emoji-catalog benchmark:
  catalog/<sku_id>.jpg + manifest.jsonl   one clean packshot per SKU (--size px)
  train/<sku_id>_<k>.jpg + manifest.jsonl long-tailed augmented seller photos, noisy titles
  queries/qNNNNN.jpg + manifest.jsonl     real-shot photos (--query-size px) with the true
                                          box, distractor SKUs and their boxes
  skus.jsonl, stats.json                  per-SKU plan (train_count, head) and statistics

Same seed and arguments give byte-identical images and manifests, whatever --jobs.
Train counts follow count = clip(Poisson(max * (q / (x + q)) ** a), min, max) over a seeded
popularity rank x = (rank - 0.5) / n_skus."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sku-demo-catalog",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--skus", type=int, default=200, help="number of SKUs (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--size", type=int, default=128, help="catalog / train image size in px (128)")
    p.add_argument("--query-size", type=int, default=224, help="query photo size in px (224)")
    p.add_argument("--queries-per-sku", type=int, default=2, help="query photos per SKU (2)")
    p.add_argument("--max-per-sku", type=int, default=100, help="most train images of a SKU (100)")
    p.add_argument("--min-per-sku", type=int, default=1, help="fewest train images of a SKU (1)")
    p.add_argument("--zipf-a", type=float, default=1.6, help="long-tail exponent a (1.6)")
    p.add_argument(
        "--zipf-q",
        type=float,
        default=0.08,
        help="long-tail offset q: smaller = fewer head SKUs (0.08)",
    )
    p.add_argument(
        "--head-min",
        type=int,
        default=20,
        help="SKUs with at least this many train images are 'head' (20)",
    )
    p.add_argument(
        "--splits",
        default=",".join(SPLITS),
        help="comma-separated splits to write (default: catalog,train,queries)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes; the output is the same for any value (1)",
    )
    p.add_argument(
        "--contact-sheet",
        type=Path,
        default=None,
        help="also write a PNG overview (catalog, train, queries with boxes) here",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, log or summary")
    return p


def _summary(stats: dict, out: Path, sheet: Path | None) -> str:
    im, ht, per = stats["images"], stats["head_tail"], stats["train_per_sku"]
    lines = [
        f"demo catalog: {stats['sku_count']} SKUs of {stats['brand_count']} brands in "
        f"{len(stats['categories'])} categories, {stats['seconds']:.1f} s",
        f"  catalog  {im['catalog']:7d} images",
        f"  train    {im['train']:7d} images  (per SKU: max {per['max']}, median "
        f"{per['median']:g}, {per['skus_with_1']} SKUs with one)",
        f"  queries  {im['queries']:7d} images",
        f"  head {ht['head_skus']} SKUs / {ht['head_images']} images (>= {ht['head_min_images']} "
        f"each), tail {ht['tail_skus']} SKUs / {ht['tail_images']} images",
        f"  written to {out.resolve()}",
    ]
    if sheet is not None:
        lines.append(f"  contact sheet {sheet.resolve()}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    try:
        stats = generate_demo_catalog(
            args.out,
            skus=args.skus,
            seed=args.seed,
            size=args.size,
            query_size=args.query_size,
            queries_per_sku=args.queries_per_sku,
            max_per_sku=args.max_per_sku,
            min_per_sku=args.min_per_sku,
            zipf_a=args.zipf_a,
            zipf_q=args.zipf_q,
            head_min=args.head_min,
            splits=splits,
            jobs=args.jobs,
            progress=not args.quiet,
        )
    except ValueError as exc:
        sys.stderr.write(f"sku-demo-catalog: error: {exc}\n")
        return 2
    if args.contact_sheet is not None:
        from .contact_sheet import make_contact_sheet

        make_contact_sheet(args.out, args.contact_sheet)
    if not args.quiet:
        sys.stdout.write(_summary(stats, args.out, args.contact_sheet))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
