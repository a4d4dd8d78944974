"""AdaBN (``training.adabn``, ``sku-adabn``): batch-norm statistics re-estimated on real-shot
crops, exported as a new artifact that the service loads (real torch, ONNX Runtime, Redis)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from service.artifact import CONFIG_FILE, load_artifact
from service.catalog import read_catalog
from service.feedback import FeedbackLog, encode_jpeg
from service.imageio import load_image
from service.preprocess import preprocess
from training import adabn


def _query_crops(demo_catalog: Path, n: int) -> list[bytes]:
    items = read_catalog(demo_catalog / "queries" / "manifest.jsonl").items[:n]
    return [encode_jpeg(load_image(it.image), 256) for it in items]


def test_statistics_move_weights_stay(small_artifact: Path, demo_catalog: Path) -> None:
    model, config, ckpt = adabn.load_sicot(small_artifact)
    layers = adabn.bn_layers(model, "trunk")
    assert layers, "the small artifact's trunk is frozen: every backbone BN layer is in scope"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    crops = _query_crops(demo_catalog, 24)
    summary = adabn.adapt_batchnorm(model, adabn.crop_batches(crops, config, 8), "trunk")
    assert summary["images"] == 24 and summary["layers"] == len(layers)
    after = model.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(k.endswith(("running_mean", "running_var", "num_batches_tracked"))
                         for k in moved)
    assert not model.training and all(not m.training for m in layers)
    # the new statistics are those of the crops: a layer's input normalised with them is
    # centred on the crops (the first BN layer sees the stem conv's output)
    first = layers[0]
    x = torch.cat(list(adabn.crop_batches(crops, config, 24)))
    stem_conv = model.backbone._conv_stem  # type: ignore[union-attr]
    with torch.no_grad():
        feat = stem_conv(x)
    assert torch.allclose(first.running_mean, feat.mean(dim=(0, 2, 3)), atol=1e-4)


def test_alpha_blends_old_and_new(small_artifact: Path, demo_catalog: Path) -> None:
    crops = _query_crops(demo_catalog, 16)
    full, config, _ = adabn.load_sicot(small_artifact)
    half, _, _ = adabn.load_sicot(small_artifact)
    orig, _, _ = adabn.load_sicot(small_artifact)
    adabn.adapt_batchnorm(full, adabn.crop_batches(crops, config), "backbone", 1.0)
    adabn.adapt_batchnorm(half, adabn.crop_batches(crops, config), "backbone", 0.5)
    for f, h, o in zip(*(adabn.bn_layers(m, "backbone") for m in (full, half, orig)),
                       strict=True):
        assert torch.allclose(h.running_mean, (f.running_mean + o.running_mean) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        adabn.adapt_batchnorm(orig, adabn.crop_batches(crops, config), "trunk", 0.0)
    with pytest.raises(ValueError, match="no images"):
        adabn.adapt_batchnorm(orig, iter([]), "trunk")


def test_adapted_artifact_serves(small_artifact: Path, demo_catalog: Path,
                                 tmp_path: Path) -> None:
    crops = _query_crops(demo_catalog, 20)
    path = adabn.adabn_artifact(small_artifact, crops, out_dir=tmp_path, name="adapted")
    old, new = load_artifact(small_artifact), load_artifact(path)
    assert new.config.model_version != old.config.model_version
    assert new.config.evaluation["adabn"]["images"] == 20
    assert new.config.labels == old.config.labels
    assert new.config.preprocess == old.config.preprocess
    x = np.stack([preprocess(load_image(read_catalog(
        demo_catalog / "queries" / "manifest.jsonl").items[0].image), old.config.preprocess)])
    e_old = old.model.run(x)["embedding"]
    e_new = new.model.run(x)["embedding"]
    assert np.isclose(np.linalg.norm(e_new), 1.0, atol=1e-4)
    assert not np.allclose(e_old, e_new, atol=1e-3)
    # adapting the adapted artifact again works: its checkpoint holds the new statistics
    again, _, ckpt = adabn.load_sicot(path)
    assert "adabn" in ckpt


def test_cli_images_and_retained_queries(small_artifact: Path, demo_catalog: Path,
                                         tmp_path: Path, redis_server, redis_client,  # type: ignore[no-untyped-def]
                                         redis_key_prefix: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    queries = demo_catalog / "queries" / "manifest.jsonl"
    assert adabn.main(["--artifact", str(small_artifact), "--out", str(tmp_path),
                       "--name", "from-images", "--images", str(queries), "--min-images", "5",
                       "--threads", "1"]) == 0
    assert (tmp_path / "from-images" / CONFIG_FILE).is_file()
    # too few crops: nothing is written
    assert adabn.main(["--artifact", str(small_artifact), "--out", str(tmp_path),
                       "--name", "too-few", "--images", str(queries),
                       "--min-images", "100000"]) == 2
    assert not (tmp_path / "too-few").exists()
    assert "fewer than --min-images" in capsys.readouterr().err
    # the service's retained queries in Redis
    flog = FeedbackLog(redis_client, redis_key_prefix)
    for i, crop in enumerate(_query_crops(demo_catalog, 12)):
        assert flog.retain(f"r{i}", "k", crop, {"candidates": []}, 3600)
    assert sorted(flog.retained_ids()) == sorted(f"r{i}" for i in range(12))
    assert adabn.main(["--artifact", str(small_artifact), "--out", str(tmp_path),
                       "--name", "from-redis", "--redis-url", redis_server.url,
                       "--key-prefix", redis_key_prefix, "--min-images", "10"]) == 0
    cfg = json.loads((tmp_path / "from-redis" / CONFIG_FILE).read_text())
    assert cfg["evaluation"]["adabn"]["images"] == 12


def test_artifact_without_checkpoint_is_refused(small_artifact: Path, demo_catalog: Path,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(small_artifact, bare)
    cfg = json.loads((bare / CONFIG_FILE).read_text())
    (bare / cfg["checkpoint_file"]).unlink()
    cfg["checkpoint_file"] = None
    (bare / CONFIG_FILE).write_text(json.dumps(cfg))
    assert adabn.main(["--artifact", str(bare), "--out", str(tmp_path), "--name", "x",
                       "--images", str(demo_catalog / "queries" / "manifest.jsonl"),
                       "--min-images", "1"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
