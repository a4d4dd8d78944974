"""Batch augmentation with kornia, applied to normalised model inputs during training.

Two knobs (0 turns a group off, 1 is the default strength, up to 3 is allowed):

* ``strength``: photometric and geometric jitter that stays within an art style: brightness /
  contrast / saturation (never hue: colour identifies a product), colour temperature, small
  affine and perspective warps, Gaussian and motion blur, sensor noise.
* ``style``: breakers of the art style, because customer photos are drawn/photographed
  differently from catalog images (frozen ImageNet features were
  measured to lose ~80 points of top-1 across that shift): grayscale, posterize, solarize, equalize, sharpness, and dark outlines
  drawn on the edges (line-art look).  Channel shuffles and hue rotations are left out on
  purpose: they change which product it is.

Plus random erasing (``erasing_p``) for occlusions, and ``rand_conv``: the probability of a
random convolution (:class:`RandomConvolution`), a style breaker that keeps colour (off by
default; tried and not adopted by the accuracy study).  Each call is seeded (``seed`` argument)
through a forked RNG, so the augmentation of a batch is a pure function of (seed, batch) and
does not depend on, or disturb, the global RNG that model initialisation and dropout use.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from kornia.color import rgb_to_grayscale
from kornia.filters import sobel
from torch import nn


def _p(value: float) -> float:
    return float(min(1.0, max(0.0, value)))


class RandomOutline(nn.Module):
    """Darken pixels on strong edges (Sobel magnitude above a random threshold), optionally
    thickened by a 3×3 max-pool: turns a flat-shaded picture into outlined line art."""

    def __init__(self, p: float, threshold: tuple[float, float] = (0.08, 0.25),
                 darkness: tuple[float, float] = (0.5, 1.0)) -> None:
        super().__init__()
        self.p, self.threshold, self.darkness = p, threshold, darkness

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chosen = torch.rand(x.shape[0], device=x.device) < self.p
        if not bool(chosen.any()):
            return x
        sel = x[chosen]
        n = sel.shape[0]
        mag = sobel(rgb_to_grayscale(sel))
        thr = torch.empty(n, 1, 1, 1, device=x.device).uniform_(*self.threshold)
        edge = (mag > thr).to(sel.dtype)
        thick = torch.rand(n, 1, 1, 1, device=x.device) < 0.5
        edge = torch.where(thick, F.max_pool2d(edge, 3, stride=1, padding=1), edge)
        dark = torch.empty(n, 1, 1, 1, device=x.device).uniform_(*self.darkness)
        out = x.clone()
        out[chosen] = sel * (1.0 - dark * edge)
        return out


class RandomConvolution(nn.Module):
    """Random convolutions (RandConv, Xu et al., ICLR 2021) that keep colour.

    Each chosen image is filtered by a random k×k kernel (k from ``kernel_sizes``, weights
    N(0, 1/k²)), the *same* spatial kernel for the three channels, so channels are never mixed
    (colour identifies a product, see the module docstring); the result is matched to the
    image's per-channel mean and standard deviation (colour and contrast stay; a kernel with a
    negative sum is negated, so no image turns into its negative) and blended with the image by
    a random α ~ U(0, 1).  What changes is texture, stroke and shading: the
    local-structure part of an art style.  Reflect padding keeps borders free of dark frames.
    """

    def __init__(self, p: float, kernel_sizes: Sequence[int] = (3, 5, 7), eps: float = 1e-5) -> None:
        super().__init__()
        if any(k % 2 == 0 or k < 1 for k in kernel_sizes):
            raise ValueError("kernel sizes must be odd and positive")
        self.p, self.kernel_sizes, self.eps = p, tuple(kernel_sizes), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chosen = torch.nonzero(torch.rand(x.shape[0], device=x.device) < self.p).flatten()
        if chosen.numel() == 0:
            return x
        out = x.clone()
        for i in chosen.tolist():
            k = self.kernel_sizes[int(torch.randint(len(self.kernel_sizes), ()))]
            weight = torch.randn(1, 1, k, k, device=x.device, dtype=x.dtype) / k
            weight = weight * torch.sign(weight.sum())  # keep polarity: no negative images
            img = x[i].unsqueeze(1)  # channels as a batch of 1-channel images: one kernel for all
            y = F.conv2d(F.pad(img, (k // 2,) * 4, mode="reflect"), weight).squeeze(1)
            mu, sd = x[i].mean((-2, -1), keepdim=True), x[i].std((-2, -1), keepdim=True)
            y = (y - y.mean((-2, -1), keepdim=True)) / (y.std((-2, -1), keepdim=True) + self.eps)
            alpha = torch.rand((), device=x.device, dtype=x.dtype)
            out[i] = alpha * x[i] + (1 - alpha) * (y * sd + mu)
        return out


def build_ops(strength: float, style: float, erasing_p: float,
              rand_conv: float = 0.0) -> list[nn.Module]:
    """The list of augmentation modules for the given strengths (see module docstring)."""
    ops: list[nn.Module] = []
    s, t = strength, style
    if s > 0:
        ops += [
            K.ColorJiggle(brightness=0.3 * s, contrast=0.3 * s, saturation=min(1.0, 0.4 * s),
                          hue=0.0, p=0.8),
            K.RandomPlanckianJitter(mode="blackbody", p=_p(0.2 * s)),
            K.RandomAffine(degrees=15 * s, translate=(min(0.4, 0.08 * s),) * 2,
                           scale=(max(0.3, 1 - 0.2 * s), 1 + 0.1 * s), shear=5 * s,
                           padding_mode="border", p=_p(0.5 * s)),
            K.RandomPerspective(distortion_scale=min(0.8, 0.2 * s), p=_p(0.3 * s)),
            K.RandomGaussianBlur((5, 5), sigma=(0.1, max(0.2, 1.2 * s)), p=_p(0.2 * s)),
            K.RandomMotionBlur(5, angle=45.0, direction=0.5, p=_p(0.1 * s)),
            K.RandomGaussianNoise(std=0.03 * s, p=_p(0.25 * s)),
        ]
    if t > 0:
        ops += [
            K.RandomGrayscale(p=_p(0.15 * t)),
            K.RandomPosterize(bits=(3.0, 6.0), p=_p(0.2 * t)),
            K.RandomSolarize(thresholds=0.1, additions=0.1, p=_p(0.1 * t)),
            K.RandomEqualize(p=_p(0.15 * t)),
            K.RandomSharpness(sharpness=(0.5, 1.0), p=_p(0.2 * t)),
            RandomOutline(p=_p(0.3 * t)),
        ]
    if rand_conv > 0:  # after the other style ops, before erasing; absent at 0 (same RNG draws)
        ops.append(RandomConvolution(p=_p(rand_conv)))
    if erasing_p > 0:
        ops.append(K.RandomErasing(scale=(0.02, 0.2), ratio=(0.3, 3.3), value=0.5, p=erasing_p))
    return ops


class BatchAugment(nn.Module):
    """Normalised batch → de-normalise → kornia ops in [0, 1] → clamp → re-normalise."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], *, strength: float = 1.0,
                 style: float = 0.5, erasing_p: float = 0.25, rand_conv: float = 0.0) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.std: torch.Tensor
        if min(strength, style, erasing_p, rand_conv) < 0:
            raise ValueError("augmentation strengths must be >= 0")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.ops = nn.Sequential(*build_ops(strength, style, erasing_p, rand_conv))

    @property
    def enabled(self) -> bool:
        return len(self.ops) > 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        if not self.enabled:
            return x
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            if devices:
                torch.cuda.manual_seed(seed)
            img = (x * self.std + self.mean).clamp_(0.0, 1.0)
            for op in self.ops:
                img = op(img).clamp_(0.0, 1.0)
        return ((img - self.mean) / self.std).contiguous()


def batch_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """A 63-bit seed for one batch, distinct per (seed, epoch, step, rank)."""
    h = (seed * 1_000_003 + epoch) * 1_000_033 + step
    return (h * 1_000_037 + rank) % (2**63 - 1)


def mix_style(x: torch.Tensor, p: float, alpha: float = 0.1, eps: float = 1e-6) -> torch.Tensor:
    """MixStyle (Zhou et al., ICLR 2021) on feature maps ``(N, C, H, W)``: with probability
    ``p`` per batch, each sample's channel-wise mean and std are replaced by a Beta(α, α) mix
    of its own and another sample's. The statistics carry much of an image's *style*
    (colour, texture, rendering) and little of its content, so the tail learns to ignore
    them. The training RNG decides (call inside the seeded training loop)."""
    if p <= 0 or x.shape[0] < 2 or float(torch.rand(())) >= p:
        return x
    mu = x.mean(dim=(2, 3), keepdim=True)
    sig = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt()
    mu, sig = mu.detach(), sig.detach()
    lam = torch.distributions.Beta(alpha, alpha).sample((x.shape[0], 1, 1, 1)).to(x.dtype)
    perm = torch.randperm(x.shape[0])
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return (x - mu) / sig * sig_mix + mu_mix
