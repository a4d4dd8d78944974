"""The online-path evaluation end to end on the demo catalog: a tiny SICoT artifact, a
localizer trained for a few steps, the real index and the service's Recognizer."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from service.artifact import load_artifact
from service.imageio import decode_photo, read_image_bytes
from service.localize import LocalizerConfig
from service.recognition import OnlineConfig
from service.recognizer import Recognizer
from training.data import load_items
from training.localizer.cli import main as train_localizer
from training.multi_object_eval import main as objects_main
from training.online_eval import NoMetadata, build_snapshot, main
from training.online_report import NOTES_MARKER
from training.online_report import main as render

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def loc(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("loc")
    assert train_localizer([
        "--catalog", str(demo_catalog / "catalog" / "manifest.jsonl"), "--out", str(out),
        "--backbone", "tiny_cnn", "--no-pretrained", "--input-size", "64", "--steps", "2",
        "--batch-size", "4", "--val-scenes", "0", "--threads", "1",
    ]) == 0
    return out


def test_online_eval_reports_every_table(demo_catalog: Path, tiny_artifact: Path, loc: Path,
                                         tmp_path):
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
    # the context view's share: only photos that looked again can answer from the wider crop
    ctx = report["context_view"]
    assert 0 <= ctx["answered_by_wider_view"] <= ctx["looked_again"] <= 100
    assert (ctx["looked_again"] > 0) == ("context" in report["latency_ms"])
    text = docs.read_text()
    assert "The context view looked again at" in text
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


def test_context_view_bench_scores_the_rules_the_service_applies(
    demo_catalog: Path, tiny_artifact: Path, loc: Path, tmp_path: Path
) -> None:
    spec = importlib.util.spec_from_file_location("context_view", REPO / "bench" / "context_view.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    catalog = str(demo_catalog / "catalog" / "manifest.jsonl")
    queries = str(demo_catalog / "queries" / "manifest.jsonl")
    out = tmp_path / "context.json"
    assert bench.main(["--sicot", str(tiny_artifact), "--localizer", str(loc), "--catalog",
                       catalog, "--queries", f"demo={queries}", "--margins", "1.0",
                       "--below", "0.0", "1.01", "--limit", "8", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["demo"]
    one, never, always = rows["one view"], rows["margin 1.0 below 0.0"], rows["margin 1.0 below 1.01"]
    assert never == one and never["second call %"] == 0.0
    assert 0 <= always["wider view answers %"] <= always["second call %"] <= 100

    # the bench's simulated "always" rule is what the service's Recognizer answers
    sicot, localizer = load_artifact(tiny_artifact), load_artifact(loc)
    snap = build_snapshot(sicot, catalog)
    cfg = OnlineConfig(context_margin=None,
                       localizer=LocalizerConfig.from_model_cfg(localizer.config.model),
                       fusion_weight=float(sicot.config.evaluation.get("fusion_weight", 0.7)))
    rec = Recognizer(sicot, localizer, replace(cfg, context_margin=1.0, context_below=1.01))
    items = [it for it in load_items(queries) if it.box is not None][:8]
    photos = bench.collect(Recognizer(sicot, localizer, cfg), snap, items, [1.0], "demo")
    for item, photo in zip(items, photos, strict=True):
        img = decode_photo(read_image_bytes(item.image), sicot.preprocess.input_size)
        served = rec.recognize(img, snap, NoMetadata()).objects[0]
        chosen = bench.choose(photo, 1.0, 1.01)[0]
        assert [c.sku_id for c in served.candidates[:3]] == chosen.top
        assert (served.candidates[0].score if served.candidates else 0.0) == pytest.approx(chosen.score)
