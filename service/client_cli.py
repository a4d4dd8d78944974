"""``sku-recognize PHOTO...``: recognise photos with a running service, for ops and demos.

Prints one table row per recognised object of each photo (object 1 is the main one; SKU,
title, score, box in pixels), or with ``--json`` one JSON answer per line.  The exit code is 1 when any photo failed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import httpx

from service.api.schemas import RecognizeResponse
from service.client import RetryPolicy, SkuApiError, SkuClient

COLUMNS = ("photo", "obj", "sku", "title", "score", "box")


def _rows(photo: str, answer: RecognizeResponse | None, error: str = "") -> list[dict[str, str]]:
    """One row per recognised object (the main one is object 1), or one row for an error."""
    if answer is None:
        return [{"photo": photo, "obj": "-", "sku": "-", "title": error, "score": "", "box": ""}]
    # a server before multi-object answers sends no objects: its one answer is the main one
    found = [(o.sku, o.box) for o in answer.objects] or [(answer.sku, answer.box)]
    rows = []
    for i, (sku, box_used) in enumerate(found, start=1):
        box = box_used.pixels
        rows.append({"photo": photo, "obj": str(i), "sku": sku.sku_id if sku else "(no match)",
                     "title": sku.title if sku else "", "score": f"{sku.score:.3f}" if sku else "",
                     "box": ",".join(f"{v:.0f}" for v in box)})
    return rows


def _table(rows: list[dict[str, str]]) -> str:
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in COLUMNS}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS) for r in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sku-recognize", description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="+", type=Path, metavar="PHOTO")
    parser.add_argument("--url", default=os.environ.get("SKU_URL", "http://127.0.0.1:8000"),
                        help="service base URL (default: $SKU_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", default=os.environ.get("SKU_API_KEY"),
                        help="API key (default: $SKU_API_KEY)")
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--category")
    parser.add_argument("--min-score", type=float)
    parser.add_argument("--filter", help="label filter, e.g. 'brand=Flora AND size=400ml'")
    parser.add_argument("--max-objects", type=int,
                        help="recognise up to N products per photo (one row each)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per attempt")
    parser.add_argument("--retries", type=int, default=3, help="retries on 429/503")
    parser.add_argument("--json", action="store_true", help="one JSON answer per line")
    args = parser.parse_args(argv)
    failed = 0
    rows = []
    retry = RetryPolicy(attempts=max(1, args.retries + 1))
    with SkuClient(args.url, args.api_key, timeout=args.timeout, retry=retry) as client:
        for photo in args.photos:
            try:
                answer = client.recognize(photo, top_k=args.top_k, category=args.category,
                                          min_score=args.min_score, filter=args.filter,
                                          max_objects=args.max_objects)
            except (SkuApiError, OSError, httpx.HTTPError) as exc:  # one row per photo
                failed += 1
                if args.json:
                    sys.stdout.write(json.dumps({"photo": str(photo), "error": str(exc)}) + "\n")
                rows += _rows(str(photo), None, str(exc))
                continue
            if args.json:
                sys.stdout.write(json.dumps({"photo": str(photo),
                                             **answer.model_dump(mode="json")}) + "\n")
            rows += _rows(str(photo), answer)
    if not args.json:
        sys.stdout.write(_table(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
