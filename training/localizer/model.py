"""The localizer network: stride-8/16 (optionally /32) feature taps of a registered backbone,
an FPN-lite neck (top-down sums) and a CenterNet/FCOS-style head at stride 8.

Outputs (the ONNX graph's, named as in :mod:`service.localize`): ``heatmap`` (N, 1, S/8, S/8),
sigmoid objectness; ``ltrb`` (N, 4, S/8, S/8), ``exp`` of the regression, distances from the
cell centre to the box edges in units of the stride. :meth:`LocalizerNet.forward_raw` gives
the logits for the losses.

Feature taps: the backbone registry (``training.models.backbones``) exposes pooled features
only, so :class:`FeatureTaps` walks the backbone's own blocks and keeps the last map at
stride 8 and at stride 16, and with ``top_stride=32`` also the last map at stride 32. The
default (16) never runs the stride-32 blocks; ``top_stride=32`` runs them for more context on
large products. It was tried against the localizer's most common miss (a salient *part* of a
large product boxed instead of the whole) and did not help on customer photos, at some
latency (accuracy-study.md, section 8), so it is an option, not the default.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.models.backbones import TinyCNN, create_backbone
from training.models.efficientnet_lite import EfficientNetLite

STRIDE = 8
TAP_STRIDES = (8, 16, 32)  # the strides of the feature taps, finest first
TOP_STRIDES = (16, 32)  # the coarsest feature tap the neck may use
LTRB_MAX_LOG = 4.0  # exp(4) ≈ 55 strides: larger than any input the localizer is meant for


class FeatureTaps(nn.Module):
    """Run a backbone up to ``top_stride``; return its feature maps at strides 8, 16 (, 32)."""

    def __init__(self, backbone: nn.Module, top_stride: int = 16):
        super().__init__()
        if isinstance(backbone, EfficientNetLite):
            self.stem: nn.Module = _LiteStem(backbone)
            blocks: list[Any] = list(backbone._blocks)
            strides = [int(b._depthwise_conv.stride[0]) for b in blocks]
            chans = [int(b._project_conv.out_channels) for b in blocks]
            stride = 2
        elif isinstance(backbone, TinyCNN):
            self.stem = nn.Identity()
            blocks = list(backbone.convs)
            strides = [2] * len(blocks)
            chans = [int(b[0].out_channels) for b in blocks]
            stride = 1
        else:
            raise ValueError(f"no feature taps for {type(backbone).__name__}")
        cum = []
        for s in strides:
            stride *= s
            cum.append(stride)
        if top_stride not in TOP_STRIDES:
            raise ValueError(f"top_stride must be one of {TOP_STRIDES}, not {top_stride}")
        strides_wanted = [s for s in TAP_STRIDES if s <= top_stride]
        missing = [s for s in strides_wanted if s not in cum]
        if missing:
            raise ValueError(f"the backbone must reach strides {strides_wanted}; "
                             f"{type(backbone).__name__} lacks {missing}")
        self.taps = [max(i for i, c in enumerate(cum) if c == s) for s in strides_wanted]
        self.blocks = nn.ModuleList(blocks[: self.taps[-1] + 1])
        self.channels = tuple(chans[i] for i in self.taps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.forward_from(0, self.stem(x), ())

    def run_blocks(
        self, start: int, end: int, x: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Blocks ``start..end-1`` on ``x`` (the output of block ``start - 1``, or of the
        stem): (the taps among them, the last block's output)."""
        maps = []
        for i in range(start, end):
            x = self.blocks[i](x)
            if i in self.taps:
                maps.append(x)
        return maps, x

    def forward_from(
        self, start: int, x: torch.Tensor, maps: tuple[torch.Tensor, ...]
    ) -> tuple[torch.Tensor, ...]:
        """Resume at block ``start`` after a :class:`TrunkPrefix` of ``start`` blocks (its
        taps ``maps`` and its last output ``x``): every tap, in stride order."""
        return (*maps, *self.run_blocks(start, len(self.blocks), x)[0])


