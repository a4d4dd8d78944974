"""The colour-keeping random convolution (training.augment.RandomConvolution) and its knob."""

from __future__ import annotations

import torch

from training.augment import BatchAugment, RandomConvolution, build_ops


def _images(n: int = 6, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g) * 0.2 + 0.4
    x[:, :, 8:24, 8:24] += 0.3  # a square: structure for the kernel to act on
    return x


def test_keeps_each_channels_colour_and_contrast_and_changes_structure() -> None:
    x = _images()
    torch.manual_seed(1)
    y = RandomConvolution(p=1.0)(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.mean((-2, -1)), x.mean((-2, -1)), atol=1e-5, rtol=0)
    assert not torch.allclose(y, x, atol=1e-3)
    for i in range(len(x)):  # polarity kept: never the negative of the image
        for c in range(3):
            corr = torch.corrcoef(torch.stack([x[i, c].flatten(), y[i, c].flatten()]))[0, 1]
            assert corr > 0


def test_never_mixes_channels() -> None:
    x = _images()
    x[:, 1:] = 0.5  # green and blue flat: only red carries structure
    torch.manual_seed(2)
    y = RandomConvolution(p=1.0)(x)
    torch.testing.assert_close(y[:, 1:], x[:, 1:], atol=1e-5, rtol=0)
    assert not torch.allclose(y[:, 0], x[:, 0], atol=1e-3)


def test_probability_zero_is_the_identity_and_knob_off_adds_no_op() -> None:
    x = _images()
    assert torch.equal(RandomConvolution(p=0.0)(x), x)
    assert not any(isinstance(op, RandomConvolution) for op in build_ops(1.0, 1.0, 0.25))
    assert isinstance(build_ops(1.0, 1.0, 0.0, rand_conv=0.5)[-1], RandomConvolution)


def test_batch_augment_with_random_convolutions_is_seeded_and_off_by_default() -> None:
    x = _images()
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    only_rc = BatchAugment(mean, std, strength=0.0, style=0.0, erasing_p=0.0, rand_conv=1.0)
    a, b = only_rc(x, seed=7), only_rc(x, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, only_rc(x, seed=8))
    assert not BatchAugment(mean, std, strength=0.0, style=0.0, erasing_p=0.0).enabled
