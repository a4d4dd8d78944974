"""The clean packshot of a SKU: its pack drawn with shading, as a tight RGBA image.

Round packs go through :mod:`.revolve`, boxes and cartons through :mod:`.boxes`.  Drawing is
done at twice the size and scaled down (anti-aliased edges and text).  The generator draws each
SKU once and reuses the image for its catalog, train and query photos.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .boxes import render_box, render_carton
from .draw import mix, shade
from .label import render_label
from .revolve import Mat, Profile, paint, paint_top, surface
from .spec import SkuSpec

SUPERSAMPLE = 2


@dataclass(slots=True)
class RoundPack:
    profile: Profile
    tilt: float = 0.12
    label_rows: tuple[float, float] = (0.0, 1.0)
    wrap: str = "cyl"
    flat: float = 0.0
    top: tuple[tuple[int, int, int], str] | None = None  # (colour, "can" | "lid" | "plain")
    extra: str = ""  # "pump", "spray", "dropper": parts drawn flat on top


def _bottle(spec: SkuSpec, style: str) -> RoundPack:
    look = spec.brand
    label = Mat(look.primary, "label", 0.3)
    cap = Mat(look.accent if style == "drink" else look.secondary, "ridged", 0.25)
    body = Mat(look.material, "plain", 0.45)
    p = Profile()
    if style == "drink":
        liquid = Mat(mix(spec.variant_color, (255, 255, 255), 0.35), "glass", 0.7)
        p.add(0.07, 0.075, 0.075, cap).add(0.085, 0.09, 0.09, cap)
        p.add(0.14, 0.07, 0.07, liquid).add(0.3, 0.07, 0.205, liquid, "ease")
        p.add(0.36, 0.205, 0.205, liquid).add(0.86, 0.205, 0.205, label)
        p.add(0.97, 0.205, 0.205, liquid).add(1.0, 0.205, 0.16, liquid, "heel")
        return RoundPack(p, 0.12, (0.36, 0.86), top=(cap.color, "plain"))
    if style == "flip":
        p.add(0.1, 0.11, 0.12, cap, "dome").add(0.13, 0.12, 0.12, cap)
        p.add(0.2, 0.13, 0.2, body, "ease").add(0.97, 0.2, 0.21, label)
        p.add(1.0, 0.21, 0.17, body, "heel")
        return RoundPack(p, 0.1, (0.2, 0.97), top=(cap.color, "plain"))
    if style == "jug":
        p.add(0.08, 0.1, 0.1, cap).add(0.25, 0.1, 0.3, body, "ease")
        p.add(0.3, 0.3, 0.3, body).add(0.9, 0.3, 0.3, label).add(1.0, 0.3, 0.26, body, "heel")
        return RoundPack(p, 0.12, (0.3, 0.9), top=(cap.color, "plain"))
    if style == "pump":
        p.add(0.05, 0.05, 0.06, cap, "dome").add(0.12, 0.022, 0.022, Mat((230, 230, 230), "plain"))
        p.add(0.18, 0.08, 0.08, cap).add(0.24, 0.12, 0.19, body, "ease")
        p.add(0.96, 0.19, 0.19, label).add(1.0, 0.19, 0.16, body, "heel")
        return RoundPack(p, 0.1, (0.24, 0.96), top=(cap.color, "plain"), extra="pump")
    if style == "spray":
        p.add(0.22, 0.07, 0.07, cap).add(0.3, 0.09, 0.09, cap)
        p.add(0.36, 0.11, 0.19, body, "ease").add(0.95, 0.19, 0.19, label)
        p.add(1.0, 0.19, 0.16, body, "heel")
        return RoundPack(p, 0.08, (0.36, 0.95), top=(cap.color, "plain"), extra="spray")
    # dropper: rubber bulb, collar, small glass body
    glass = Mat(shade(look.material, -0.2), "glass", 0.7)
    p.add(0.12, 0.02, 0.07, Mat((40, 40, 45), "plain", 0.5), "dome")
    p.add(0.16, 0.07, 0.07, Mat((40, 40, 45), "plain", 0.5))
    p.add(0.3, 0.1, 0.1, Mat(look.metal, "ridged", 0.6)).add(0.38, 0.1, 0.23, glass, "ease")
    p.add(0.45, 0.23, 0.23, glass).add(0.9, 0.23, 0.23, label).add(1.0, 0.23, 0.2, glass, "heel")
    return RoundPack(p, 0.14, (0.45, 0.9), top=((40, 40, 45), "plain"), extra="dropper")


def _can(spec: SkuSpec, style: str) -> RoundPack:
    look = spec.brand
    metal = Mat((205, 205, 210), "metal", 0.8)
    label = Mat(look.primary, "label", 0.55 if style in ("tall", "slim") else 0.3)
    r = {"tall": 0.28, "slim": 0.17, "food": 0.36, "flat": 0.95}[style]
    rim = 0.02 if style != "flat" else 0.08
    p = Profile()
    if style in ("tall", "slim"):
        p.add(0.015, 0.8 * r, 0.8 * r, metal).add(0.08, 0.8 * r, r, metal, "ease")
        p.add(0.95, r, r, label).add(1.0, r, 0.85 * r, metal, "heel")
        return RoundPack(p, 0.16, (0.08, 0.95), top=((200, 200, 205), "can"))
    p.add(rim, r, r, metal).add(rim * 1.6, 0.97 * r, 0.97 * r, metal)
    p.add(1 - rim * 1.6, r, r, label).add(1 - rim, 0.97 * r, 0.97 * r, metal)
    p.add(1.0, r, r, metal)
    top_kind = "lid" if style == "food" else "can"
    return RoundPack(
        p,
        0.2 if style == "food" else 0.35,
        (rim * 1.6, 1 - rim * 1.6),
        top=((200, 200, 205), top_kind),
    )


def _jar(spec: SkuSpec, style: str) -> RoundPack:
    look = spec.brand
    lid = Mat(look.metal, "ridged" if style in ("wide", "tall") else "plain", 0.55)
    label = Mat(look.primary, "label", 0.35)
    contents = Mat(shade(spec.variant_color, -0.35), "glass", 0.7)
    p = Profile()
    if style == "cream":
        p.add(0.06, 0.7, 0.74, lid, "dome").add(0.34, 0.74, 0.74, lid)
        p.add(0.38, 0.7, 0.7, Mat(look.material, "plain", 0.4)).add(0.96, 0.7, 0.7, label)
        p.add(1.0, 0.7, 0.66, Mat(look.material, "plain", 0.4), "heel")
        return RoundPack(p, 0.3, (0.38, 0.96), top=(shade(look.metal, 0.1), "lid"))
    if style == "cup":
        foil = Mat((215, 215, 220), "metal", 0.7)
        p.add(0.035, 0.46, 0.46, foil).add(1.0, 0.44, 0.33, label)
        return RoundPack(p, 0.28, (0.035, 1.0), top=((225, 225, 230), "lid"))
    r = 0.4 if style == "wide" else 0.28
    p.add(0.14, 1.03 * r, 1.03 * r, lid).add(0.2, 0.92 * r, r, contents, "ease")
    p.add(0.3, r, r, contents).add(0.85, r, r, label).add(1.0, r, 0.92 * r, contents, "heel")
    return RoundPack(p, 0.2, (0.3, 0.85), top=(shade(look.metal, 0.1), "lid"))


def _tube(spec: SkuSpec, style: str) -> RoundPack:
    look = spec.brand
    w = 0.2 if style == "wide" else 0.15
    body = Mat(look.primary, "label", 0.35)
    p = Profile()
    p.add(0.06, w * 1.05, w * 1.05, Mat(shade(look.primary, -0.1), "crimp", 0.2))
    p.add(0.8, w, 0.62 * w, body).add(
        0.85, 0.62 * w, 0.5 * w, Mat(look.material, "plain", 0.4), "ease"
    )
    p.add(1.0, 0.55 * w, 0.55 * w, Mat(look.accent, "plain", 0.5))
    return RoundPack(p, 0.0, (0.06, 0.8), wrap="flat", flat=0.45)


def _bag(spec: SkuSpec, style: str) -> RoundPack:
    look = spec.brand
    crimp = Mat(shade(look.primary, -0.15), "crimp", 0.4)
    body = Mat(look.primary, "label", 0.5)
    p = Profile()
    if style == "pillow":
        p.add(0.07, 0.36, 0.36, crimp).add(0.5, 0.345, 0.37, body, "ease")
        p.add(0.93, 0.37, 0.345, body, "ease").add(1.0, 0.36, 0.36, crimp)
        return RoundPack(p, 0.0, (0.07, 0.93), wrap="flat", flat=0.55)
    seal = Mat(look.metal, "crimp", 0.6)
    p.add(0.06, 0.3, 0.3, seal).add(0.95, 0.3, 0.36, body).add(1.0, 0.36, 0.33, body, "heel")
    return RoundPack(p, 0.0, (0.06, 1.0), wrap="flat", flat=0.65, extra="valve")


def _round_pack(spec: SkuSpec) -> RoundPack:
    family, style = spec.shape.split(":")
    makers = {"bottle": _bottle, "can": _can, "jar": _jar, "tube": _tube, "bag": _bag}
    if family not in makers:
        raise ValueError(f"unknown pack family {family!r} of shape {spec.shape!r}")
    return makers[family](spec, style)


def _draw_extra(img: Image.Image, pack: RoundPack, spec: SkuSpec, h: int) -> Image.Image:
    """Parts that are not round: a pump's nozzle, a trigger sprayer's head, a dropper's glint."""
    if not pack.extra:
        return img
    w = img.width
    pad = int(0.25 * h) if pack.extra in ("pump", "spray") else 0
    canvas = Image.new("RGBA", (w + pad, img.height), (0, 0, 0, 0))
    canvas.alpha_composite(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    cx = w / 2
    top = (img.height - h) / 2
    cap = spec.brand.secondary
    if pack.extra == "valve":  # aroma valve and tear notch of a coffee pouch
        r = 0.022 * h
        x, y = cx + 0.22 * h, top + 0.085 * h
        draw.ellipse(
            (x - r, y - r, x + r, y + r),
            fill=(225, 225, 225, 255),
            outline=(90, 90, 90, 255),
            width=max(1, int(r / 4)),
        )
        draw.ellipse(
            (x - r / 2.5, y - r / 2.5, x + r / 2.5, y + r / 2.5), fill=(120, 120, 120, 255)
        )
        nx = cx - 0.3 * h
        draw.polygon(
            [(nx - 1, top + 0.07 * h), (nx + 0.025 * h, top + 0.085 * h), (nx - 1, top + 0.1 * h)],
            fill=(0, 0, 0, 0),
        )
    elif pack.extra == "pump":
        y = top + 0.01 * h
        draw.rounded_rectangle(
            (cx - 0.02 * h, y, cx + 0.2 * h, y + 0.035 * h),
            radius=0.012 * h,
            fill=shade(cap, -0.05),
        )
        draw.rectangle((cx - 0.02 * h, y, cx + 0.2 * h, y + 0.01 * h), fill=shade(cap, 0.25))
    elif pack.extra == "spray":
        y0 = top
        head = [
            (cx - 0.09 * h, y0 + 0.04 * h),
            (cx + 0.02 * h, y0),
            (cx + 0.24 * h, y0 + 0.02 * h),
            (cx + 0.24 * h, y0 + 0.07 * h),
            (cx + 0.09 * h, y0 + 0.09 * h),
            (cx + 0.09 * h, y0 + 0.2 * h),
            (cx - 0.09 * h, y0 + 0.2 * h),
        ]
        draw.polygon(head, fill=cap)
        draw.polygon(
            [
                (cx - 0.09 * h, y0 + 0.04 * h),
                (cx + 0.02 * h, y0),
                (cx + 0.24 * h, y0 + 0.02 * h),
                (cx + 0.1 * h, y0 + 0.035 * h),
            ],
            fill=shade(cap, 0.3),
        )
        draw.polygon(
            [
                (cx + 0.1 * h, y0 + 0.09 * h),
                (cx + 0.16 * h, y0 + 0.1 * h),
                (cx + 0.13 * h, y0 + 0.2 * h),
                (cx + 0.09 * h, y0 + 0.19 * h),
            ],
            fill=shade(spec.brand.accent, -0.2),
        )
        draw.rectangle(
            (cx + 0.2 * h, y0 + 0.025 * h, cx + 0.25 * h, y0 + 0.065 * h), fill=shade(cap, -0.4)
        )
    return canvas


def _render_round(spec: SkuSpec, height: int) -> Image.Image:
    pack = _round_pack(spec)
    radius, mat_idx, mats = pack.profile.sample(height)
    surf = surface(radius, pack.tilt)
    r_label = float(
        np.median(
            radius[
                int(pack.label_rows[0] * height) : max(
                    int(pack.label_rows[0] * height) + 1, int(pack.label_rows[1] * height)
                )
            ]
        )
    )
    ly0, ly1 = int(pack.label_rows[0] * height), int(pack.label_rows[1] * height)
    if pack.wrap == "cyl":
        lw, content = max(8, int(np.pi * r_label)), (0.2, 0.8)
    else:
        lw, content = max(8, int(2 * r_label)), (0.06, 0.94)
    label = render_label(spec, lw, max(8, ly1 - ly0), content=content)
    rgb = paint(surf, mat_idx, mats, label, (ly0, ly1), wrap=pack.wrap, flat=pack.flat)
    if pack.top is not None:
        rgb = paint_top(surf, rgb, pack.top[0], pack.top[1])
    if pack.flat:  # bags and tubes bulge in the middle, darker towards their sealed ends
        bulge = 0.82 + 0.18 * np.sin(np.pi * surf.y / height)
        rgb = rgb * bulge[..., None]
    alpha = (surf.inside | surf.top).astype(np.uint8) * 255
    if spec.family == "bag":
        alpha = _serrate(alpha, surf.y, height, pack)
    arr = np.dstack([np.clip(rgb, 0, 255).astype(np.uint8), alpha])
    return _draw_extra(Image.fromarray(arr, "RGBA"), pack, spec, height)


def _serrate(alpha: np.ndarray, y: np.ndarray, height: int, pack: RoundPack) -> np.ndarray:
    """Zig-zag the sealed ends of a bag."""
    cols = np.arange(alpha.shape[1], dtype=np.float32)
    tooth = max(2.0, 0.012 * height)
    depth = np.abs((cols / tooth) % 2 - 1) * tooth  # (W,)
    cut = (y < depth[None, :]) & (pack.profile.segments[0][4].kind == "crimp")
    if pack.profile.segments[-1][4].kind == "crimp":
        cut |= y > height - 1 - depth[None, :]
    return np.where(cut, 0, alpha).astype(np.uint8)


def _tight(img: Image.Image) -> Image.Image:
    bbox = img.getchannel("A").getbbox()
    return img.crop(bbox) if bbox else img


def render_packshot(spec: SkuSpec, side: int) -> Image.Image:
    """The pack of ``spec`` as RGBA, cropped to the pack, its longer side ``side`` px."""
    if side < 8:
        raise ValueError(f"packshot side must be >= 8, got {side}")
    big = side * SUPERSAMPLE
    if spec.family in ("box", "carton"):
        img = render_box(spec, big) if spec.family == "box" else render_carton(spec, big)
    else:
        img = _render_round(spec, big)
        img = _tight(img)
        if max(img.size) > big * 1.02 or max(img.size) < big * 0.9:  # wide packs: redraw to fit
            img = _tight(_render_round(spec, int(big * big / max(img.size))))
    img = _tight(img)
    scale = side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.convert("RGBa").resize(size, Image.Resampling.LANCZOS).convert("RGBA")
