"""Small drawing helpers shared by the label and pack renderers: fonts, colours, logos."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .vocab import RGB


@lru_cache(maxsize=128)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font: no font file needed, identical on every machine."""
    return ImageFont.load_default(size=max(6, int(size)))


def mix(a: RGB, b: RGB, t: float) -> RGB:
    r, g, b_ = (int(round(x + (y - x) * t)) for x, y in zip(a, b, strict=True))
    return (r, g, b_)


def shade(c: RGB, f: float) -> RGB:
    """``f`` > 0 lightens towards white, < 0 darkens towards black."""
    return mix(c, (255, 255, 255), f) if f >= 0 else mix(c, (0, 0, 0), -f)


def luma(c: RGB) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def ink_on(bg: RGB, *candidates: RGB) -> RGB:
    """The candidate with the most contrast on ``bg`` (white / near-black as fallbacks)."""
    options = [*candidates, (255, 255, 255), (25, 25, 30)]
    return max(options, key=lambda c: abs(luma(c) - luma(bg)) + (8 if c in candidates else 0))


def fit_text(
    draw: ImageDraw.ImageDraw,
    text: str,
    box: tuple[float, float, float, float],
    fill: RGB,
    *,
    max_size: float,
    bold: bool = False,
    stroke: RGB | None = None,
) -> None:
    """Draw ``text`` centred in ``box``, as large as fits (at most ``max_size`` px high)."""
    x0, y0, x1, y1 = box
    width, height = x1 - x0, y1 - y0
    size = max(6, int(min(max_size, height)))
    length = font(size).getlength(text)
    if length > width > 0:
        size = max(6, int(size * width / length))
    f = font(size)
    sw = max(1, size // 14) if bold else 0
    if stroke is not None:
        sw = max(sw, max(1, size // 10))
    draw.text(
        ((x0 + x1) / 2, (y0 + y1) / 2),
        text,
        font=f,
        fill=fill,
        anchor="mm",
        stroke_width=sw,
        stroke_fill=stroke if stroke is not None else fill,
    )


def _star(
    cx: float, cy: float, r: float, n: int = 5, inner: float = 0.45
) -> list[tuple[float, float]]:
    pts = []
    for k in range(2 * n):
        rr = r if k % 2 == 0 else r * inner
        a = -math.pi / 2 + k * math.pi / n
        pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
    return pts


def _ngon(cx: float, cy: float, r: float, n: int, rot: float = 0.0) -> list[tuple[float, float]]:
    return [
        (cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n))
        for k in range(n)
    ]


def draw_logo(
    draw: ImageDraw.ImageDraw,
    kind: str,
    cx: float,
    cy: float,
    r: float,
    fill: RGB,
    ink: RGB,
    letter: str,
) -> None:
    """The brand mark: a shape with the brand's initial in it."""
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        draw.ellipse(box, fill=fill, outline=ink, width=max(1, int(r / 8)))
    elif kind == "star":
        draw.polygon(_star(cx, cy, r * 1.15), fill=fill)
    elif kind == "leaf":
        draw.chord((cx - r, cy - 1.3 * r, cx + 1.6 * r, cy + 1.3 * r), 90, 270, fill=fill)
        draw.chord((cx - 1.6 * r, cy - 1.3 * r, cx + r, cy + 1.3 * r), 270, 90, fill=fill)
    elif kind == "diamond":
        draw.polygon(
            [(cx, cy - 1.2 * r), (cx + r, cy), (cx, cy + 1.2 * r), (cx - r, cy)], fill=fill
        )
    elif kind == "hexagon":
        draw.polygon(_ngon(cx, cy, 1.1 * r, 6, math.pi / 6), fill=fill)
    elif kind == "shield":
        draw.polygon(
            [
                (cx - r, cy - r),
                (cx + r, cy - r),
                (cx + r, cy + 0.2 * r),
                (cx, cy + 1.25 * r),
                (cx - r, cy + 0.2 * r),
            ],
            fill=fill,
        )
    elif kind == "drop":
        draw.ellipse((cx - r, cy - 0.6 * r, cx + r, cy + 1.2 * r), fill=fill)
        draw.polygon(
            [(cx - 0.86 * r, cy - 0.1 * r), (cx, cy - 1.4 * r), (cx + 0.86 * r, cy - 0.1 * r)],
            fill=fill,
        )
    elif kind == "sun":
        draw.polygon(_star(cx, cy, 1.3 * r, 12, 0.72), fill=fill)
    else:  # square
        draw.rounded_rectangle(box, radius=r / 3, fill=fill)
    fit_text(
        draw,
        letter,
        (cx - r * 0.8, cy - r * 0.8, cx + r * 0.8, cy + r * 0.8),
        ink,
        max_size=r * 1.3,
        bold=True,
    )


def vgradient(h: int, w: int, top: RGB, bottom: RGB) -> np.ndarray:
    """(h, w, 3) float32 vertical gradient."""
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    a = np.asarray(top, np.float32)
    b = np.asarray(bottom, np.float32)
    return np.broadcast_to(a + (b - a) * t, (h, w, 3)).astype(np.float32)


def to_image(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