class TrunkPrefix(nn.Module):
    """The stem and the first ``k`` blocks of :class:`FeatureTaps` (a frozen prefix, run by
    ONNX Runtime in training): the taps among them, then block ``k - 1``'s output."""

    def __init__(self, taps: FeatureTaps, k: int):
        super().__init__()
        if not 0 < k < len(taps.blocks):
            raise ValueError(f"a prefix has 1..{len(taps.blocks) - 1} blocks, not {k}")
        self.taps, self.k = taps, k

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        maps, x = self.taps.run_blocks(0, self.k, self.taps.stem(x))
        return (*maps, x)


class _LiteStem(nn.Module):
    def __init__(self, net: EfficientNetLite):
        super().__init__()
        self.conv, self.bn = net._conv_stem, net._bn0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self.bn(self.conv(x)))


def _sep_conv(c_in: int, c_out: int) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1, BN, ReLU: the cheap 3x3 of mobile detectors."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class LocalizerNet(nn.Module):
    def __init__(self, backbone: nn.Module, neck_channels: int = 64, prior: float = 0.05,
                 top_stride: int = 16):
        super().__init__()
        self.features = FeatureTaps(backbone, top_stride)
        # the backbone's frozen prefix (create_backbone(freeze_blocks=K)); a plain list, so
        # the modules are not registered twice
        self._frozen: list[nn.Module] = list(getattr(backbone, "_frozen", []))
        c = neck_channels
        # lateral 1x1 of each tap (attribute names kept from the two-level neck: lat8, lat16)
        for ch, stride in zip(self.features.channels, TAP_STRIDES, strict=False):
            setattr(self, f"lat{stride}", nn.Sequential(
                nn.Conv2d(ch, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)))
        self.smooth = nn.Sequential(_sep_conv(c, c), _sep_conv(c, c))
        self.heat_head = nn.Sequential(_sep_conv(c, c), nn.Conv2d(c, 1, 1))
        self.box_head = nn.Sequential(_sep_conv(c, c), nn.Conv2d(c, 4, 1))
        heat_out = self.heat_head[-1]
        assert isinstance(heat_out, nn.Conv2d) and heat_out.bias is not None
        nn.init.constant_(heat_out.bias, -math.log((1 - prior) / prior))  # focal-loss prior
        box_out = self.box_head[-1]
        assert isinstance(box_out, nn.Conv2d) and box_out.bias is not None
        nn.init.normal_(box_out.weight, std=0.01)
        nn.init.constant_(box_out.bias, 1.0)  # start at boxes ~2.7 strides per side

    def train(self, mode: bool = True) -> LocalizerNet:
        super().train(mode)
        for m in self._frozen:
            m.eval()  # frozen BatchNorm keeps its ImageNet statistics
        return self

    def forward_raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(heatmap logits (N,1,h,w), log-ltrb (N,4,h,w))."""
        return self.forward_head(*self.features(x))

    def forward_head(self, *maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Neck + heads on the backbone's maps at strides 8, 16 (, 32) (raw outputs, as
        forward_raw): top-down, each coarser level upsampled (nearest) and added."""
        levels = [getattr(self, f"lat{s}")(m) for s, m in zip(TAP_STRIDES, maps, strict=False)]
        p = levels[-1]
        for lat in reversed(levels[:-1]):
            p = lat + F.interpolate(p, size=lat.shape[-2:], mode="nearest")
        p = self.smooth(p)
        return self.heat_head(p), self.box_head(p).clamp(max=LTRB_MAX_LOG)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heat, log_ltrb = self.forward_raw(x)
        return torch.sigmoid(heat), torch.exp(log_ltrb)


def build_localizer(
    backbone: str, *, pretrained: bool, freeze_blocks: int = 0, neck_channels: int = 64,
    top_stride: int = 16,
) -> LocalizerNet:
    """A localizer on backbone ``backbone`` of the registry (``efficientnet_lite0``,
    ``tiny_cnn``); ``freeze_blocks`` as in :func:`create_backbone`; ``top_stride`` the
    coarsest feature tap (16, or 32 for more context)."""
    net = create_backbone(backbone, pretrained=pretrained, freeze_blocks=freeze_blocks)
    return LocalizerNet(net, neck_channels=neck_channels, top_stride=top_stride)
