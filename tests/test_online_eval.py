"""The online-path evaluation end to end on the demo catalog: a tiny SICoT artifact, a
localizer trained for a few steps, the real index and the service's Recognizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.localizer.cli import main as train_localizer
from training.multi_object_eval import main as objects_main
from training.online_eval import main
from training.online_report import NOTES_MARKER
from training.online_report import main as render


def test_online_eval_reports_every_table(demo_catalog: Path, tiny_artifact: Path, tmp_path):
    loc = tmp_path / "loc"
    assert train_localizer([
        "--catalog", str(demo_catalog / "catalog" / "manifest.jsonl"), "--out", str(loc),
        "--backbone", "tiny_cnn", "--no-pretrained", "--input-size", "64", "--steps", "2",
        "--batch-size", "4", "--val-scenes", "0", "--threads", "1",
    ]) == 0
    docs = tmp_path / "online-path.md"
    rc = main([
        "--sicot", str(tiny_artifact), "--localizer", str(loc),
        "--catalog", str(demo_catalog / "catalog" / "manifest.jsonl"),
        "--queries", str(demo_catalog / "queries" / "manifest.jsonl"),
        "--out", str(tmp_path / "eval"), "--docs", str(docs), "--limit", "12",
        "--weights", "0", "0.5", "1",
    ])
    assert rc == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["queries"]["total"] == 12
    assert report["queries"]["validation"] + report["queries"]["test"] == 12
    assert report["fusion_weight"] in (0.0, 0.5, 1.0)
    assert set(report["sku"]) == {"(a) whole", "(b) pred_crop", "(c) true_crop",
                                  "(d) pred_crop + constraint + index"}
    for row in report["sku"].values():
        assert 0 <= row["top1"] <= row["top3"] <= 100
    for view in ("whole", "pred_crop", "true_crop"):
        assert set(report["category"][view]) == {"model", "vote", "fused"}
    assert 0 <= report["localization"]["main_iou_mean"] <= 1
    # every test photo falls in exactly one localization case, each with its own accuracies
    cases = report["by_localization"]
    assert sum(c["share"] for c in cases.values()) == pytest.approx(100.0, abs=0.1)
    for c in cases.values():
        assert all(0 <= c[k] <= 100 for k in ("pred_crop_top1", "true_crop_top1", "service_top1"))
    assert {"decode", "localize", "recognize", "search", "fuse"} <= set(report["latency_ms"])
    text = docs.read_text()
    assert "## SKU recognition" in text and "training.online_eval" in text
    # re-rendering from report.json keeps the hand-written notes under the marker
    docs.write_text(text + "my note\n")
    assert render([str(tmp_path / "eval" / "report.json"), str(docs)]) == 0
    assert docs.read_text().endswith(NOTES_MARKER + "\nmy note\n")

    # multi-object recall with the same models: every max_objects asked for, shares in [0, 100]
    assert objects_main([
        "--sicot", str(tiny_artifact), "--localizer", str(loc),
        "--catalog", str(demo_catalog / "catalog" / "manifest.jsonl"),
        "--queries", str(demo_catalog / "queries" / "manifest.jsonl"),
        "--out", str(tmp_path / "objects"), "--limit", "6", "--max-objects", "1", "3",
    ]) == 0
    objects = json.loads((tmp_path / "objects" / "report.json").read_text())
    assert objects["queries"] == 6 and objects["products"] >= 6
    assert set(objects["max_objects"]) == {"1", "3"}
    one, three = objects["max_objects"]["1"], objects["max_objects"]["3"]
    assert one["objects_mean"] == 1.0 and 1.0 <= three["objects_mean"] <= 3.0
    for row in (one, three):
        assert 0 <= row["photos"] <= 100 and 0 <= row["products"] <= 100
    assert three["photos"] >= one["photos"]  # more objects can only find more
    assert "training.multi_object_eval" in objects["command"]
