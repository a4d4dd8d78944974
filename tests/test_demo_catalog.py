"""The demo catalog generator: determinism, manifests, boxes, long tail, titles, CLI."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.catalog import generate_demo_catalog
from demo.catalog.cli import main
from demo.catalog.packshot import render_packshot
from demo.catalog.plan import TailLaw, make_plan
from demo.catalog.scene import render_query
from demo.catalog.spec import plan_skus, rng_for
from demo.catalog.titles import has_promo
from demo.catalog.vocab import CATEGORIES
from service.catalog import read_jsonl

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(skus=12, seed=0, max_per_sku=20, queries_per_sku=2)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _stats_without_time(root: Path) -> dict:
    stats = json.loads((root / "stats.json").read_text())
    stats.pop("seconds")
    return stats


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo-small")
    generate_demo_catalog(out, **SMALL)
    return out


def test_same_seed_gives_identical_files_whatever_jobs(small: Path, tmp_path: Path) -> None:
    generate_demo_catalog(tmp_path, **SMALL, jobs=2)
    a, b = _files(small), _files(tmp_path)
    assert a.keys() == b.keys()
    different = [k for k in a if a[k] != b[k] and k != "stats.json"]
    assert different == []
    assert _stats_without_time(small) == _stats_without_time(tmp_path)


def test_other_seed_gives_other_images(small: Path, tmp_path: Path) -> None:
    generate_demo_catalog(tmp_path, **{**SMALL, "seed": 1}, splits=["catalog"])
    same = [
        p.name
        for p in (tmp_path / "catalog").glob("*.jpg")
        if p.read_bytes() == (small / "catalog" / p.name).read_bytes()
    ]
    assert same == []


def test_fewer_skus_keep_the_same_skus_and_pixels(small: Path, tmp_path: Path) -> None:
    generate_demo_catalog(tmp_path, **{**SMALL, "skus": 5}, splits=["catalog", "train"])
    for p in (tmp_path / "catalog").glob("*.jpg"):
        assert p.read_bytes() == (small / "catalog" / p.name).read_bytes(), p.name
    first_views = sorted((tmp_path / "train").glob("*_000.jpg"))
    assert len(first_views) == 5
    for p in first_views:
        assert p.read_bytes() == (small / "train" / p.name).read_bytes(), p.name
    sub = [json.loads(x) for x in (tmp_path / "skus.jsonl").read_text().splitlines()]
    full = [json.loads(x) for x in (small / "skus.jsonl").read_text().splitlines()][:5]
    keys = ("sku_id", "brand", "product", "variant", "shape", "title")
    assert [{k: r[k] for k in keys} for r in sub] == [{k: r[k] for k in keys} for r in full]


@pytest.mark.parametrize("split", ["catalog", "train", "queries"])
def test_manifests_load_and_images_open(small: Path, split: str) -> None:
    items = read_jsonl(small / split / "manifest.jsonl", require=("title", "category")).items
    stats = json.loads((small / "stats.json").read_text())
    assert len(items) == stats["images"][split] > 0
    size = 224 if split == "queries" else 128
    catalog_ids = {json.loads(x)["sku_id"] for x in (small / "skus.jsonl").read_text().splitlines()}
    for it in items:
        with Image.open(it.image) as im:
            assert im.format == "JPEG" and im.size == (size, size)
        assert it.sku_id in catalog_ids and it.tags and it.category in CATEGORIES
    if split == "catalog":
        assert [it.sku_id for it in items] == sorted(catalog_ids)


def test_query_labels_are_consistent(small: Path) -> None:
    items = read_jsonl(small / "queries" / "manifest.jsonl").items
    assert len(items) == 2 * SMALL["skus"]
    for it in items:
        x0, y0, x1, y1 = it.box
        assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
        frac = (x1 - x0) * (y1 - y0) / 224**2
        assert 0.05 <= frac <= 0.85 and frac == pytest.approx(it.extra["area_frac"], abs=1e-3)
        ex = it.extra
        assert ex["n_distractors"] == len(ex["distractor_skus"]) == len(ex["distractor_boxes"])
        assert it.sku_id not in ex["distractor_skus"]
        for bx0, by0, bx1, by1 in ex["distractor_boxes"]:
            assert 0 <= bx0 < bx1 <= 224 and 0 <= by0 < by1 <= 224
    assert any(it.extra["n_distractors"] for it in items)


def test_query_box_is_the_pasted_product() -> None:
    """A pure magenta 'pack' in a scene: the magenta pixels are in the box and fill it."""
    pack = Image.new("RGBA", (60, 150), (255, 0, 255, 255))
    for k in range(6):
        shot = render_query(pack, [], 224, rng_for(7, 99, k))
        with Image.open(io.BytesIO(shot.jpeg)) as im:
            arr = np.asarray(im.convert("RGB"), np.int32)
        r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
        magenta = (r - g > 60) & (b - g > 60) & (np.abs(r - b) < 70)
        x0, y0, x1, y1 = shot.box
        inside = magenta[y0:y1, x0:x1].sum()
        assert inside / max(1, magenta.sum()) > 0.9
        assert inside / ((x1 - x0) * (y1 - y0)) > 0.35  # rotated: the box is larger than the pack


def test_train_counts_are_long_tailed() -> None:
    plan = make_plan(plan_skus(200, 0), 0, TailLaw(), queries_per_sku=0)
    c = plan.counts
    assert c.max() >= 5 * np.median(c)
    assert 5 <= (c >= 20).sum() <= 60  # a head ...
    assert (c <= 5).sum() >= 80  # ... and a long tail of few-shot SKUs
    assert c.min() >= 1 and c.max() <= 100


def test_titles_are_noisy_but_catalog_titles_clean(small: Path) -> None:
    train = read_jsonl(small / "train" / "manifest.jsonl").items
    catalog = {it.sku_id: it.title for it in read_jsonl(small / "catalog" / "manifest.jsonl")}
    assert sum(has_promo(it.title) for it in train) > len(train) // 4
    assert not any(has_promo(t) for t in catalog.values())
    assert sum(it.title != catalog[it.sku_id] for it in train) > len(train) // 2
    assert all(isinstance(it.extra["title_has_other_sku_words"], bool) for it in train)


SHAPES = sorted({line[1] for lines in CATEGORIES.values() for line in lines})


@pytest.mark.parametrize("shape", SHAPES)
def test_every_pack_shape_draws(shape: str) -> None:
    spec = dataclasses.replace(plan_skus(1, 0)[0], shape=shape)
    img = render_packshot(spec, 96)
    assert img.mode == "RGBA" and max(img.size) == 96
    alpha = np.asarray(img.getchannel("A")) > 128
    assert 0.3 < alpha.mean() < 0.99  # a solid pack that fills its box, not a rectangle


def test_cli_writes_catalog_and_sheet(tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    argv = [
        "--out",
        str(tmp_path / "cat"),
        "--skus",
        "3",
        "--max-per-sku",
        "3",
        "--queries-per-sku",
        "1",
        "--quiet",
        "--contact-sheet",
        str(sheet),
    ]
    assert main(argv) == 0
    assert len((tmp_path / "cat" / "skus.jsonl").read_text().splitlines()) == 3
    with Image.open(sheet) as im:
        assert im.format == "PNG" and im.width > 500


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--skus", "2", "--splits", "bogus", "--quiet"]) == 2


def test_help_explains_itself_without_torch() -> None:
    code = (
        "import sys, demo.catalog.cli as c; "
        "assert 'torch' not in sys.modules; c.main(['--help'])"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "--skus" in res.stdout and "queries/" in res.stdout
