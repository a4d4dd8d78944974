"""The SICoT model (side-information co-training, SICoT §3.3, Fig. 1).

Three streams around ONE shared SKU classifier W:

- visual:   v = BN(Linear(dropout(backbone.forward_features(x))))  ∈ R^d
- semantic: s = text_encoder(title ids, mask)                      ∈ R^d  (training only)
- mixed:    m = max(v, s) element-wise

``sku_logits`` = W v, ``mixed_logits`` = W m (``head="cosine"``: γ·cos(W_y, v) and
γ·cos(W_y, m), a normalised-softmax classifier whose rows live in the space of the served
embedding v/|v|, so the classifier and the nearest catalog images of the index agree), ``category_logits`` = a category head on v (for
the category prediction the online path fuses with the kNN vote). The loss
(:func:`training.losses.sicot_loss`) is CE(W v) + λ·CE(W m) (+ category CE); with
``text_encoder=None`` the same model is the visual-only baseline.

Initialisation: the visual stream, W and the category head are built first from
``cfg.seed``, the text stream afterwards from its own seed, both inside ``fork_rng`` (the
caller's RNG state is untouched). So the baseline and the co-trained model start from
identical visual weights for the same seed: a fair ablation.

Serving sees only :meth:`SICoTModel.export_module`: image → (L2-normalised v, W v, category
logits); titles are never needed at inference.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from training.models.backbones import create_backbone
from training.models.sharded_head import ShardedClassifier
from training.models.text_encoders import create_text_encoder


class SICoTConfig(BaseModel):
    """Everything needed to rebuild the network (saved in checkpoints and artifacts)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    backbone: str = "efficientnet_lite0"
    pretrained: bool = False
    weights_path: str | None = None
    freeze_blocks: int = Field(0, ge=-1, description="stem + first K blocks frozen; -1 = all")
    embed_dim: int = Field(512, ge=1, description="d: visual feature, title embedding")
    num_classes: int = Field(ge=1)
    num_categories: int = Field(1, ge=1)
    text_encoder: str | None = Field(
        "bilinear_attention", description="None = the visual-only baseline"
    )
    vocab_size: int = Field(2, ge=2, description="including PAD and UNK")
    word_dim: int = Field(128, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="on backbone features")
    head: Literal["linear", "cosine"] = Field(
        "linear", description="SKU classifier W: linear, or cosine (normalised softmax)")
    cosine_scale: float = Field(16.0, gt=0, description="γ of the cosine head")
    seed: int = 0
    backbone_kwargs: dict[str, Any] = Field(default_factory=dict)
    text_kwargs: dict[str, Any] = Field(default_factory=dict)


class CosineClassifier(nn.Module):
    """γ · cos(W_y, x): logits from unit-length rows of W and the unit-length input."""

    def __init__(self, dim: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_classes, dim) * dim ** -0.5)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.weight, dim=1).t()


def dense_classifier(cfg: SICoTConfig) -> nn.Module:
    """The dense SKU classifier W of ``cfg`` (all C rows)."""
    if cfg.head == "cosine":
        return CosineClassifier(cfg.embed_dim, cfg.num_classes, cfg.cosine_scale)
    return nn.Linear(cfg.embed_dim, cfg.num_classes)


class SICoTExport(nn.Module):
    """The served network: image → (embedding = v / |v|, sku_logits, category_logits)."""

    def __init__(self, model: SICoTModel):
        super().__init__()
        self.backbone: Any = model.backbone  # any registry backbone (forward_features)
        self.dropout = model.dropout
        self.proj = model.proj
        self.classifier = model.classifier
        self.category_head = model.category_head

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v = self.proj(self.dropout(self.backbone.forward_features(image)))
        return F.normalize(v, dim=1), self.classifier(v), self.category_head(v)


class SICoTModel(nn.Module):
    """``classifier``: a prebuilt SKU classifier to use instead of drawing the dense W, i.e. a
    :class:`ShardedClassifier` (``sku-train --sharded-fc``); the dense W is then never
    allocated, so the category head (drawn after W) starts from other weights than the dense
    model's of the same seed, the rest from the same."""

    def __init__(self, cfg: SICoTConfig, word_vectors: np.ndarray | torch.Tensor | None = None,
                 classifier: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            backbone: Any = create_backbone(
                cfg.backbone, pretrained=cfg.pretrained, weights_path=cfg.weights_path,
                freeze_blocks=cfg.freeze_blocks, **cfg.backbone_kwargs,
            )
            self.backbone = backbone
            c: int = backbone.num_features
            self.dropout = nn.Dropout(cfg.dropout)
            self.proj = nn.Sequential(nn.Linear(c, cfg.embed_dim, bias=False),
                                      nn.BatchNorm1d(cfg.embed_dim))
            self.classifier: nn.Module = (
                dense_classifier(cfg) if classifier is None else classifier)
            self.category_head = nn.Linear(cfg.embed_dim, cfg.num_categories)
        self.text: nn.Module | None = None
        if cfg.text_encoder is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 1)
                self.text = create_text_encoder(
                    cfg.text_encoder, cfg.vocab_size, cfg.word_dim, cfg.embed_dim,
                    word_vectors=word_vectors, **cfg.text_kwargs,
                )

    @property
    def default_preprocess(self) -> Any:
        return self.backbone.default_preprocess

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (N,3,S,S) → v (N, d), not normalised."""
        return self.proj(self.dropout(self.backbone.forward_features(images)))

    def encode_text(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.text is None:
            raise RuntimeError("this model has no text encoder (text_encoder=None)")
        return self.text(ids, mask)

    def forward(
        self, images: torch.Tensor, ids: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Keys: ``v``, ``sku_logits``, ``category_logits``; with a text encoder and ``ids``
        also ``s``, ``attn`` (None for encoders without attention), ``mixed_logits`` and
        ``has_text`` (N,) bool (titles with at least one word). ``ids`` are ignored by the
        baseline, so one training loop drives both.  With a :class:`ShardedClassifier` the
        SKU logits are left to the loss (:mod:`training.sharded_fc`, which gathers the
        features of every rank first): no ``sku_logits`` / ``mixed_logits``, but the mixed
        feature ``m`` = max(v, s)."""
        v = self.encode_image(images)
        sharded = isinstance(self.classifier, ShardedClassifier)
        out: dict[str, Any] = {"v": v, "category_logits": self.category_head(v)}
        if not sharded:
            out["sku_logits"] = self.classifier(v)
        if self.text is not None and ids is not None:
            if mask is None:
                mask = ids != 0
            s, attn = self.text(ids, mask)
            out["s"] = s
            out["attn"] = attn
            m = torch.maximum(v, s)
            if sharded:
                out["m"] = m
            else:
                out["mixed_logits"] = self.classifier(m)
            out["has_text"] = mask.any(dim=1)
        return out

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part (``backbone``, ``head``, ``text``), e.g. for per-part
        learning rates; frozen parameters are left out."""
        def trainable(mods: list[nn.Module]) -> list[nn.Parameter]:
            return [p for m in mods for p in m.parameters() if p.requires_grad]

        return {
            "backbone": trainable([self.backbone]),
            "head": trainable([self.proj, self.classifier, self.category_head]),
            "text": trainable([self.text] if self.text is not None else []),
        }

    def export_module(self) -> SICoTExport:
        if isinstance(self.classifier, ShardedClassifier):
            raise ValueError("a sharded classifier holds some rows of W only: export the dense "
                             "model of training.sharded_state.dense_model")
        return SICoTExport(self)
