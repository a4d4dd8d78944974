"""A PNG overview of a generated catalog: catalog packshots, training views, query photos with
their true box (green) and the distractors' boxes (orange)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw

from service.catalog import CatalogItem, read_jsonl

from .draw import font

TRUE_BOX = (20, 200, 60)
DISTRACTOR_BOX = (255, 150, 0)


def _tile(item: CatalogItem, tile: int, with_boxes: bool) -> Image.Image:
    with Image.open(item.image) as im:
        img = im.convert("RGB")
    scale = tile / max(img.size)
    img = img.resize(
        (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
        Image.Resampling.LANCZOS,
    )
    if with_boxes:
        draw = ImageDraw.Draw(img)
        for b in item.extra.get("distractor_boxes", []):
            draw.rectangle([v * scale for v in b], outline=DISTRACTOR_BOX, width=1)
        if item.box is not None:
            x0, y0, x1, y1 = (v * scale for v in item.box)
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=TRUE_BOX, width=2)
    return img


def _sample_train(items: list[CatalogItem], n: int) -> list[CatalogItem]:
    """Views of many SKUs, plus several of the most popular SKU (to show the augmentation)."""
    firsts: dict[str, CatalogItem] = {}
    counts: dict[str, int] = {}
    for it in items:
        firsts.setdefault(it.sku_id, it)
        counts[it.sku_id] = counts.get(it.sku_id, 0) + 1
    top = max(counts, key=lambda k: counts[k]) if counts else None
    many = [it for it in items if it.sku_id == top][: n // 3]
    rest = [it for sid, it in firsts.items() if sid != top]
    return (many + rest)[:n]


def make_contact_sheet(
    out_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    columns: int = 12,
    rows_per_split: int = 2,
    tile: int = 128,
) -> Path:
    """Write the overview PNG of the catalog in ``out_dir`` to ``path``; return ``path``."""
    out = Path(out_dir)
    n = columns * rows_per_split
    sections: list[tuple[str, list[CatalogItem], bool]] = []
    for split, title, boxes in (
        ("catalog", "catalog: one clean packshot per SKU", False),
        (
            "train",
            "train: augmented seller photos (long-tailed; first views = most popular SKU)",
            False,
        ),
        ("queries", "queries: real-shot photos, true box green, distractors orange", True),
    ):
        manifest = out / split / "manifest.jsonl"
        if manifest.is_file():
            items = list(read_jsonl(manifest))
            items = _sample_train(items, n) if split == "train" else items[:n]
            sections.append((title, items, boxes))
    if not sections:
        raise FileNotFoundError(f"no catalog/, train/ or queries/ manifest under {out}")
    pad, head = 4, 22
    width = columns * (tile + pad) + pad
    height = sum(head + rows_per_split * (tile + pad) for _ in sections) + pad
    sheet = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for title, items, boxes in sections:
        draw.text((pad, y + 3), title, fill=(20, 20, 20), font=font(15))
        y += head
        for k, item in enumerate(items):
            img = _tile(item, tile, boxes)
            x = pad + (k % columns) * (tile + pad)
            yy = y + (k // columns) * (tile + pad)
            sheet.paste(img, (x + (tile - img.width) // 2, yy + (tile - img.height) // 2))
        y += rows_per_split * (tile + pad)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, "PNG", optimize=True)
    return path
