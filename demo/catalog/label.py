"""The flat artwork of a pack's front: brand colours, pattern, logo, brand and product text.

:func:`render_label` draws it as a flat rectangle; :mod:`.packshot` wraps it round a can or a
bottle, or pastes it onto the front of a box.  Everything comes from the :class:`SkuSpec`, so
the same SKU always gets the same artwork, and SKUs of one brand share all but the variant.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .draw import draw_logo, fit_text, ink_on, shade, to_image, vgradient
from .spec import SkuSpec
from .vocab import RGB


def _pattern_mask(kind: str, h: int, w: int) -> tuple[np.ndarray, float]:
    """(h, w) mask in [0, 1] of the brand pattern and its opacity; scales with the label height."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, 1)
    if kind == "stripes":
        return ((xx + yy) / 0.14 % 1.0 < 0.45).astype(np.float32), 0.35
    if kind == "dots":
        p = 0.09
        d2 = (xx % p - p / 2) ** 2 + ((yy + (xx // p % 2) * p / 2) % p - p / 2) ** 2
        return (d2 < (p * 0.28) ** 2).astype(np.float32), 0.45
    if kind == "waves":
        return (((yy + 0.03 * np.sin(xx * 18.0)) / 0.12) % 1.0 < 0.35).astype(np.float32), 0.3
    if kind == "chevrons":
        return (((np.abs(xx % 0.2 - 0.1) + yy) / 0.1) % 1.0 < 0.4).astype(np.float32), 0.3
    if kind == "rays":
        ang = np.arctan2(yy - 0.4, xx - w / max(h, 1) / 2)
        return ((ang * 16 / (2 * np.pi)) % 1.0 < 0.5).astype(np.float32), 0.22
    if kind == "checks":
        return (((xx // 0.1) + (yy // 0.1)) % 2).astype(np.float32), 0.18
    if kind == "arcs":
        r = np.sqrt(xx**2 + (yy - 1.0) ** 2)
        return ((r / 0.12) % 1.0 < 0.4).astype(np.float32), 0.3
    if kind == "band":
        return ((yy > 0.08) & (yy < 0.16)).astype(np.float32), 0.9
    return np.zeros((h, w), np.float32), 0.0


def _background(spec: SkuSpec, h: int, w: int) -> np.ndarray:
    look = spec.brand
    arr = vgradient(h, w, shade(look.primary, 0.18), shade(look.primary, -0.18))
    mask, alpha = _pattern_mask(look.pattern, h, w)
    if alpha:
        sec = np.asarray(look.secondary, np.float32)
        m = (mask * alpha)[..., None]
        arr = arr * (1 - m) + sec * m
    return arr


def _variant_swatch(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, c: RGB) -> None:
    """A round 'flavour' picture: the variant colour with a highlight, like fruit on a pack."""
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=shade(c, -0.25))
    draw.ellipse((cx - 0.9 * r, cy - 0.95 * r, cx + 0.85 * r, cy + 0.8 * r), fill=c)
    hr = 0.3 * r
    draw.ellipse(
        (cx - 0.5 * r - hr, cy - 0.45 * r - hr, cx - 0.5 * r + hr, cy - 0.45 * r + hr),
        fill=shade(c, 0.6),
    )
    draw.polygon(
        [(cx, cy - r), (cx + 0.45 * r, cy - 1.35 * r), (cx + 0.2 * r, cy - 0.9 * r)],
        fill=(60, 140, 50),
    )


def render_label(
    spec: SkuSpec, w: int, h: int, *, content: tuple[float, float] = (0.0, 1.0)
) -> np.ndarray:
    """(h, w, 3) float32 artwork; the text stays inside the ``content`` span of the width."""
    if w < 4 or h < 4:
        raise ValueError(f"label too small: {w}x{h}")
    look = spec.brand
    img = to_image(_background(spec, h, w))
    draw = ImageDraw.Draw(img)
    cx0, cx1 = content[0] * w, content[1] * w
    cw = cx1 - cx0
    mid = (cx0 + cx1) / 2
    ink = ink_on(look.primary, look.secondary, look.accent)
    brand = look.name.upper() if look.upper else look.name
    product = spec.product.upper() if look.upper else spec.product
    vcol = spec.variant_color
    vink = ink_on(vcol)
    u = min(h, 1.6 * cw)  # type scale: tall labels are limited by their width
    # layout: rows as fractions of the height (brand row, product row, band row)
    if look.layout == "logo_top":
        logo_y, brand_y, prod_y, band_y = 0.15, 0.33, 0.47, 0.66
    elif look.layout == "text_top":
        logo_y, brand_y, prod_y, band_y = 0.52, 0.15, 0.30, 0.68
    else:  # badge: the brand name sits in a white oval
        logo_y, brand_y, prod_y, band_y = 0.12, 0.32, 0.50, 0.70
        bw, bh = 0.46 * cw, 0.1 * h
        draw.ellipse(
            (mid - bw, brand_y * h - bh, mid + bw, brand_y * h + bh),
            fill=(252, 252, 250),
            outline=look.secondary,
            width=max(1, int(h / 80)),
        )
    brand_ink = (30, 30, 35) if look.layout == "badge" else ink
    if look.layout == "badge" and look.primary != (245, 245, 240):
        brand_ink = look.primary
    # variant band across the whole label (so it wraps round a can)
    bh = 0.16 * h
    draw.rectangle((0, band_y * h - bh / 2, w, band_y * h + bh / 2), fill=vcol)
    draw.line(
        (0, band_y * h - bh / 2, w, band_y * h - bh / 2),
        fill=look.secondary,
        width=max(1, int(h / 60)),
    )
    fit_text(
        draw,
        spec.variant.upper(),
        (cx0 + 0.06 * cw, band_y * h - bh / 2, cx1 - 0.3 * cw, band_y * h + bh / 2),
        vink,
        max_size=0.09 * u,
        bold=True,
    )
    _variant_swatch(draw, cx1 - 0.16 * cw, band_y * h, min(0.1 * h, 0.13 * cw), vcol)
    # logo, brand, product, size
    draw_logo(
        draw,
        look.logo,
        mid,
        logo_y * h,
        min(0.07 * h, 0.14 * cw),
        look.accent,
        ink_on(look.accent),
        brand[0],
    )
    fit_text(
        draw,
        brand,
        (cx0 + 0.05 * cw, (brand_y - 0.1) * h, cx1 - 0.05 * cw, (brand_y + 0.1) * h),
        brand_ink,
        max_size=0.2 * u,
        bold=True,
    )
    fit_text(
        draw,
        product,
        (cx0 + 0.08 * cw, (prod_y - 0.045) * h, cx1 - 0.08 * cw, (prod_y + 0.045) * h),
        ink,
        max_size=0.075 * u,
    )
    fit_text(
        draw,
        spec.size,
        (mid - 0.3 * cw, 0.85 * h, mid + 0.3 * cw, 0.95 * h),
        ink,
        max_size=0.06 * u,
    )
    return np.asarray(img, np.float32)


def render_side(spec: SkuSpec, w: int, h: int) -> np.ndarray:
    """The narrow side panel of a box: brand colour, pattern, the brand name running upwards."""
    look = spec.brand
    arr = _background(spec, h, w)
    img = Image.new("RGB", (h, w), look.primary)  # drawn sideways, then rotated
    draw = ImageDraw.Draw(img)
    fit_text(
        draw,
        look.name,
        (0.08 * h, 0.1 * w, 0.92 * h, 0.9 * w),
        ink_on(look.primary),
        max_size=0.7 * w,
        bold=True,
    )
    text = np.asarray(img.rotate(90, expand=True), np.float32)
    band = int(0.16 * h)
    y = int(0.66 * h)
    arr[max(0, y - band // 2) : y + band // 2] = np.asarray(spec.variant_color, np.float32)
    mask = (np.abs(text - np.asarray(look.primary, np.float32)).sum(-1) > 30)[..., None]
    return np.where(mask, text, arr)
