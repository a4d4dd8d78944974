"""Decoding with limits and the shared preprocessing."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.imageio import (
    ImageDecodeError,
    ImageTooLarge,
    ImageTooSmall,
    UnsupportedImageType,
    _to_rgb,
    decode_image,
)
from service.preprocess import PreprocessConfig, crop_box, preprocess, preprocess_batch
from service.settings import ImageLimits


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [("RGB", "JPEG"), ("RGB", "WEBP"), ("RGBA", "PNG"), ("P", "PNG"), ("L", "PNG"),
     ("CMYK", "JPEG"), ("LA", "PNG"), ("I;16", "PNG"), ("I;16B", "TIFF"), ("I;16", "TIFF"),
     ("I", "TIFF"), ("F", "TIFF"), ("1", "PNG"), ("LAB", "TIFF"), ("YCbCr", "TIFF"),
     ("CMYK", "TIFF")],
)
def test_every_mode_becomes_rgb(mode: str, fmt: str) -> None:
    img = Image.new("RGB", (40, 30), (250, 20, 20)).convert(mode)
    out = decode_image(_encode(img, fmt))
    assert out.mode == "RGB" and out.size == (40, 30)


@pytest.mark.parametrize(
    "mode", ["I;16", "I;16B", "I;16L", "I", "F", "1", "L", "P", "PA", "LA", "RGBA",
             "CMYK", "YCbCr", "LAB", "HSV", "RGBX"],
)
def test_every_pillow_mode_converts_to_rgb(mode: str) -> None:
    grey = Image.linear_gradient("L").resize((32, 24))
    img = grey.convert("I").convert(mode) if mode.startswith("I") else grey.convert(mode)
    if mode == "P":
        img.info["transparency"] = 0
    out = _to_rgb(img)
    assert out.mode == "RGB" and out.size == (32, 24)


def test_sixteen_bit_samples_keep_their_brightness() -> None:
    img = Image.new("I;16B", (20, 20), 65535)
    assert np.asarray(_to_rgb(img)).min() == 255
    assert np.asarray(_to_rgb(Image.new("F", (20, 20), 0.5))).max() == 127


def test_transparent_pixels_become_white() -> None:
    img = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    img.paste((0, 0, 255, 255), (0, 0, 10, 20))
    out = np.asarray(decode_image(_encode(img, "PNG")))
    assert tuple(out[5, 15]) == (255, 255, 255) and tuple(out[5, 2]) == (0, 0, 255)


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (60, 20), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° CW on display
    out = decode_image(_encode(img, "JPEG", exif=exif))
    assert out.size == (20, 60)


def test_errors_are_typed() -> None:
    jpeg = _encode(Image.new("RGB", (64, 64)), "JPEG")
    with pytest.raises(ImageDecodeError):
        decode_image(b"")
    with pytest.raises(ImageDecodeError):
        decode_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(UnsupportedImageType):
        decode_image(b"hello, this is a text file\n" * 10)
    with pytest.raises(ImageTooLarge):
        decode_image(jpeg, ImageLimits(max_bytes=100))
    with pytest.raises(ImageTooSmall, match="each side must be at least 16"):
        decode_image(_encode(Image.new("RGB", (4, 4)), "PNG"))


def test_pixel_bomb_is_refused_from_the_header() -> None:
    # 20000 x 20000 one-bit PNG: a few KB on the wire, 400 MP decoded
    bomb = _encode(Image.new("1", (20000, 20000)), "PNG", optimize=True)
    assert len(bomb) < 200_000
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode_image(bomb, ImageLimits(max_pixels=40_000_000))


@pytest.mark.parametrize("mode", ["letterbox", "squash", "center_crop"])
def test_preprocess_shape_and_normalisation(mode: str) -> None:
    cfg = PreprocessConfig(input_size=32, resize=mode, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    img = Image.new("RGB", (80, 40), (255, 0, 127))
    x = preprocess(img, cfg)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    assert x[0, 16, 16] == pytest.approx(1.0) and x[1, 16, 16] == pytest.approx(-1.0)
    batch = preprocess_batch([img, img], cfg)
    assert batch.shape == (2, 3, 32, 32) and np.array_equal(batch[0], x)


def test_letterbox_pads_with_pad_colour() -> None:
    cfg = PreprocessConfig(input_size=20, mean=(0, 0, 0), std=(1, 1, 1), pad_rgb=(255, 255, 255))
    x = preprocess(Image.new("RGB", (40, 20), (0, 0, 0)), cfg)
    assert x[:, 0, 10].tolist() == [1.0, 1.0, 1.0]  # top band is padding
    assert x[:, 10, 10].tolist() == [0.0, 0.0, 0.0]


def test_crop_box_margin_and_clipping() -> None:
    img = Image.new("RGB", (100, 50))
    assert crop_box(img, (10, 10, 30, 20)).size == (20, 10)
    assert crop_box(img, (10, 10, 30, 20), margin=0.5).size == (40, 20)
    assert crop_box(img, (90, 40, 100, 50), margin=1.0).size == (20, 20)
    assert crop_box(img, None) is img
    with pytest.raises(ValueError):
        crop_box(img, (5, 5, 5, 9))
    with pytest.raises(ValueError):
        crop_box(img, (200, 200, 300, 300))
