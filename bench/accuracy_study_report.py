"""Markdown tables of ``bench/accuracy_study.py`` runs (issue 9), one row per variant.

Reads one or more ``study.json`` files (a study may be run in several invocations, with
different caches) and, for variants whose artifact went through the full online path, the
``training.online_eval`` report given as ``--online VARIANT:SET=report.json``. Prints the
tables (or writes them with ``--out``) for ``docs/results/accuracy-study.md``.

    .venv/bin/python bench/accuracy_study_report.py /work/runs/study/study.json \\
        --online cosine:b1=/work/runs/online/cosine-b1/report.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

CLS_SETS = ("b1", "b2", "dev", "harsh")


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.1f}"


def crop_cells(scores: dict[str, Any], name: str) -> list[str]:
    r = scores.get(name)
    if r is None:
        return ["–"] * 4
    c = r["classifier"]
    return [f"{_f(c['top1'])} / {_f(c['top3'])}",
            f"{_f(c['groups']['head']['top1'])} / {_f(c['groups']['tail']['top1'])}",
            _f(r["index"]["top1"]), _f(r["merged"]["top1"])]


def variant_table(studies: list[dict[str, Any]]) -> str:
    head = ["variant", "setup", "train min"]
    for s in CLS_SETS:
        head += [f"{s} crop top-1 / top-3", f"{s} head / tail", f"{s} index@1", f"{s} cls+index"]
    head.append("held-out top-1")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for st in studies:
        setup = st.get("setup", {})
        tag = f"{setup.get('input_size', '?')} px, cut {setup.get('cut', '?')}"
        for name, rep in st["variants"].items():
            sc = rep["scores"]
            cells = [name, tag, f"{rep['training']['seconds'] / 60:.0f}"]
            for s in CLS_SETS:
                cells += crop_cells(sc, s)
            cells.append(_f(sc["heldout"]["classifier"]["top1"]) if "heldout" in sc else "–")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def online_table(online: dict[str, dict[str, Path]]) -> str:
    head = ["variant", "set", "(a) whole", "(b) pred crop", "(c) true crop",
            "(d) full path top-1 / top-3", "(d) head / tail", "main-box IoU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, sets in online.items():
        for sname, path in sets.items():
            rep = json.loads(Path(path).read_text())
            sku = rep["sku"]
            d = sku["(d) pred_crop + constraint + index"]
            iou = rep.get("localization", {}).get("mean_iou")
            lines.append("| " + " | ".join([
                variant, sname, _f(sku["(a) whole"]["top1"]), _f(sku["(b) pred_crop"]["top1"]),
                _f(sku["(c) true_crop"]["top1"]), f"{_f(d['top1'])} / {_f(d['top3'])}",
                f"{_f(d['head_top1'])} / {_f(d['tail_top1'])}",
                f"{iou:.3f}" if iou is not None else "–"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="accuracy_study_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("studies", nargs="+", type=Path, help="study.json files")
    p.add_argument("--online", action="append", default=[], metavar="VARIANT:SET=REPORT")
    p.add_argument("--out", type=Path, help="write the tables here (default: stdout)")
    args = p.parse_args(argv)
    studies = [json.loads(path.read_text()) for path in args.studies]
    online: dict[str, dict[str, Path]] = {}
    for spec in args.online:
        key, path = spec.split("=", 1)
        variant, sname = key.split(":", 1)
        online.setdefault(variant, {})[sname] = Path(path)
    text = "## Every variant (true-box crops)\n\n" + variant_table(studies) + "\n"
    if online:
        text += "\n## Full online path (whole photo)\n\n" + online_table(online) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
