"""The localizer's trainer: cutouts, synthetic scenes, targets, a short real training run, the
ONNX export (checked against torch) and the service-side runner on the exported artifact."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from service.artifact import load_artifact
from service.catalog import read_catalog
from service.localize import Detections, LocalizerConfig, localize_image, main_box
from training.localizer.cli import main
from training.localizer.cutout import make_cutout
from training.localizer.model import build_localizer
from training.localizer.synth import SceneConfig, occlude, render_scene
from training.localizer.targets import make_targets

COLOURS = [(220, 30, 30), (30, 160, 40), (40, 60, 200), (230, 180, 20), (150, 40, 160),
           (20, 170, 170), (90, 90, 90), (240, 110, 30)]


def packshot(i: int, size: int = 64) -> Image.Image:
    """A product on white: a coloured shape with a white label inside."""
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    box = (size * 0.2, size * 0.15, size * 0.8, size * 0.85)
    (d.ellipse if i % 2 else d.rectangle)(box, fill=COLOURS[i % len(COLOURS)])
    d.rectangle((size * 0.4, size * 0.4, size * 0.6, size * 0.6), fill=(255, 255, 255))
    return img


@pytest.fixture(scope="module")
def tiny_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loc-catalog")
    rows = []
    for i in range(8):
        packshot(i).save(root / f"p{i}.jpg", quality=90)
        rows.append({"image": f"p{i}.jpg", "sku_id": f"S{i}", "title": f"product {i}",
                     "category": "c"})
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root / "manifest.jsonl"


def test_cutout_removes_border_background_but_keeps_white_inside():
    cut = make_cutout(packshot(0))
    assert cut is not None and cut.mode == "RGBA"
    assert abs(cut.width - 64 * 0.6) <= 2 and abs(cut.height - 64 * 0.7) <= 2
    alpha = np.asarray(cut.getchannel("A"))
    assert alpha[cut.height // 2, cut.width // 2] == 255  # the white label stays opaque
    assert make_cutout(Image.new("RGB", (40, 40), (255, 255, 255))) is None
    # a photo without a plain background becomes an opaque rectangle
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8))
    full = make_cutout(noisy)
    assert full is not None and full.size == (40, 30)


def test_scenes_are_deterministic_and_boxes_lie_in_the_image():
    cuts = [make_cutout(packshot(i)) for i in range(4)]
    cfg = SceneConfig(long_side=(96, 128))
    a_img, a_boxes = render_scene(cuts, np.random.default_rng(3), cfg)
    b_img, b_boxes = render_scene(cuts, np.random.default_rng(3), cfg)
    assert np.array_equal(np.asarray(a_img), np.asarray(b_img))
    np.testing.assert_array_equal(a_boxes, b_boxes)
    for seed in range(10):
        img, boxes = render_scene(cuts, np.random.default_rng(seed), cfg)
        w, h = img.size
        assert max(w, h) <= 128 and boxes.shape[1] == 4 and len(boxes) >= 1
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= h).all()
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()


def test_occluder_covers_part_of_the_main_product_and_keeps_its_whole_box():
    cuts = [make_cutout(packshot(i)) for i in range(4)]
    cfg = SceneConfig(long_side=(96, 128))
    for seed in range(6):  # amodal: the boxes are the products', occluded or not
        _, boxes = render_scene(cuts, np.random.default_rng(seed), cfg)
        _, occ_boxes = render_scene(cuts, np.random.default_rng(seed),
                                    replace(cfg, occluder_p=1.0))
        np.testing.assert_array_equal(boxes, occ_boxes)
    # the blob covers about the asked-for share of the box (less where it leaves the box)
    box = np.array([20.0, 30.0, 80.0, 90.0])
    shares = []
    for seed in range(20):
        scene = Image.new("RGB", (100, 120), (255, 255, 255))
        occlude(scene, box, np.random.default_rng(seed), (0.3, 0.3))
        changed = (np.asarray(scene) != 255).any(-1)
        assert changed.any()
        shares.append(changed[30:90, 20:80].sum() / 3600)
    assert 0.1 < float(np.mean(shares)) <= 0.32 and max(shares) <= 0.36
    assert SceneConfig().occluder_p == 0.0  # off by default


def test_targets_peak_at_the_centre_and_regress_inside_the_box():
    heat, box_t, weight = make_targets(np.array([[16, 8, 48, 40]]), 64, 8)
    assert heat.shape == (1, 8, 8) and heat.max() == 1.0
    assert np.unravel_index(heat[0].argmax(), (8, 8)) == (3, 4)  # centre (32, 24)
    ys, xs = np.nonzero(weight)
    assert ((xs + 0.5) * 8 >= 16).all() and ((xs + 0.5) * 8 <= 48).all()
    np.testing.assert_array_equal(box_t[:, 3, 4], [16, 8, 48, 40])
    empty = make_targets(np.zeros((0, 4)), 64, 8)
    assert empty[0].max() == 0 and empty[2].sum() == 0


def test_train_a_few_steps_export_and_onnx_matches_torch(tiny_catalog, tmp_path):
    out = tmp_path / "loc"
    scene = tmp_path / "scene.json"
    scene.write_text(json.dumps({"max_distractors": 1, "main_area": [0.1, 0.3]}))
    rc = main(["--catalog", str(tiny_catalog), "--out", str(out), "--backbone", "tiny_cnn",
               "--no-pretrained", "--input-size", "64", "--steps", "3", "--batch-size", "4",
               "--val-scenes", "3", "--threads", "1", "--name", "loc-test", "--scene", str(scene)])
    assert rc == 0
    saved = json.loads((out / "train_config.json").read_text())["scene"]
    assert saved["max_distractors"] == 1 and saved["main_area"] == [0.1, 0.3]
    assert saved["rotation_deg"] == SceneConfig().rotation_deg  # the rest stays default
    art = load_artifact(out)
    cfg = art.config
    assert cfg.kind == "localizer" and cfg.outputs == ["heatmap", "ltrb"]
    assert cfg.model["stride"] == 8 and cfg.model["input_size"] == 64
    assert cfg.preprocess.resize == "letterbox" and cfg.model_version.startswith("loc-test-")
    assert cfg.evaluation["train"]["steps"] == 3
    assert cfg.evaluation["train"]["freeze_blocks"] == -1  # tiny_cnn's default: all frozen
    assert "synthetic_val" in cfg.evaluation["train"]

    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    net = build_localizer("tiny_cnn", pretrained=False,
                          neck_channels=cfg.model["neck_channels"])
    net.load_state_dict(ckpt["state_dict"])
    net.eval()
    x = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        heat, ltrb = net(torch.from_numpy(x))
    onnx_out = art.model.run(x)
    assert onnx_out["heatmap"].shape == (2, 1, 8, 8) and onnx_out["ltrb"].shape == (2, 4, 8, 8)
    assert np.abs(onnx_out["heatmap"] - heat.numpy()).max() <= 1e-4
    assert np.abs(onnx_out["ltrb"] - ltrb.numpy()).max() <= 1e-4

    photo = Image.new("RGB", (120, 90), (200, 210, 190))
    photo.paste(packshot(2), (30, 10))
    dets = localize_image(art, photo)
    assert isinstance(dets, Detections)
    assert (dets.boxes[:, 2] <= 120).all() and (dets.boxes[:, 3] <= 90).all()
    box = main_box(art, photo)
    assert box is None or (0 <= box[0] < box[2] <= 120 and 0 <= box[1] < box[3] <= 90)

    # the test-time flip makes the localizer mirror-equivariant: the mirrored photo's boxes
    # are the photo's, mirrored (120 x 90 letterboxes into 64 px without side padding)
    flip = LocalizerConfig.from_model_cfg(cfg.model, flip=True, score_threshold=0.0)
    a = localize_image(art, photo, flip)
    b = localize_image(art, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), flip)
    assert len(a) > 0 and len(a) == len(b)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-5)
    np.testing.assert_allclose(b.boxes[:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [120, 0, 120, 0],
                               a.boxes, atol=1e-3)


def test_freeze_blocks_default_is_the_backbones():
    from training.localizer.settings import DEFAULT_FREEZE_BLOCKS, LocalizerTrainConfig

    lite = LocalizerTrainConfig(catalogs=["m"], out="o")
    assert lite.freeze_blocks is None
    assert lite.trunk_freeze_blocks == DEFAULT_FREEZE_BLOCKS["efficientnet_lite0"] == 8
    assert LocalizerTrainConfig(catalogs=["m"], out="o", backbone="tiny_cnn").trunk_freeze_blocks == -1
    assert LocalizerTrainConfig(catalogs=["m"], out="o", freeze_blocks=-1).trunk_freeze_blocks == -1


def test_scene_overrides_name_unknown_fields(tiny_catalog, tmp_path):
    scene = tmp_path / "scene.json"
    scene.write_text(json.dumps({"max_distractor": 6}))
    with pytest.raises(SystemExit, match="unknown field.*max_distractor.*known:.*max_distractors"):
        main(["--catalog", str(tiny_catalog), "--out", str(tmp_path / "x"), "--scene", str(scene)])
    scene.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="expected a JSON object"):
        main(["--catalog", str(tiny_catalog), "--out", str(tmp_path / "x"), "--scene", str(scene)])


def test_cli_help_explains_itself(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "synthetic scenes" in capsys.readouterr().out


def _cutout_rate(manifest: Path, limit: int = 40) -> float:
    items = read_catalog(manifest).items[:limit]
    cuts = [make_cutout(Image.open(it.image)) for it in items]
    fills = [float((np.asarray(c.getchannel("A")) > 127).mean()) for c in cuts if c is not None]
    assert all(0.2 < f <= 1.0 for f in fills)
    return len(fills) / len(items)


@pytest.mark.shared
def test_emoji_catalog_images_give_cutouts(emoji_catalog):
    assert _cutout_rate(emoji_catalog / "catalog" / "manifest.jsonl") >= 0.95


def test_demo_catalog_images_give_cutouts(demo_catalog):
    assert _cutout_rate(demo_catalog / "catalog" / "manifest.jsonl") >= 0.95


def test_stride32_neck_trains_on_the_ort_trunk_and_exports_one_checked_graph(tmp_path):
    """``top_stride=32``: the stride-32 blocks feed the neck; the frozen trunk's ONNX Runtime
    maps equal torch's, and the exported artifact (checked against torch on export) decodes."""
    from training.localizer.export import write_localizer_artifact
    from training.localizer.train import make_preprocess
    from training.localizer.trunk import OrtTrunk

    net = build_localizer("efficientnet_lite0", pretrained=False, freeze_blocks=-1,
                          top_stride=32)
    assert len(net.features.channels) == 3 and hasattr(net, "lat32")
    assert not any(p.requires_grad for p in net.features.parameters())
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(2, 3, 64, 64)).astype(np.float32))
    net.eval()
    with torch.no_grad():
        maps = net.features(x)
        ort_maps = OrtTrunk(net.features, 64, threads=1)(x)
        assert [tuple(m.shape[-2:]) for m in maps] == [(8, 8), (4, 4), (2, 2)]
        for a, b in zip(maps, ort_maps, strict=True):
            assert torch.allclose(a, b, atol=1e-4)
        heat, _ = net.forward_head(*ort_maps)
    assert heat.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="lacks \\[32\\]"):
        build_localizer("tiny_cnn", pretrained=False, top_stride=32)
    cfg = write_localizer_artifact(tmp_path / "loc32", net, name="loc32",
                                   backbone="efficientnet_lite0",
                                   preprocess=make_preprocess("efficientnet_lite0", 64),
                                   neck_channels=64, top_stride=32)
    assert cfg.model["top_stride"] == 32
    photo = Image.new("RGB", (120, 90), (200, 210, 190))
    photo.paste(packshot(3), (30, 10))
    assert isinstance(localize_image(load_artifact(tmp_path / "loc32"), photo), Detections)


