"""Boxes and gable-top cartons: a front face with the artwork, a darker side, a lit top."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .draw import fit_text, ink_on, shade
from .label import render_label, render_side
from .spec import SkuSpec

# style -> (front width / front height, depth / front height)
BOX_STYLES = {"tall": (0.7, 0.24), "wide": (1.35, 0.3), "flat": (1.7, 0.45), "tea": (1.05, 0.4)}
SIDE_DX, SIDE_DY = 0.55, 0.38  # oblique projection of the depth axis


def _front_light(arr: np.ndarray) -> np.ndarray:
    """Light from the upper left: a soft gradient and a faint diagonal sheen."""
    h, w = arr.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = 1.04 - 0.1 * (xx / max(w, 1)) - 0.06 * (yy / max(h, 1))
    sheen = 0.12 * np.exp(-(((((xx / max(w, 1)) + (yy / max(h, 1))) - 0.55) / 0.12) ** 2))
    return arr * g[..., None] + 255 * sheen[..., None] * (1 - arr / 320)


def _paste_side(
    rgb: np.ndarray, alpha: np.ndarray, side: np.ndarray, x0: int, y0: int, rise: float
) -> None:
    """Shear the side panel up by ``rise`` px over its width and paste it at (x0, y0)."""
    h, dx = side.shape[:2]
    for u in range(dx):
        off = y0 - int(round(u * rise / max(dx, 1)))
        rgb[off : off + h, x0 + u] = side[:, u] * 0.68
        alpha[off : off + h, x0 + u] = 255


def _canvas(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((height, width, 3), np.float32), np.zeros((height, width), np.uint8)


def _to_rgba(rgb: np.ndarray, alpha: np.ndarray) -> Image.Image:
    return Image.fromarray(np.dstack([np.clip(rgb, 0, 255).astype(np.uint8), alpha]), "RGBA")


def render_box(spec: SkuSpec, big: int) -> Image.Image:
    style = spec.shape.split(":")[1]
    aspect, depth = BOX_STYLES.get(style, BOX_STYLES["wide"])
    # fit front + projected depth into big x big
    w_units, h_units = aspect + depth * SIDE_DX, 1.0 + depth * SIDE_DY
    hf = int(big / max(w_units, h_units))
    wf, dx, dy = (
        int(aspect * hf),
        max(2, int(depth * SIDE_DX * hf)),
        max(2, int(depth * SIDE_DY * hf)),
    )
    rgb, alpha = _canvas(wf + dx + 1, hf + dy + 1)
    front = render_label(spec, wf, hf, content=(0.04, 0.96))
    rgb[dy : dy + hf, :wf] = _front_light(front)
    alpha[dy : dy + hf, :wf] = 255
    _paste_side(rgb, alpha, render_side(spec, dx, hf), wf, dy, dy)
    img = _to_rgba(rgb, alpha)
    draw = ImageDraw.Draw(img)
    top = shade(spec.brand.primary, 0.3)
    draw.polygon([(0, dy), (wf, dy), (wf + dx, 0), (dx, 0)], fill=(*top, 255))
    draw.line(
        [(dx * 0.5, dy * 0.5), (wf + dx * 0.5, dy * 0.5)],
        fill=(*shade(top, -0.15), 255),
        width=max(1, hf // 150),
    )
    edge = (*shade(spec.brand.primary, 0.5), 255)
    draw.line([(0, dy), (wf, dy), (wf, dy + hf)], fill=edge, width=max(1, hf // 120))
    return img


def render_carton(spec: SkuSpec, big: int) -> Image.Image:
    """A gable-top carton (milk, juice): front, side, the two roof slopes and the sealed fin."""
    look = spec.brand
    aspect, depth = 0.5, 0.5  # front width / body height, depth / body height
    g, fin = 0.16, 0.045  # roof rise and fin height, / body height
    w_units = aspect + depth * SIDE_DX
    h_units = 1.0 + depth * SIDE_DY / 2 + g + fin
    hb = int(big / max(w_units, h_units))
    wf, dx, dy = int(aspect * hb), int(depth * SIDE_DX * hb), int(depth * SIDE_DY * hb)
    gh, fh = int(g * hb), max(2, int(fin * hb))
    top = gh + dy // 2 + fh + 1  # y of the front's top edge
    rgb, alpha = _canvas(wf + dx + 1, top + hb + 1)
    rgb[top : top + hb, :wf] = _front_light(render_label(spec, wf, hb, content=(0.04, 0.96)))
    alpha[top : top + hb, :wf] = 255
    _paste_side(rgb, alpha, render_side(spec, dx, hb), wf, top, dy)
    img = _to_rgba(rgb, alpha)
    draw = ImageDraw.Draw(img)
    ridge = top - dy / 2 - gh
    roof = shade(look.primary, 0.25)
    side = shade(look.primary, -0.35)
    draw.polygon([(wf, top), (wf + dx, top - dy), (wf + dx / 2, ridge)], fill=(*side, 255))
    draw.polygon([(0, top), (wf, top), (wf + dx / 2, ridge), (dx / 2, ridge)], fill=(*roof, 255))
    draw.line([(0, top), (wf, top)], fill=(*shade(look.primary, 0.5), 255), width=max(1, hb // 100))
    fin_rgb = shade(look.material, 0.1) if look.material != look.primary else (235, 235, 230)
    draw.polygon(
        [(dx / 2, ridge), (wf + dx / 2, ridge), (wf + dx / 2, ridge - fh), (dx / 2, ridge - fh)],
        fill=(*fin_rgb, 255),
    )
    draw.line(
        [(dx / 2, ridge - fh * 0.4), (wf + dx / 2, ridge - fh * 0.4)],
        fill=(*shade(fin_rgb, -0.3), 255),
        width=max(1, hb // 200),
    )
    # the brand name on the front roof slope, as on real cartons
    fit_text(
        draw,
        look.name,
        (
            dx * 0.3 + wf * 0.15,
            ridge + (top - ridge) * 0.3,
            dx * 0.3 + wf * 0.85,
            top - (top - ridge) * 0.15,
        ),
        ink_on(roof, look.primary),
        max_size=0.5 * (top - ridge),
        bold=True,
    )
    return img
