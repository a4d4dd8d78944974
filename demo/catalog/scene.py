"""'Real-shot' query photos: the pack on a shelf or a table, among other packs, shot badly.

The true box of the product is measured on its alpha after every geometric transform; the
photometric damage that follows (light, blur, noise, JPEG) moves no pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .augment import Box, alpha_box, encode_jpeg, gradient, lowfreq, paste, paste_shadow, warp

# Table tops: wood, table cloth, stone / laminate.
SURFACES = (
    ((150, 100, 60), (120, 80, 45), (190, 150, 100), (95, 65, 45), (205, 175, 130)),
    ((200, 60, 60), (60, 90, 160), (220, 220, 215), (90, 140, 90), (230, 200, 120)),
    ((200, 200, 200), (235, 232, 225), (120, 120, 125), (60, 60, 65), (180, 170, 150)),
)


@dataclass(slots=True)
class QueryShot:
    jpeg: bytes
    box: Box
    distractor_boxes: list[Box] = field(default_factory=list)
    scene: str = ""
    area_frac: float = 0.0


def _rand_rgb(rng: np.random.Generator, lo: float = 0, hi: float = 255) -> np.ndarray:
    return rng.uniform(lo, hi, size=3).astype(np.float32)


def _blobs(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int, n: int, y_range: tuple
) -> None:
    """Out-of-focus stand-ins for other things in the picture."""
    for _ in range(n):
        col = (*(int(v) for v in rng.integers(0, 256, 3)), int(rng.integers(90, 230)))
        w, h = rng.integers(size // 14, size // 3, 2)
        x0 = int(rng.integers(-size // 8, size))
        y0 = int(
            rng.integers(
                int(y_range[0] * size), max(int(y_range[0] * size) + 1, int(y_range[1] * size))
            )
        )
        box = (x0, y0, x0 + int(w), y0 + int(h))
        if rng.random() < 0.5:
            draw.rounded_rectangle(box, radius=int(min(w, h) // 4), fill=col)
        else:
            draw.ellipse(box, fill=col)


def _shelf(rng: np.random.Generator, size: int) -> tuple[Image.Image, float]:
    wall = gradient(rng, size, size, _rand_rgb(rng, 90, 230), _rand_rgb(rng, 60, 200))
    img = Image.fromarray(wall.astype(np.uint8), "RGB").convert("RGBA")
    over = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)
    shelf_y = rng.uniform(0.68, 0.9) * size
    _blobs(draw, rng, size, int(rng.integers(4, 12)), (-0.2, shelf_y / size - 0.2))
    board = tuple(int(v) for v in _rand_rgb(rng, 120, 240))
    edge_h = rng.uniform(0.05, 0.09) * size
    draw.rectangle((0, shelf_y - 0.03 * size, size, shelf_y), fill=(*board, 255))
    draw.rectangle((0, shelf_y, size, shelf_y + edge_h), fill=(*(int(c * 0.7) for c in board), 255))
    for _ in range(int(rng.integers(1, 4))):  # price tags on the shelf edge
        x = rng.uniform(0, size * 0.85)
        tag = (x, shelf_y + edge_h * 0.15, x + 0.12 * size, shelf_y + edge_h * 0.85)
        draw.rectangle(tag, fill=(250, 250, 245, 255))
        draw.line(
            (tag[0] + 3, tag[1] + edge_h * 0.3, tag[2] - 3, tag[1] + edge_h * 0.3),
            fill=(30, 30, 30, 255),
        )
    draw.rectangle((0, shelf_y + edge_h, size, size), fill=(*(int(c * 0.45) for c in board), 255))
    img.alpha_composite(over)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5))), shelf_y - 0.015 * size


def _table(rng: np.random.Generator, size: int) -> tuple[Image.Image, float]:
    kind = int(rng.integers(3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = np.asarray(SURFACES[kind][int(rng.integers(len(SURFACES[kind])))], np.float32)
    c1 = np.clip(base + rng.uniform(-18, 18, size=3), 0, 255)
    c2 = c1 * rng.uniform(0.55, 0.85)
    if kind == 0:  # wood grain
        noise = lowfreq(rng, size, size, 6)
        t = 0.5 + 0.5 * np.sin(yy * rng.uniform(0.15, 0.5) + 6 * noise + xx * 0.02)
    elif kind == 1:  # fabric checks
        p = rng.uniform(8, 24)
        t = ((xx // p + yy // p) % 2) * 0.6 + lowfreq(rng, size, size, 4) * 0.4
    else:  # stone / laminate
        t = lowfreq(rng, size, size, int(rng.integers(4, 12)))
    arr = c1 * (1 - t[..., None]) + c2 * t[..., None]
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").convert("RGBA")
    over = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    _blobs(ImageDraw.Draw(over), rng, size, int(rng.integers(3, 10)), (-0.2, 1.0))
    img.alpha_composite(over)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.2))), -1.0


def _place(rng: np.random.Generator, size: int, bb: Box, floor: float) -> tuple[int, int]:
    """Top-left of the warped object so its box lies in the frame (standing on the floor line)."""
    bw, bh = bb[2] - bb[0], bb[3] - bb[1]
    x = int(rng.integers(0, max(1, size - bw + 1))) - bb[0]
    if floor > 0 and floor - bh >= 0:
        y = int(round(floor - bh + rng.uniform(-0.02, 0.02) * size)) - bb[1]
    else:
        y = int(rng.integers(0, max(1, size - bh + 1))) - bb[1]
    y = min(max(y, -bb[1]), size - bb[3])
    return x, y


def _camera(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Uneven light, colour cast, gamma, blur, sensor noise."""
    arr = np.asarray(img.convert("RGB"), np.float32)
    h, w = arr.shape[:2]
    l0, l1 = rng.uniform(0.65, 1.25, size=2)
    gain = gradient(rng, h, w, np.asarray([l0], np.float32), np.asarray([l1], np.float32))[..., 0]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = rng.uniform(0.2, 0.8, size=2)
    gain *= 1 - rng.uniform(0, 0.35) * ((xx / w - cx) ** 2 + (yy / h - cy) ** 2)
    arr = arr * gain[..., None] * (1 + rng.uniform(-0.07, 0.07, size=3)).astype(np.float32)
    arr = 255.0 * (np.clip(arr, 0, 255) / 255.0) ** rng.uniform(0.85, 1.2)
    out = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
    if rng.random() < 0.15:  # camera shake
        out = out.filter(ImageFilter.BoxBlur(rng.uniform(0.8, 2.0)))
    radius = rng.uniform(0.0, 1.2)
    if radius > 0.1:
        out = out.filter(ImageFilter.GaussianBlur(radius))
    noisy = np.asarray(out, np.float32) + rng.normal(0, rng.uniform(1, 5), size=(h, w, 1)).astype(
        np.float32
    )
    return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8), "RGB")


