"""Decoding images from outside (uploads, catalog files) into RGB, with limits.

Every failure is one of three typed errors that the web layer maps to a status code:
:class:`ImageDecodeError` (400), :class:`ImageTooLarge` (413), :class:`UnsupportedImageType` (415).
The pixel count is checked from the header, before any pixel is decoded, and Pillow's own
decompression-bomb guard stays on as a second line.
"""

from __future__ import annotations

import ctypes
import io
import os
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.settings import ImageLimits

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO", "HEIF"})

try:  # HEIC/HEIF from iPhones, when the optional plugin is installed
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_AVAILABLE = True
except ImportError:
    HEIF_AVAILABLE = False


class ImageError(ValueError):
    """Base of the image errors; ``code`` is a short machine-readable reason."""

    code = "image_error"


class ImageDecodeError(ImageError):
    code = "undecodable_image"


class ImageTooLarge(ImageError):
    code = "image_too_large"


class ImageTooSmall(ImageError):
    code = "image_too_small"


class UnsupportedImageType(ImageError):
    code = "unsupported_image_type"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB; transparency is composited on white (catalog convention)."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode.startswith("I") or img.mode == "F":
        img = _to_8bit(img)
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _to_8bit(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float greyscale → L, through numpy (Pillow's ``point`` and
    ``convert`` do not support every one of these modes, e.g. big-endian ``I;16B``).
    Integers are taken as 16-bit samples when they exceed 255; floats as [0, 1] when they
    fit in it, else as 0-255."""
    a = np.asarray(img).astype(np.float32)
    top = float(a.max()) if a.size else 0.0
    if img.mode == "F":
        a = a * 255.0 if top <= 1.0 else a
    elif img.mode.startswith("I;16") or top > 255:
        a = a / 257.0
    return Image.fromarray(np.clip(np.nan_to_num(a), 0, 255).astype(np.uint8), mode="L")


# EXIF orientation → the transpose that makes the image upright
_ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "RGBa", "La", "I", "F", "CMYK", "YCbCr",
                        "I;16", "I;16B", "I;16L"})
# above this, freed pixel buffers are handed back to the OS (see release_freed_memory)
LARGE_DECODE_PIXELS = 4_000_000
FULL_SIZE = "sku_full_size"  # Image.info key: (w, h) of the upright photo before reduction


def full_size(img: Image.Image) -> tuple[int, int]:
    """The size of the photo as sent (upright), before any reduced-size decoding."""
    size = img.info.get(FULL_SIZE)
    return (int(size[0]), int(size[1])) if size else img.size


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block is ignored, not fatal
        return 1
    return value if isinstance(value, int) else 1


def _orient(img: Image.Image, orientation: int) -> Image.Image:
    method = _ORIENT.get(orientation)
    return img.transpose(method) if method is not None else img


def _reduce(img: Image.Image, target: int | None) -> Image.Image:
    """Shrink by an integer factor right after decoding, while the model needs at most
    ``target`` px a side: orientation and RGB conversion then copy the small image, not the
    full one (JPEG is already decoded small through ``draft``)."""
    # like JPEG's draft: both sides stay at least ``target`` (a 20000x16 strip is not reduced)
    factor = min(img.size) // target if target else 1
    if factor < 2 or img.mode not in _REDUCIBLE:
        return img
    try:
        return img.reduce(factor)
    except ValueError:  # a mode this Pillow cannot reduce: keep the full size
        return img


def release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``).  Large decodes free
    tens of MB that glibc otherwise keeps in its arenas: a worker would stay at its
    high-water mark.  A no-op where glibc is absent."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
        return trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _find_malloc_trim()


def decode_image(
    data: bytes,
    limits: ImageLimits | None = None,
    *,
    draft_size: int | None = None,
) -> Image.Image:
    """Bytes → oriented RGB image.  ``draft_size`` lets JPEG decode at a reduced scale
    (DCT scaling) when the model needs far fewer pixels than the photo has."""
    limits = limits or ImageLimits()
    if not data:
        raise ImageDecodeError("empty body: no image data")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            fmt = img.format or ""
            if fmt not in SUPPORTED_FORMATS:
                raise UnsupportedImageType(f"image format {fmt or 'unknown'} is not supported")
            w, h = img.size
            if w * h > limits.max_pixels:
                raise ImageTooLarge(
                    f"image is {w}x{h} = {w * h} pixels; the limit is {limits.max_pixels}"
                )
            if min(w, h) < limits.min_side:
                raise ImageTooSmall(
                    f"image is {w}x{h} pixels; each side must be at least {limits.min_side}"
                )
            orientation = _orientation(img)
            if draft_size and fmt == "JPEG":
                img.draft("RGB", (draft_size, draft_size))
            img.load()
            img = _reduce(img, draft_size)
            out = _to_rgb(_orient(img, orientation))
            # the upright size of the photo as sent: boxes are given and answered in it
            out.info[FULL_SIZE] = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
        if w * h >= LARGE_DECODE_PIXELS:
            release_freed_memory()
        return out
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(str(exc)) from None
    except UnidentifiedImageError:
        raise UnsupportedImageType("not an image, or an image format that is not supported") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"the image could not be decoded: {exc}") from None


def photo_draft_size(input_size: int) -> int:
    """The image policy for photos: decode at no less than 4x the model's input side (and at
    least 512 px), so JPEG's DCT scaling skips the pixels a model could never use while the
    localizer's boxes stay sharp enough to crop from."""
    return max(input_size * 4, 512)


def decode_photo(data: bytes, input_size: int, limits: ImageLimits | None = None) -> Image.Image:
    """A customer photo (an upload, or a query photo in an evaluation) decoded the way the
    service decodes it: limits, EXIF orientation, reduced-size decoding for ``input_size``.
    Boxes in the photo's own pixels map to the decoded image by :func:`decoded_scale`."""
    return decode_image(data, limits, draft_size=photo_draft_size(input_size))


def decoded_scale(img: Image.Image) -> tuple[float, float]:
    """Decoded pixels per pixel of the photo as sent (1, 1 unless it was decoded reduced)."""
    fw, fh = full_size(img)
    return img.width / fw, img.height / fh


def read_image_bytes(uri: str, *, max_bytes: int | None = None, timeout_s: float = 10.0) -> bytes:
    """Bytes of a local path, ``file://`` URI or ``http(s)://`` URL."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        with urllib.request.urlopen(uri, timeout=timeout_s) as resp:  # noqa: S310 (scheme checked)
            data: bytes = resp.read(max_bytes + 1 if max_bytes else -1)
        return data
    if parsed.scheme == "file":
        path = Path(parsed.path)
    elif parsed.scheme and len(parsed.scheme) > 1:
        raise ImageDecodeError(f"cannot read images from '{parsed.scheme}://' URIs here")
    else:
        path = Path(uri)
    if max_bytes is not None and os.path.getsize(path) > max_bytes:
        raise ImageTooLarge(f"{path} is larger than {max_bytes} bytes")
    return path.read_bytes()


def load_image(uri: str, limits: ImageLimits | None = None) -> Image.Image:
    """Read and decode a catalog image (local path or URI) with the same rules as uploads."""
    limits = limits or ImageLimits()
    try:
        data = read_image_bytes(uri, max_bytes=limits.max_bytes)
    except OSError as exc:
        raise ImageDecodeError(f"cannot read {uri}: {exc}") from None
    return decode_image(data, limits)


def configure_pillow_limits(limits: ImageLimits) -> None:
    """Pillow's own decompression-bomb guard, as a second line behind the header check:
    above ``max_pixels`` it warns, above twice that it refuses."""
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
