"""Geometric and photometric helpers, the catalog image and the training views.

Every function takes its ``numpy.random.Generator``; callers give each image its own.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageFilter

Box = tuple[int, int, int, int]


def _perspective_coeffs(
    src: list[tuple[float, float]], dst: list[tuple[float, float]]
) -> list[float]:
    """PIL's PERSPECTIVE coefficients mapping output points ``dst`` to input points ``src``."""
    a, b = [], []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    return np.linalg.solve(np.asarray(a, np.float64), np.asarray(b, np.float64)).tolist()


def warp(obj: Image.Image, side: float, angle: float, persp: np.ndarray) -> Image.Image:
    """Scale RGBA ``obj`` so its longer side is ``side``, rotate it by ``angle`` degrees and move
    its corners by ``persp`` (4x2, relative to the size), in one resampling.  Premultiplied
    alpha, so that no dark fringes appear at the edges."""
    s = side / max(obj.size)
    size = (max(1, round(obj.width * s)), max(1, round(obj.height * s)))
    p = obj.convert("RGBa").resize(size, Image.Resampling.BICUBIC)
    if abs(angle) < 0.05 and np.abs(persp).max() < 1e-4:
        return p.convert("RGBA")
    w, h = p.size
    m = max(w, h)
    a = math.radians(-angle)  # PIL rotates counter-clockwise for positive angles
    ca, sa = math.cos(a), math.sin(a)
    src = [(0.0, 0.0), (float(w), 0.0), (float(w), float(h)), (0.0, float(h))]
    dst = []
    for (x, y), (px, py) in zip(src, persp, strict=True):
        dx, dy = x - w / 2, y - h / 2
        dst.append((ca * dx - sa * dy + float(px) * m, sa * dx + ca * dy + float(py) * m))
    x0 = math.floor(min(q[0] for q in dst))
    y0 = math.floor(min(q[1] for q in dst))
    dst = [(x - x0, y - y0) for x, y in dst]
    out = (max(1, math.ceil(max(q[0] for q in dst))), max(1, math.ceil(max(q[1] for q in dst))))
    p = p.transform(
        out,
        Image.Transform.PERSPECTIVE,
        _perspective_coeffs(src, dst),
        resample=Image.Resampling.BICUBIC,
    )
    return p.convert("RGBA")


def alpha_box(obj: Image.Image, threshold: int = 64) -> Box | None:
    """Bounding box of the pixels with alpha > ``threshold`` (x1, y1 exclusive)."""
    a = np.asarray(obj.getchannel("A")) > threshold
    rows, cols = np.flatnonzero(a.any(1)), np.flatnonzero(a.any(0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def paste(canvas: Image.Image, obj: Image.Image, x: int, y: int) -> None:
    """Alpha-composite ``obj`` onto RGBA ``canvas`` at (x, y), clipped at the borders."""
    w, h = canvas.size
    x0, y0, x1, y1 = max(0, x), max(0, y), min(w, x + obj.width), min(h, y + obj.height)
    if x1 > x0 and y1 > y0:
        canvas.alpha_composite(obj.crop((x0 - x, y0 - y, x1 - x, y1 - y)), (x0, y0))


def paste_shadow(
    canvas: Image.Image, obj: Image.Image, x: int, y: int, offset: float, strength: float
) -> None:
    """A soft dark copy of ``obj``'s silhouette under where ``obj`` will be pasted at (x, y)."""
    blur = max(0.8, offset * 0.8)
    pad = int(2 * blur) + 1
    a = np.pad(np.asarray(obj.getchannel("A"), np.float32) * strength, pad)
    sh = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").filter(
        ImageFilter.GaussianBlur(blur)
    )
    out = Image.new("RGBA", sh.size, (0, 0, 0, 0))
    out.putalpha(sh)
    paste(canvas, out, round(x - pad + offset), round(y - pad + offset))


def jitter_colors(arr: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Brightness, contrast, saturation and a small colour cast; no hue rotation (colour is what
    tells a lemon soda from a cherry soda)."""
    grey = arr.mean(axis=2, keepdims=True)
    a = grey + (arr - grey) * rng.uniform(1 - 0.25 * strength, 1 + 0.25 * strength)
    m = float(a.mean())
    a = (a - m) * rng.uniform(1 - 0.2 * strength, 1 + 0.2 * strength) + m
    gain = rng.uniform(1 - 0.2 * strength, 1 + 0.15 * strength)
    cast = 1 + rng.uniform(-0.05, 0.05, size=3).astype(np.float32) * strength
    return np.clip(a * gain * cast, 0, 255)


def gradient(
    rng: np.random.Generator, h: int, w: int, c1: np.ndarray, c2: np.ndarray
) -> np.ndarray:
    th = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx / max(w - 1, 1) * np.cos(th) + yy / max(h - 1, 1) * np.sin(th)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def lowfreq(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    small = (rng.random((cells, cells)) * 255).astype(np.uint8)
    big = Image.fromarray(small, "L").resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(big, np.float32) / 255.0


def light_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Studio-like backgrounds of seller photos: white, light colour, gradient or soft texture."""
    u = rng.random()
    c1 = rng.uniform(200, 255, size=3).astype(np.float32)
    if u < 0.35:
        return np.full((size, size, 3), 255 if u < 0.2 else c1, np.float32)
    c2 = rng.uniform(150, 255, size=3).astype(np.float32)
    if u < 0.75:
        return gradient(rng, size, size, c1, c2)
    t = lowfreq(rng, size, size, int(rng.integers(3, 9)))
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


def encode_jpeg(arr: np.ndarray | Image.Image, quality: int) -> bytes:
    im = (
        arr
        if isinstance(arr, Image.Image)
        else Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    )
    buf = io.BytesIO()
    im.convert("RGB").save(buf, "JPEG", quality=int(quality))
    return buf.getvalue()


def catalog_image(pack: Image.Image, size: int) -> Image.Image:
    """The clean catalog photo: the pack centred on white, 88% of the frame."""
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    obj = warp(pack, 0.88 * size, 0.0, np.zeros((4, 2)))
    paste(canvas, obj, (size - obj.width) // 2, (size - obj.height) // 2)
    return canvas.convert("RGB")


def train_view(pack: Image.Image, size: int, rng: np.random.Generator) -> tuple[bytes, int]:
    """One augmented seller photo of the pack: (JPEG bytes, quality)."""
    bg = Image.fromarray(light_background(rng, size).astype(np.uint8), "RGB").convert("RGBA")
    persp = rng.uniform(-1, 1, size=(4, 2)) * rng.uniform(0.0, 0.06)
    obj = warp(pack, size * rng.uniform(0.55, 0.95), float(rng.uniform(-15, 15)), persp)
    ox = round(
        rng.uniform(0, size - obj.width) if obj.width <= size else rng.uniform(size - obj.width, 0)
    )
    oy = round(
        rng.uniform(0, size - obj.height)
        if obj.height <= size
        else rng.uniform(size - obj.height, 0)
    )
    if rng.random() < 0.4:
        paste_shadow(bg, obj, ox, oy, size * 0.025, 0.35)
    paste(bg, obj, ox, oy)
    arr = jitter_colors(np.asarray(bg.convert("RGB"), np.float32), rng)
    img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.25:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.1)))
    quality = int(rng.integers(60, 96))
    return encode_jpeg(img, quality), quality