def _geometry(rng: np.random.Generator, rot: float, persp: float) -> tuple[float, np.ndarray]:
    return float(rng.uniform(-rot, rot)), rng.uniform(-1, 1, size=(4, 2)) * rng.uniform(0, persp)


def render_query(
    pack: Image.Image, distractors: Sequence[Image.Image], size: int, rng: np.random.Generator
) -> QueryShot:
    """The pack (RGBA) in a scene of ``size`` px with the given distractor packs."""
    scene = "shelf" if rng.random() < 0.55 else "table"
    canvas, floor = _shelf(rng, size) if scene == "shelf" else _table(rng, size)
    angle, persp = _geometry(rng, 12.0 if scene == "shelf" else 25.0, 0.08)
    obj = warp(pack, float(size), angle, persp)
    tb = alpha_box(obj) or (0, 0, *obj.size)
    tw, th = tb[2] - tb[0], tb[3] - tb[1]
    k = np.sqrt(rng.uniform(0.12, 0.45) * size * size / max(1, tw * th))
    k = min(k, 0.92 * size / max(tw, th))
    obj = (
        obj.convert("RGBa")
        .resize(
            (max(1, round(obj.width * k)), max(1, round(obj.height * k))), Image.Resampling.BICUBIC
        )
        .convert("RGBA")
    )
    bb = alpha_box(obj) or (0, 0, *obj.size)
    px, py = _place(rng, size, bb, floor)
    box = (px + bb[0], py + bb[1], px + bb[2], py + bb[3])
    d_boxes = [_add_distractor(canvas, d, box, floor, rng) for d in distractors]
    if rng.random() < 0.7:
        paste_shadow(canvas, obj, px, py, size * rng.uniform(0.01, 0.04), 0.45)
    paste(canvas, obj, px, py)
    area = (box[2] - box[0]) * (box[3] - box[1]) / float(size * size)
    jpeg = encode_jpeg(_camera(canvas, rng), int(rng.integers(50, 91)))
    return QueryShot(jpeg, box, d_boxes, scene, round(area, 4))


def _add_distractor(
    canvas: Image.Image, pack: Image.Image, box: Box, floor: float, rng: np.random.Generator
) -> Box:
    """Paste a neighbouring pack, preferably beside the product; return its visible box."""
    size = canvas.width
    ref = max(box[2] - box[0], box[3] - box[1])
    angle, persp = _geometry(rng, 15.0, 0.06)
    obj = warp(pack, max(8.0, ref * rng.uniform(0.6, 1.1)), angle, persp)
    bb = alpha_box(obj) or (0, 0, *obj.size)
    best: tuple[float, int, int] | None = None
    for _ in range(12):
        x = int(rng.integers(-obj.width // 3, size - 2 * obj.width // 3 + 1))
        if floor > 0:
            y = int(round(floor - bb[3] + rng.uniform(-0.03, 0.03) * size))
        else:
            y = int(rng.integers(-obj.height // 3, size - 2 * obj.height // 3 + 1))
        ix = max(0, min(x + bb[2], box[2]) - max(x + bb[0], box[0]))
        iy = max(0, min(y + bb[3], box[3]) - max(y + bb[1], box[1]))
        overlap = ix * iy
        if best is None or overlap < best[0]:
            best = (overlap, x, y)
        if overlap == 0:
            break
    assert best is not None
    _, x, y = best
    paste_shadow(canvas, obj, x, y, size * 0.02, 0.35)
    paste(canvas, obj, x, y)
    x0, y0 = max(0, x + bb[0]), max(0, y + bb[1])
    x1, y1 = min(size, x + bb[2]), min(size, y + bb[3])
    return (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))
