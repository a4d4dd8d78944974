"""training.trunk_cache: the cached tail is the model cut in two, and one cache serves every
variant (tiny CNN, synthetic images, a few steps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.catalog import CatalogItem
from training.augment import BatchAugment
from training.data import ImageSource, SkuDataset, TrainTransform, build_label_map
from training.models import SICoTConfig, SICoTModel, create_backbone
from training.settings import TrainConfig
from training.trunk_cache import (
    CachedTail,
    TrunkRunner,
    ViewBatches,
    build_cache,
    predict_on_cache,
    tail_features,
    train_on_cache,
    trunk_forward,
)

K = 2  # tiny_cnn has 4 blocks: 2 frozen + cached, 2 trained


def _model(encoder: str | None, seed: int = 0) -> SICoTModel:
    cfg = SICoTConfig(backbone="tiny_cnn", freeze_blocks=K, num_classes=3, num_categories=2,
                      text_encoder=encoder, vocab_size=12, word_dim=8, embed_dim=16, seed=seed)
    return SICoTModel(cfg)


@pytest.mark.parametrize(("name", "k", "size"), [("tiny_cnn", K, 32),
                                                  ("efficientnet_lite0", 14, 64)])
def test_tail_of_trunk_is_forward_features(name: str, k: int, size: int) -> None:
    bb = create_backbone(name).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        full = bb.forward_features(x)
        cut = tail_features(bb, k, trunk_forward(bb, k, x))
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-5)


def test_cached_tail_gives_the_model_outputs() -> None:
    model = _model("bilinear_attention").eval()
    x = torch.randn(4, 3, 32, 32)
    ids = torch.randint(2, 12, (4, 5))
    with torch.no_grad():
        full = model(x, ids, ids != 0)
        cached = CachedTail(model, K)(trunk_forward(model.backbone, K, x), ids, ids != 0)
    for key in ("v", "sku_logits", "category_logits", "mixed_logits"):
        torch.testing.assert_close(cached[key], full[key], rtol=1e-5, atol=1e-5)
    assert "encode_image" not in model.__dict__  # the override is gone afterwards
    with pytest.raises(ValueError, match="freezes"):
        CachedTail(model, K + 1)


def _synthetic(tmp_path: Path) -> tuple[list[CatalogItem], np.ndarray]:
    rng = np.random.default_rng(0)
    items = []
    for c in range(3):
        for i in range(4):
            arr = np.full((40, 40, 3), 40 + 80 * c, np.uint8)
            arr[8 + 4 * i:24 + 4 * i, 10:30] = rng.integers(0, 255, 3)
            path = tmp_path / f"{c}_{i}.png"
            Image.fromarray(arr).save(path)
            items.append(CatalogItem(image=str(path), sku_id=f"S{c}", title=f"thing {c} w{i}",
                                     category="a" if c < 2 else "b"))
    return items, np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])


def test_cache_is_built_once_and_reused_across_variants(tmp_path: Path) -> None:
    items, _ = _synthetic(tmp_path)
    labels = build_label_map(items, items)
    base = _model(None)
    pcfg = base.default_preprocess.model_copy(update={"input_size": 32})
    src = ImageSource(cache="bytes")
    clean = SkuDataset(items, labels, src, pcfg)
    train = SkuDataset(items, labels, src, pcfg, train_transform=TrainTransform(pcfg))
    augment = BatchAugment(pcfg.mean, pcfg.std, strength=1.0, style=1.0)
    runner = TrunkRunner(base.backbone, K, 32, engine="torch")
    cache = build_cache(ViewBatches(clean, train, augment, views=2, batch_size=5), runner,
                        workers=0)
    assert cache.shape == (12, 2, 32, 8, 8) and cache.dtype == np.float16
    assert not np.array_equal(cache[:, 0], cache[:, 1])  # view 1 is augmented
    calls, snapshot = runner.calls, cache.copy()
    clean_x = torch.stack([clean[i]["image"] for i in range(len(clean))])
    with torch.no_grad():
        ref = trunk_forward(base.backbone.eval(), K, clean_x).numpy()
    np.testing.assert_allclose(cache[:, 0], ref, rtol=1e-2, atol=1e-2)  # float16

    cfg = TrainConfig(train_manifest=Path("unused.jsonl"), epochs=3, batch_size=4, lr=0.05,
                      schedule="constant", weight_decay=0.0, tau=0.0)
    y, cat = clean.targets, clean.categories
    ids = torch.randint(2, 12, (12, 4))
    for encoder in (None, "bilinear_attention"):
        model = _model(encoder)
        frozen = [p.detach().clone() for p in model.backbone.convs[:K].parameters()]
        tail = [p.detach().clone() for p in model.backbone.convs[K:].parameters()]
        res = train_on_cache(model, cache, y, cat, cfg, ids=ids if encoder else None,
                             mask=(ids != 0) if encoder else None, feature_dropout=0.1)
        assert res.images == 3 * 12 and len(res.history) == 3
        assert all(torch.equal(a, b) for a, b in
                   zip(frozen, model.backbone.convs[:K].parameters(), strict=True))
        assert any(not torch.equal(a, b) for a, b in
                   zip(tail, model.backbone.convs[K:].parameters(), strict=True))
        # the trained model, run whole on the images, equals the cached path
        model.eval()
        with torch.no_grad():
            full = model(clean_x)["sku_logits"].numpy()
        got = predict_on_cache(model, ref.astype(np.float16))["sku_logits"]
        np.testing.assert_allclose(got, full, rtol=1e-2, atol=2e-2)
    assert runner.calls == calls  # training never ran the trunk again
    np.testing.assert_array_equal(cache, snapshot)


def test_onnx_trunk_matches_torch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    bb = create_backbone("tiny_cnn", freeze_blocks=K)
    runner = TrunkRunner(bb, K, 32, engine="ort", onnx_path=tmp_path / "trunk.onnx")
    assert runner.max_diff(torch.randn(3, 3, 32, 32)) < 1e-4