def test_partly_frozen_trunk_runs_its_prefix_in_onnx_runtime_and_trains_the_rest(
        tiny_catalog, tmp_path):
    """``freeze_blocks=k`` below the localizer's blocks: the frozen prefix's ONNX Runtime
    outputs, resumed in torch, equal the whole trunk's maps; training updates only the
    later blocks."""
    from training.localizer.train import frozen_prefix
    from training.localizer.trunk import OrtTrunk

    net = build_localizer("efficientnet_lite0", pretrained=False, freeze_blocks=8)
    assert frozen_prefix(net) == 8
    assert frozen_prefix(build_localizer("efficientnet_lite0", pretrained=False,
                                         freeze_blocks=-1)) == len(net.features.blocks)
    assert frozen_prefix(build_localizer("tiny_cnn", pretrained=False)) == 0
    net.eval()
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(2, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        *early, xk = OrtTrunk(net.features, 64, threads=1, prefix_blocks=8)(x)
        resumed = net.features.forward_from(8, xk, tuple(early))
        for a, b in zip(net.features(x), resumed, strict=True):
            assert torch.allclose(a, b, atol=1e-4)

    out = tmp_path / "loc-partial"
    rc = main(["--catalog", str(tiny_catalog), "--out", str(out), "--backbone", "tiny_cnn",
               "--no-pretrained", "--input-size", "64", "--steps", "2", "--batch-size", "4",
               "--val-scenes", "0", "--threads", "1", "--freeze-blocks", "2"])
    assert rc == 0
    after = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["state_dict"]
    # batch-norm statistics start at zero: the frozen prefix (ONNX Runtime) never updates
    # them, the trained blocks (torch, train mode) do
    assert not after["features.blocks.1.1.running_mean"].any()
    assert after["features.blocks.2.1.running_mean"].abs().sum() > 0
