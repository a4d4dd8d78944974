"""Markdown tables of an online-path evaluation (:mod:`training.online_eval`).

Regenerating a file keeps everything below :data:`NOTES_MARKER` (hand-written notes: how the
inputs were made, what the numbers mean). Re-render from a saved report without re-running::

    .venv/bin/python -m training.online_report REPORT.json docs/results/online-path.md
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

NOTES_MARKER = "<!-- hand-written notes below this line are kept when the tables are regenerated -->"


def _sku_rows(sku: dict[str, dict[str, float]]) -> list[str]:
    rows = ["| recognized image | top-1 | top-3 | head top-1 | tail top-1 | head top-3 | tail top-3 |",
            "|---|---|---|---|---|---|---|"]
    for name, m in sku.items():
        rows.append(f"| {name} | {m['top1']:.1f} | {m['top3']:.1f} | {m['head_top1']:.1f} | "
                    f"{m['tail_top1']:.1f} | {m['head_top3']:.1f} | {m['tail_top3']:.1f} |")
    return rows


def _category_rows(cat: dict[str, dict[str, float]], weight: float) -> list[str]:
    rows = [f"| view | model | search vote (k=30) | fusion (w={weight}) |", "|---|---|---|---|"]
    for view, m in cat.items():
        rows.append(f"| {view} | {m['model']:.1f} | {m['vote']:.1f} | {m['fused']:.1f} |")
    return rows


def _localizer_line(report: dict[str, Any]) -> str:
    t = report.get("localizer_training") or {}
    if not t:
        return ""
    val = t.get("synthetic_val", {})
    return (f"The localizer trained {t.get('steps')} steps ({t.get('images_seen')} synthetic "
            f"scenes, {t.get('train_minutes')} min) on composites of {t.get('train_sources')} "
            f"catalog images; on synthetic scenes of {t.get('val_sources')} held-out catalog "
            f"images its main box reached mean IoU {val.get('main_iou_mean')}.")


def _context_lines(report: dict[str, Any]) -> list[str]:
    c = report.get("context_view")
    if c is None:  # a report written before the share was counted
        return []
    return [f"The context view looked again at {c['looked_again']:.1f} % of the test photos "
            f"(the `context` stage's median is over those only) and answered from the wider "
            f"crop on {c['answered_by_wider_view']:.1f} %.", ""]


def markdown(report: dict[str, Any], command: str) -> str:
    q = report["queries"]
    loc = report["localization"]
    lines = [
        "# Online path on full query photos",
        "",
        f"SICoT artifact `{report['sicot']}`, localizer `{report['localizer']}`. "
        f"{q['total']} queries: {q['validation']} choose the fusion weight, the tables report "
        f"the other {q['test']}. {_localizer_line(report)}",
        "",
        "Reproduce:",
        "",
        f"    {command}",
        "",
        "## SKU recognition (%, test half)",
        "",
        *_sku_rows(report["sku"]),
        "",
        "## Category accuracy (%, test half)",
        "",
        *_category_rows(report["category"], report["fusion_weight"]),
        "",
        "Fusion weight sweep on the validation half (category accuracy of the fused "
        "prediction on the predicted crop, weight = share of the search vote): "
        + ", ".join(f"{w}: {a}" for w, a in report["fusion_sweep_validation"].items()),
        "",
        "## Localization (test half)",
        "",
        "| mean IoU of the main box | IoU >= 0.5 | recall@0.5 | no detection | detections/photo |",
        "|---|---|---|---|---|",
        f"| {loc.get('main_iou_mean', 0):.3f} | {100 * loc.get('main_iou50', 0):.1f} % | "
        f"{100 * loc.get('recall50', 0):.1f} % | {100 * loc.get('no_detection', 0):.1f} % | "
        f"{loc.get('detections_mean', 0):.2f} |",
        "",
        "## Latency per stage (median ms, batch 1, ONNX Runtime, this CPU)",
        "",
        "| " + " | ".join(report["latency_ms"]) + " |",
        "|" + "---|" * len(report["latency_ms"]),
        "| " + " | ".join(f"{v:.1f}" for v in report["latency_ms"].values()) + " |",
        "",
        *_context_lines(report),
    ]
    return "\n".join(lines)


def write_markdown(report: dict[str, Any], path: Path) -> None:
    notes = ""
    if path.is_file():
        old = path.read_text()
        if NOTES_MARKER in old:
            notes = old.split(NOTES_MARKER, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(report, report.get("command", "(command not recorded)"))
    path.write_text(text + "\n" + NOTES_MARKER + (notes or "\n"))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] in ("-h", "--help"):
        sys.stdout.write("usage: python -m training.online_report REPORT.json OUT.md\n")
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    write_markdown(json.loads(Path(args[0]).read_text()), Path(args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
