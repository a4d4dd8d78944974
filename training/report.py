"""Reports of training runs: Markdown tables in the layout of the SICoT paper and a plot.

* one run (``write_run_report``, called by ``sku-train``): ``report.md`` and ``per_class.png``
  next to the run's ``report.json``;
* several runs (``sku-report``): baseline | SICoT | gain for top-1 (top-3), overall (Table 2)
  and head / tail (Table 4), many / medium / few, class-mean; extra rows (other runs, post-hoc
  logit adjustment); a Table-3 style text-encoder ablation; per-class accuracy plots.

Everything is read from run folders (``report.json`` + ``eval/<split>.npz``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.evaluate import per_class_accuracy, topk_hits

GROUPS = ("head", "tail", "many", "medium", "few")


@dataclass
class Run:
    path: Path
    report: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.report.get("name") or self.path.name)

    @property
    def encoder(self) -> str:
        return str(self.report.get("text_encoder") or "none (baseline)")

    def result(self, split: str) -> dict[str, Any] | None:
        res: dict[str, Any] | None = self.report.get("evaluation", {}).get(split)
        return res

    def outputs(self, split: str) -> dict[str, np.ndarray] | None:
        f = self.path / "eval" / f"{split}.npz"
        if not f.is_file():
            return None
        with np.load(f) as z:
            return {k: z[k] for k in z.files}


def load_run(path: str | Path) -> Run:
    path = Path(path)
    return Run(path, json.loads((path / "report.json").read_text()))


def _f(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _g(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _pair(r: dict[str, Any]) -> str:
    return f"{_f(r.get('top1'))} ({_f(r.get('top3'))})"


def _sub(b: float | None, a: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _gain(a: dict[str, Any], b: dict[str, Any]) -> str:
    return f"{_f(_sub(b['top1'], a['top1']))} ({_f(_sub(b['top3'], a['top3']))})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _sweep_row(res: dict[str, Any], tau: float) -> dict[str, Any] | None:
    for row in res.get("tau_sweep", []):
        if abs(row["tau"] - tau) < 1e-9:
            return dict(row)
    return None


def _group_label(name: str, th: dict[str, int]) -> str:
    h, m = th.get("head", 20), th.get("many", 100)
    return {"head": f"{h} – max", "tail": f"1 – {h - 1}", "many": f"> {m}",
            "medium": f"{h} – {m}", "few": f"< {h}"}[name]


def comparison_tables(base: Run, main: Run, split: str) -> str:
    """Tables 2 and 4 of the paper (+ many/medium/few, class-mean) for one split."""
    a, b = base.result(split), main.result(split)
    if a is None or b is None:
        return f"_no `{split}` evaluation in both runs_\n"
    out = [f"Overall top-1 (top-3) %, {a['n']} images:\n",
           _table(["", "Baseline", main.encoder, "Gain"],
                  [["overall", _pair(a), _pair(b), _gain(a, b)],
                   ["class-mean top-1", _f(a["class_mean_top1"]), _f(b["class_mean_top1"]),
                    _f(_sub(b["class_mean_top1"], a["class_mean_top1"]))],
                   ["category top-1", _f(a.get("category_top1")), _f(b.get("category_top1")),
                    _f(_sub(b.get("category_top1"), a.get("category_top1")))]]),
           "\nBy number of training images of the true class:\n"]
    rows = []
    for g in GROUPS:
        ga, gb = a["groups"][g], b["groups"][g]
        rows.append([g, _group_label(g, a.get("thresholds", {})), str(ga["classes"]),
                     str(ga["n"]), _pair(ga), _pair(gb), _gain(ga, gb)])
    out.append(_table(["group", "#train", "classes", "images", "Baseline", main.encoder, "Gain"],
                      rows))
    return "\n".join(out) + "\n"


def variants_table(runs: Sequence[Run], split: str, taus: Sequence[float] = (1.0,)) -> str:
    """Each run as trained, and with post-hoc logit adjustment at each τ."""
    rows = []
    for run in runs:
        res = run.result(split)
        if res is None:
            continue
        for tau in (0.0, *taus):
            r = res if tau == 0 else _sweep_row(res, tau)
            if r is None:
                continue
            label = run.name + ("" if tau == 0 else f" + post-hoc LA τ={tau:g}")
            g = r["groups"]
            rows.append([label, _pair(r), _pair(g["head"]), _pair(g["tail"]),
                         _f(g["few"]["top1"]), _f(r["class_mean_top1"])])
    return _table(["run", "top-1 (top-3)", "head", "tail", "few top-1", "class-mean"], rows) + "\n"


def ablation_table(base: Run, runs: Sequence[Run], split: str) -> str:
    """Table 3: top-1 of each text encoder and its gain over the baseline."""
    a = base.result(split)
    if a is None:
        return ""
    rows = [["baseline", _f(a["top1"]), "–", _f(a["groups"]["tail"]["top1"]), "–"]]
    for run in runs:
        r = run.result(split)
        if r is not None:
            rows.append([run.encoder, _f(r["top1"]), _f(_sub(r["top1"], a["top1"])),
                         _f(r["groups"]["tail"]["top1"]),
                         _f(_sub(r["groups"]["tail"]["top1"], a["groups"]["tail"]["top1"]))])
    return _table(["Method", "Top-1", "Gain", "Tail top-1", "Tail gain"], rows) + "\n"


def binned_per_class(outputs: dict[str, np.ndarray], n_bins: int = 8) -> tuple[np.ndarray, ...]:
    """(bin centre counts, mean per-class top-1 %, classes per bin) over log-spaced bins."""
    logits, labels, counts = outputs["sku_logits"], outputs["labels"], outputs["train_counts"]
    acc = per_class_accuracy(topk_hits(logits, labels, 1), labels, logits.shape[1])
    present = np.isfinite(acc) & (counts > 0)
    c, a = counts[present].astype(float), acc[present]
    edges = np.unique(np.geomspace(max(1.0, c.min()), c.max() + 1, n_bins + 1))
    idx = np.clip(np.digitize(c, edges) - 1, 0, len(edges) - 2)
    centres, means, ns = [], [], []
    for b in range(len(edges) - 1):
        sel = idx == b
        if sel.any():
            centres.append(math.sqrt(edges[b] * edges[b + 1]))
            means.append(100 * a[sel].mean())
            ns.append(int(sel.sum()))
    return np.array(centres), np.array(means), np.array(ns)


def plot_per_class(runs: Sequence[Run], split: str, path: Path, title: str = "") -> Path | None:
    """Per-class top-1 against training images (log x, binned), one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for run in runs:
        outs = run.outputs(split)
        if outs is None or not len(outs["labels"]):
            continue
        x, y, n = binned_per_class(outs)
        ax.plot(x, y, marker="o", label=f"{run.name}")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_xlabel("training images of the class (log scale, binned)")
    ax.set_ylabel("per-class top-1 accuracy (%)")
    ax.set_title(title or f"per-class accuracy, {split}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_markdown(run: Run) -> str:
    rep = run.report
    parts = [f"# Run `{run.name}` (text encoder: {run.encoder})\n",
             "Data: " + ", ".join(f"{k} {v}" for k, v in rep.get("data", {}).items()) + "\n"]
    for split, res in rep.get("evaluation", {}).items():
        parts.append(f"## {split}\n")
        parts.append(variants_table([run], split, taus=[r["tau"] for r in res.get("tau_sweep", [])
                                                        if r["tau"] > 0]))
        if "category_top1" in res:
            parts.append(f"Category top-1: {_f(res['category_top1'])} (category head), "
                         f"{_f(res.get('category_from_sku_top1'))} (category of the top SKU)\n")
    hist = rep.get("training", {}).get("history", [])
    if hist:
        keys = [k for k in ("epoch", "loss", "visual", "mixed", "lr", "images_per_s",
                            "heldout_top1") if k in hist[-1]]
        parts.append("## Training\n")
        parts.append(_table(keys, [[_g(h.get(k)) for k in keys] for h in hist]))
    return "\n".join(parts) + "\n"


def write_run_report(run_dir: str | Path) -> list[Path]:
    run = load_run(run_dir)
    md = run.path / "report.md"
    text = run_markdown(run)
    written = [md]
    for split in run.report.get("evaluation", {}):
        png = plot_per_class([run], split, run.path / f"per_class_{split}.png")
        if png is not None:
            written.append(png)
            text += f"\n![per-class accuracy, {split}]({png.name})\n"
    md.write_text(text)
    return written


def compare_markdown(base: Run, main: Run, others: Sequence[Run], ablation: Sequence[Run],
                     splits: Sequence[str], out_dir: Path, taus: Sequence[float]) -> str:
    parts = [f"# Baseline `{base.name}` vs `{main.name}`\n"]
    for split in splits:
        parts.append(f"## {split}\n")
        parts.append(comparison_tables(base, main, split))
        parts.append("### All variants\n")
        parts.append(variants_table([base, main, *others], split, taus))
        if ablation:
            parts.append("### Text encoder ablation (Table 3)\n")
            parts.append(ablation_table(base, [main, *ablation], split))
        png = plot_per_class([base, main, *others], split, out_dir / f"per_class_{split}.png")
        if png is not None:
            parts.append(f"![per-class top-1 vs training images, {split}]({png.name})\n")
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="sku-report", description="Compare training runs (folders written by sku-train): "
        "baseline | SICoT | gain tables (paper Tables 2 and 4), many/medium/few, extra variants "
        "with post-hoc logit adjustment, a text-encoder ablation (Table 3) and per-class plots.")
    p.add_argument("--baseline", required=True, type=Path, help="run folder of the baseline")
    p.add_argument("--main", required=True, type=Path, help="run folder of SICoT")
    p.add_argument("--extra", nargs="*", type=Path, default=[], help="more variants (rows)")
    p.add_argument("--ablation", nargs="*", type=Path, default=[],
                   help="runs with other text encoders (Table 3)")
    p.add_argument("--splits", nargs="+", default=["queries", "heldout"])
    p.add_argument("--taus", type=str, default="1.0", help="post-hoc LA rows, comma-separated")
    p.add_argument("--out", required=True, type=Path, help="Markdown file to write")
    args = p.parse_args(argv)
    base, main_run = load_run(args.baseline), load_run(args.main)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = compare_markdown(base, main_run, [load_run(r) for r in args.extra],
                            [load_run(r) for r in args.ablation], args.splits, args.out.parent,
                            [float(t) for t in args.taus.split(",") if t.strip()])
    args.out.write_text(text)
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
