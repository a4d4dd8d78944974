"""Customer views of catalog packshots (the recognizer's training photos) and the training
options that go with them: the main product of a synthetic scene is the one asked for, the
crop follows the online path's rule with a localizer-like box error, views are a pure
function of (seed, epoch, index), and ``sku-train`` trains on them with the cosine head,
the margin and MixStyle, exporting an artifact whose ONNX output matches torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_training import make_catalog, tiny_args

from service.artifact import load_artifact
from service.catalog import read_catalog
from service.preprocess import PreprocessConfig
from training import builders, train
from training.customer_views import CustomerViewConfig, CustomerViewDataset, jitter_box
from training.data import build_label_map
from training.localizer.synth import render_scene
from training.settings import build_config


def _square(colour: tuple[int, int, int], side: int = 40) -> Image.Image:
    img = Image.new("RGBA", (side, side), (*colour, 255))
    return img


def test_render_scene_puts_the_requested_cutout_first() -> None:
    cuts = [_square((30, 60, 220)) for _ in range(6)]
    cuts[4] = _square((230, 30, 30))
    for seed in range(8):
        scene, boxes = render_scene(cuts, np.random.default_rng(seed), main=4)
        x0, y0, x1, y1 = (int(v) for v in boxes[0])
        patch = np.asarray(scene, np.float32)[y0:y1, x0:x1]
        # the main box shows the red product (colour cast and lighting keep red above blue)
        assert patch[..., 0].mean() > patch[..., 2].mean(), seed
    with pytest.raises(ValueError, match="main cutout"):
        render_scene(cuts, np.random.default_rng(0), main=6)


def test_jitter_box_stays_in_the_image_and_near_the_truth() -> None:
    cfg = CustomerViewConfig(box_jitter=0.08, miss_p=0.0)
    rng = np.random.default_rng(0)
    truth = np.array([40.0, 30.0, 120.0, 90.0])
    ious = []
    for _ in range(500):
        b = jitter_box(truth, rng, cfg, (160, 100))
        assert 0 <= b[0] < b[2] <= 160 and 0 <= b[1] < b[3] <= 100
        iw = max(0.0, min(b[2], truth[2]) - max(b[0], truth[0]))
        ih = max(0.0, min(b[3], truth[3]) - max(b[1], truth[1]))
        inter = iw * ih
        union = (b[2] - b[0]) * (b[3] - b[1]) + 80 * 60 - inter
        ious.append(inter / union)
    assert np.median(ious) > 0.75  # a good localizer's error, not a random box


def test_customer_view_dataset_is_seeded_and_repeats(tmp_path: Path) -> None:
    paths = make_catalog(tmp_path / "cat")
    items = read_catalog(paths["train"]).items[:6]
    labels = build_label_map(items, items)
    cuts = [Image.open(it.image).convert("RGBA") for it in items]
    pcfg = PreprocessConfig(input_size=32)
    ds = CustomerViewDataset(items, cuts, labels, pcfg, seed=1, repeats=3)
    assert len(ds) == 18
    a, b = ds[7], ds[7]
    assert torch.equal(a["image"], b["image"])  # a pure function of (seed, epoch, index)
    assert a["label"] == labels.index_of()[items[1].sku_id]  # index 7 = item 1, view 1
    assert not torch.equal(ds[1]["image"], ds[7]["image"])  # another view of the same item
    ds.set_epoch(1)
    assert not torch.equal(ds[7]["image"], a["image"])
    none_cut = CustomerViewDataset(items, [None] * 6, labels, pcfg)
    assert none_cut[0]["image"].shape == (3, 32, 32)  # no cutout: the plain packshot


def test_epoch_counts_flatten_the_tail(tmp_path: Path) -> None:
    paths = make_catalog(tmp_path / "cat")
    catalog = tmp_path / "catalog.jsonl"
    rows = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    firsts = {r["sku_id"]: r for r in rows}
    catalog.write_text("".join(json.dumps({**r, "image": str(paths["train"].parent / r["image"])})
                               + "\n" for r in firsts.values()))
    cfg = build_config({"train_manifest": paths["train"], "catalog_manifest": catalog,
                        "catalog_views_per_epoch": 5, "backbone": "tiny_cnn",
                        "output_dir": tmp_path})
    splits = builders.prepare_splits(cfg)
    counts = builders.epoch_class_counts(cfg, splits)
    assert len(splits.catalog) == 12
    assert np.array_equal(counts, np.asarray(splits.labels.train_counts) + 5)


@pytest.mark.slow
def test_sku_train_on_catalog_views_with_the_cosine_head(tmp_path: Path) -> None:
    paths = make_catalog(tmp_path / "cat")
    catalog = tmp_path / "catalog.jsonl"
    rows = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    firsts = {r["sku_id"]: r for r in rows}
    catalog.write_text("".join(json.dumps({**r, "image": str(paths["train"].parent / r["image"])})
                               + "\n" for r in firsts.values()))
    out = tmp_path / "run"
    argv = tiny_args(paths, out, "bilinear_attention", catalog_manifest=catalog,
                     catalog_views_per_epoch=2, head="cosine", cosine_margin=0.1,
                     cosine_scale=10.0, mix_style_p=0.5, tau=1.0, epochs=2)
    assert train.main(argv) == 0
    hist = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(hist) == 2 and hist[-1]["loss"] < hist[0]["loss"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["onnx_max_abs_diff"] <= 1e-4
    art = load_artifact(rep["artifact"])
    assert art.config.model["head"] == "cosine"
    # one epoch = the 12 held-out-reduced train images' loader + 2 views of 12 packshots
    n_train = len(read_catalog(paths["train"]).items) - 8
    ckpt = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ckpt["steps_per_epoch"] == (n_train + 24) // 8
    logits = art.model.run(np.zeros((1, 3, 32, 32), np.float32))["sku_logits"]
    assert np.abs(logits).max() <= 10.0 + 1e-4  # γ·cos: bounded by the scale
