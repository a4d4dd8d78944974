"""Round packs (bottles, cans, jars, tubes, bags) drawn as solids of revolution.

A pack is a radius profile ``r(y)`` down its height with a material per row.  Each pixel is
mapped back to its place on the surface (height ``y`` and angle ``theta``, seen slightly from
above with ``tilt``), which gives the 3-D look in one vectorised pass: the label wraps round the
body, the shading follows the curvature, rims and the top face are ellipses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .vocab import RGB

LIGHT = -0.45  # angle of the key light (radians, negative = from the left)


@dataclass(frozen=True, slots=True)
class Mat:
    """A material: ``plain`` colour, ``label`` (the artwork), ``ridged`` caps, ``metal``,
    ``crimp`` (sealed bag ends) or ``glass`` (see-through with the contents' colour)."""

    color: RGB
    kind: str = "plain"
    gloss: float = 0.35


@dataclass(slots=True)
class Profile:
    """Segments ``(y0, y1, r0, r1, mat, curve)`` in units of the pack height."""

    segments: list[tuple[float, float, float, float, Mat, str]] = field(default_factory=list)

    def add(self, y1: float, r0: float, r1: float, mat: Mat, curve: str = "lin") -> Profile:
        y0 = self.segments[-1][1] if self.segments else 0.0
        self.segments.append((y0, y1, r0, r1, mat, curve))
        return self

    def sample(self, h: int) -> tuple[np.ndarray, np.ndarray, list[Mat]]:
        """Radius (px) and material index of each of ``h`` rows."""
        y = (np.arange(h, dtype=np.float32) + 0.5) / h
        radius = np.zeros(h, np.float32)
        mat_idx = np.zeros(h, np.int32)
        mats: list[Mat] = []
        for y0, y1, r0, r1, mat, curve in self.segments:
            sel = (y >= y0) & (y < y1)
            t = (y[sel] - y0) / max(y1 - y0, 1e-6)
            if curve == "ease":
                t = 0.5 - 0.5 * np.cos(np.pi * t)
            elif curve == "dome":  # rounded top: grows fast, then flat
                t = np.sqrt(np.clip(t, 0, 1))
            elif curve == "heel":  # rounded bottom: flat, then falls fast
                t = 1 - np.sqrt(np.clip(1 - t, 0, 1))
            radius[sel] = (r0 + (r1 - r0) * t) * h
            if mat not in mats:
                mats.append(mat)
            mat_idx[sel] = mats.index(mat)
        return radius, mat_idx, mats


@dataclass(slots=True)
class Surface:
    """Per-pixel surface coordinates of a rendered profile."""

    inside: np.ndarray  # body pixels
    top: np.ndarray  # top-face pixels
    y: np.ndarray  # row on the profile
    theta: np.ndarray  # angle round the axis, 0 = facing the camera
    radius: np.ndarray
    dx: np.ndarray  # x offset from the axis, px
    ytop: np.ndarray  # y offset from the top face centre, px
    r_top: float
    tilt: float


def surface(radius: np.ndarray, tilt: float, pad: int = 2) -> Surface:
    h = radius.shape[0]
    rmax = float(radius.max())
    top_m = int(np.ceil(tilt * rmax)) + pad
    width = int(np.ceil(2 * rmax)) + 2 * pad
    height = h + 2 * top_m
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    dx = xx + 0.5 - width / 2
    yimg = yy - top_m
    yw = yimg.copy()
    for _ in range(4):  # fixed point: y_image = y_surface + tilt * r * cos(theta)
        r = radius[np.clip(yw, 0, h - 1).astype(np.int32)]
        c = np.sqrt(np.clip(1 - (dx / np.maximum(r, 1e-3)) ** 2, 0, 1))
        yw = yimg - tilt * r * c
    r = radius[np.clip(yw, 0, h - 1).astype(np.int32)]
    xn = dx / np.maximum(r, 1e-3)
    inside = (np.abs(xn) <= 1) & (yw >= 0) & (yw < h) & (r > 0.5)
    r0 = max(float(radius[0]), 1e-3)
    e = (dx / r0) ** 2 + (yimg / max(tilt * r0, 1e-3)) ** 2
    top = (e <= 1) & ~inside if tilt > 0 else np.zeros_like(inside)
    theta = np.arcsin(np.clip(xn, -1, 1))
    return Surface(inside, top, np.clip(yw, 0, h - 1), theta, r, dx, yimg, r0, tilt)


def lighting(theta: np.ndarray, gloss: float | np.ndarray, flat: float = 0.0) -> tuple:
    """(diffuse factor, specular add in 0..1); ``flat`` in [0, 1] softens the curvature."""
    th = theta * (1 - flat)
    diffuse = 0.42 + 0.58 * np.clip(np.cos(th - LIGHT), 0, 1) ** 1.4
    spec = np.exp(-(((th - (LIGHT - 0.15)) / 0.16) ** 2)) + 0.35 * np.exp(
        -(((th - 0.95) / 0.1) ** 2)
    )
    return diffuse, spec * gloss


def paint(
    surf: Surface,
    mat_idx_rows: np.ndarray,
    mats: list[Mat],
    label: np.ndarray | None,
    label_rows: tuple[int, int],
    *,
    wrap: str = "cyl",
    flat: float = 0.0,
) -> np.ndarray:
    """(H, W, 3) float32 colours of the body pixels (zero elsewhere)."""
    hh, ww = surf.inside.shape
    rgb = np.zeros((hh, ww, 3), np.float32)
    yi = surf.y.astype(np.int32)
    mat_px = mat_idx_rows[yi]
    gloss = np.zeros((hh, ww), np.float32)
    for k, mat in enumerate(mats):
        sel = surf.inside & (mat_px == k)
        if not sel.any():
            continue
        gloss[sel] = mat.gloss
        base = np.asarray(mat.color, np.float32)
        th = surf.theta[sel]
        if mat.kind == "label" and label is not None:
            lh, lw = label.shape[:2]
            if wrap == "cyl":
                u = (th / np.pi + 0.5) * (lw - 1)
            else:
                u = (np.sin(th) * 0.5 + 0.5) * (lw - 1)
            v = (surf.y[sel] - label_rows[0]) / max(label_rows[1] - label_rows[0], 1) * (lh - 1)
            rgb[sel] = label[
                np.clip(v, 0, lh - 1).astype(np.int32), np.clip(u, 0, lw - 1).astype(np.int32)
            ]
        elif mat.kind == "ridged":
            ridge = 0.82 + 0.18 * (np.cos(th * 40) > 0)
            rgb[sel] = base * ridge[:, None]
        elif mat.kind == "crimp":
            ridge = 0.8 + 0.2 * (np.cos(th * 60) > 0)
            rgb[sel] = base * ridge[:, None]
        elif mat.kind == "metal":
            band = 0.8 + 0.35 * np.cos(th * 3.0 + 0.5) ** 2
            rgb[sel] = base * band[:, None]
        elif mat.kind == "glass":
            edge = np.abs(np.sin(th)) ** 3
            rgb[sel] = base * (1 - 0.45 * edge[:, None]) + 40 * edge[:, None]
        else:
            rgb[sel] = base
    diffuse, spec = lighting(surf.theta, gloss, flat)
    rgb = rgb * diffuse[..., None] + 255 * spec[..., None] * (1 - rgb / 320)
    return np.where(surf.inside[..., None], rgb, 0)


def paint_top(surf: Surface, rgb: np.ndarray, color: RGB, kind: str) -> np.ndarray:
    """Colour the top face: a lit ellipse; cans get the inner rim and the tab."""
    if not surf.top.any():
        return rgb
    r0 = max(surf.r_top, 1.0)
    ry = max(surf.tilt * r0, 1.0)
    ys = surf.ytop
    rr = np.sqrt((surf.dx / r0) ** 2 + (ys / ry) ** 2)
    base = np.asarray(color, np.float32)
    top_rgb = (
        np.broadcast_to(base, rgb.shape)
        * (1.1 - 0.2 * np.clip(surf.dx / r0 + 0.5, 0, 1))[..., None]
    )
    if kind in ("can", "lid"):
        ring = np.abs(rr - 0.86) < 0.045
        top_rgb[ring] *= 0.7
        if kind == "can":
            tab = ((surf.dx / r0 - 0.05) / 0.16) ** 2 + ((ys / ry + 0.25) / 0.32) ** 2 <= 1
            top_rgb[tab] *= 0.82
    return np.where(surf.top[..., None], np.clip(top_rgb, 0, 255), rgb)
