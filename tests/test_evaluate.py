"""Evaluation metrics on hand-made arrays, and the Markdown/plot reports on fake runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from training import evaluate as ev
from training import report

# 4 classes: 0 and 1 are head (50 and 150 training images), 2 and 3 tail (5 and 1).
COUNTS = [50, 150, 5, 1]


def test_topk_and_ties() -> None:
    logits = np.array([[3.0, 2.0, 1.0, 0.0],
                       [0.0, 1.0, 3.0, 2.0],
                       [1.0, 1.0, 1.0, 1.0]])
    labels = np.array([0, 3, 2])
    assert ev.topk_hits(logits, labels, 1).tolist() == [True, False, False]
    assert ev.topk_hits(logits, labels, 2).tolist() == [True, True, False]
    assert ev.true_class_rank(logits, labels).tolist() == [0, 1, 3]  # a tie counts against
    with pytest.raises(ValueError):
        ev.topk_hits(logits, np.array([0, 4, 1]), 1)
    with pytest.raises(ValueError):
        ev.topk_hits(logits, labels[:2], 1)


def test_groups_and_class_mean() -> None:
    eye = np.eye(4)
    # class 0: 3 samples all right; class 1: 1 right; class 2: 1 wrong; class 3: 1 wrong
    labels = np.array([0, 0, 0, 1, 2, 3])
    preds = np.array([0, 0, 0, 1, 0, 1])
    res = ev.accuracy_summary(eye[preds], labels, COUNTS, head_threshold=20, many_threshold=100)
    assert res["n"] == 6
    assert res["top1"] == pytest.approx(100 * 4 / 6)
    assert res["class_mean_top1"] == pytest.approx(50.0)  # (1 + 1 + 0 + 0) / 4
    g = res["groups"]
    assert (g["head"]["n"], g["head"]["classes"], g["head"]["top1"]) == (4, 2, 100.0)
    assert (g["tail"]["n"], g["tail"]["top1"]) == (2, 0.0)
    assert (g["many"]["n"], g["medium"]["n"], g["few"]["n"]) == (1, 3, 2)
    assert g["few"]["top1"] == g["tail"]["top1"]
    # boundary is configurable: with head >= 5, class 2 moves to the head
    res5 = ev.accuracy_summary(eye[preds], labels, COUNTS, head_threshold=5, many_threshold=100)
    assert res5["groups"]["head"]["classes"] == 3 and res5["groups"]["tail"]["n"] == 1


def test_empty_group_is_nan_not_an_error() -> None:
    res = ev.accuracy_summary(np.eye(4)[[0, 1]], np.array([0, 1]), COUNTS)
    assert math.isnan(res["groups"]["tail"]["top1"]) and res["groups"]["tail"]["n"] == 0


def test_posthoc_adjustment_moves_accuracy_from_head_to_tail() -> None:
    rng = np.random.default_rng(0)
    counts = np.array([1000, 1000, 10, 10])
    labels = np.repeat(np.arange(4), 200)
    # a classifier biased towards frequent classes: logits = signal + log prior
    logits = 1.5 * np.eye(4)[labels] + rng.normal(0, 1, (800, 4)) + ev.log_prior(counts)
    sweep = ev.tau_sweep(logits, labels, counts, taus=[0.0, 1.0, 2.0])
    head = [r["groups"]["head"]["top1"] for r in sweep]
    tail = [r["groups"]["tail"]["top1"] for r in sweep]
    assert tail[0] < tail[1] < tail[2]
    assert head[0] > head[1] > head[2]
    # τ = 1 undoes exactly this bias: the balanced (class-mean) accuracy is best there
    cm = [r["class_mean_top1"] for r in sweep]
    assert cm[1] == max(cm)
    assert sweep[0]["top1"] == ev.accuracy_summary(logits, labels, counts)["top1"]
    assert np.allclose(ev.adjust_logits(logits, counts, 1.0) - logits,
                       -ev.log_prior(counts)[None])


def test_evaluate_outputs_and_category_accuracy() -> None:
    logits = np.eye(4)[[0, 1, 2, 0]]
    labels = np.array([0, 1, 2, 3])
    sku_category = [0, 0, 1, 1]
    cat_logits = np.eye(2)[[0, 1, 1, 1]]
    res = ev.evaluate_outputs(logits, labels, COUNTS, category_logits=cat_logits,
                              sku_category=sku_category, taus=[0.0, 0.5])
    assert res["top1"] == 75.0
    assert res["category_top1"] == 75.0          # the category head: sample 1 wrong
    assert res["category_from_sku_top1"] == 75.0  # sample 3 predicted SKU 0 → category 0
    assert [r["tau"] for r in res["tau_sweep"]] == [0.0, 0.5]
    assert "tail" in ev.format_summary("x", res)


def _fake_run(root: Path, name: str, encoder: str | None, correct: list[bool]) -> Path:
    """A run folder as sku-train writes it, with outputs that get ``correct`` right."""
    run = root / name
    (run / "eval").mkdir(parents=True)
    counts = np.array([200, 60, 5, 1, 2, 30])
    labels = np.arange(6).repeat(2)
    preds = np.where(np.repeat(correct, 2), labels, (labels + 1) % 6)
    logits = np.eye(6)[preds].astype(np.float32)
    np.savez(run / "eval" / "queries.npz", sku_logits=logits, labels=labels, train_counts=counts)
    res = ev.evaluate_outputs(logits, labels, counts, taus=[0.0, 1.0])
    (run / "report.json").write_text(json.dumps(
        {"name": name, "text_encoder": encoder, "evaluation": {"queries": res},
         "data": {"classes": 6}, "training": {"history": [{"epoch": 1, "loss": 2.0}]}}))
    return run


def test_report_tables_and_plot(tmp_path: Path) -> None:
    base = _fake_run(tmp_path, "baseline", None, [True, True, False, False, False, True])
    sicot = _fake_run(tmp_path, "sicot", "bilinear_attention", [True, True, True, False, True, True])
    mean = _fake_run(tmp_path, "mean", "mean", [True, True, True, False, False, True])
    out = tmp_path / "docs" / "results.md"
    assert report.main(["--baseline", str(base), "--main", str(sicot), "--ablation", str(mean),
                        "--splits", "queries", "--out", str(out)]) == 0
    text = out.read_text()
    # Table 2 row: 3 of 6 classes right → 5 of 6 (two queries each); one-hot logits tie on
    # the other classes, so top-3 == top-1 here (ties count against the model)
    assert "| overall | 50.00 (50.00) | 83.33 (83.33) | 33.33 (33.33) |" in text
    # Table 4 rows: head = classes with >= 20 training images (200, 60, 30)
    assert "| head | 20 – max | 3 | 6 | 100.00 (100.00) | 100.00 (100.00) | 0.00 (0.00) |" in text
    assert "| tail | 1 – 19 | 3 | 6 | 0.00 (0.00) | 66.67 (66.67) | 66.67 (66.67) |" in text
    assert "| many | > 100 | 1 | 2 |" in text and "| medium | 20 – 100 | 2 | 4 |" in text
    assert "| bilinear_attention | 83.33 | 33.33 | 66.67 | 66.67 |" in text  # Table 3
    assert "| mean | 66.67 | 16.67 | 33.33 | 33.33 |" in text
    assert "post-hoc LA τ=1" in text
    assert (out.parent / "per_class_queries.png").stat().st_size > 1000
    written = report.write_run_report(sicot)
    assert {p.name for p in written} == {"report.md", "per_class_queries.png"}


def test_binned_per_class_uses_log_bins() -> None:
    outs = {"sku_logits": np.eye(3)[[0, 1, 0]], "labels": np.array([0, 1, 2]),
            "train_counts": np.array([100, 10, 1])}
    x, y, n = report.binned_per_class(outs, n_bins=3)
    assert list(n) == [1, 1, 1] and list(y) == [0.0, 100.0, 100.0]
    assert np.all(np.diff(x) > 0)
