"""Catalog readers: JSONL manifests and Google Product Search CSV load into one record type;
every kind of bad row names its file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from service.catalog import (
    CatalogError,
    CatalogItem,
    read_catalog,
    read_google_csv,
    read_jsonl,
    write_jsonl,
)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for name, size in (("a.jpg", (40, 30)), ("b.png", (50, 50))):
        Image.new("RGB", size, (200, 10, 10)).save(tmp_path / "img" / name)
    return tmp_path


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD_JSON = {
    "image": "img/a.jpg",
    "sku_id": "S1",
    "title": "Acme cola 330ml",
    "tags": ["acme", "cola"],
    "category": "drinks",
    "box": [1, 2, 30, 25],
}


def test_jsonl_good_rows_resolve_relative_paths_and_keep_extras(images: Path) -> None:
    rows = [dict(GOOD_JSON, vendor="google"), {"image": "img/b.png", "sku_id": 7}]
    path = _write_lines(images / "manifest.jsonl", [json.dumps(r) for r in rows] + [""])
    result = read_jsonl(path)
    assert result.errors == []
    first, second = result.items
    assert first.image == str(images / "img" / "a.jpg")
    assert first.sku_id == "S1" and first.tags == ("acme", "cola")
    assert first.box == (1.0, 2.0, 30.0, 25.0)
    assert first.extra == {"vendor": "google"}
    assert first.source.endswith("manifest.jsonl:1")
    assert second.sku_id == "7" and second.title == "" and second.box is None


BAD_JSON_ROWS = [
    ("not json", "<json>", "invalid JSON"),
    ('["a list"]', "<json>", "JSON object"),
    (json.dumps({k: v for k, v in GOOD_JSON.items() if k != "sku_id"}), "sku_id", "missing"),
    (json.dumps({k: v for k, v in GOOD_JSON.items() if k != "image"}), "image", "non-empty"),
    (json.dumps(dict(GOOD_JSON, image="img/missing.jpg")), "image", "not found"),
    (json.dumps(dict(GOOD_JSON, sku_id="")), "sku_id", "empty"),
    (json.dumps(dict(GOOD_JSON, box=[5, 5, 1, 1])), "box", "x0 < x1"),
    (json.dumps(dict(GOOD_JSON, box=[0, 0, 1])), "box", "4 numbers"),
    (json.dumps(dict(GOOD_JSON, box=[-1, 0, 4, 4])), "box", "negative"),
    (json.dumps(dict(GOOD_JSON, box=[0, "a", 4, 4])), "box", "numbers"),
    (json.dumps(dict(GOOD_JSON, tags="x,y") | {"tags": 3}), "tags", "list of strings"),
    (json.dumps(dict(GOOD_JSON, title=["x"])), "title", "string"),
]


@pytest.mark.parametrize(("line", "field", "reason"), BAD_JSON_ROWS)
def test_jsonl_bad_row_names_file_line_and_field(
    images: Path, line: str, field: str, reason: str
) -> None:
    path = _write_lines(images / "m.jsonl", [json.dumps(GOOD_JSON), line])
    with pytest.raises(CatalogError) as info:
        read_jsonl(path)
    err = info.value.error
    assert (err.file, err.line, err.field) == (str(path), 2, field)
    assert reason in err.message
    assert f"m.jsonl:2: field '{field}'" in str(info.value)


def test_jsonl_skip_mode_reports_every_bad_row_and_keeps_good_ones(images: Path) -> None:
    lines = [json.dumps(GOOD_JSON)] + [row for row, _, _ in BAD_JSON_ROWS]
    path = _write_lines(images / "m.jsonl", lines)
    result = read_jsonl(path, on_error="skip")
    assert len(result.items) == 1
    assert [e.line for e in result.errors] == list(range(2, 2 + len(BAD_JSON_ROWS)))
    assert [e.field for e in result.errors] == [f for _, f, _ in BAD_JSON_ROWS]


def test_jsonl_require_makes_title_mandatory(images: Path) -> None:
    path = _write_lines(images / "m.jsonl", [json.dumps(dict(GOOD_JSON, title=""))])
    assert len(read_jsonl(path)) == 1
    with pytest.raises(CatalogError, match="field 'title'"):
        read_jsonl(path, require=["title"])


def test_uri_images_are_kept_and_not_checked(images: Path) -> None:
    path = _write_lines(
        images / "m.jsonl",
        [json.dumps(dict(GOOD_JSON, image="https://cdn.example.com/p/1.jpg"))],
    )
    (item,) = read_jsonl(path).items
    assert item.image == "https://cdn.example.com/p/1.jpg"
    bad = _write_lines(images / "n.jsonl", [json.dumps(dict(GOOD_JSON, image="ftp://x/y.jpg"))])
    with pytest.raises(CatalogError, match="unsupported URI scheme"):
        read_jsonl(bad)


GOOD_CSV = (
    'img/a.jpg,img-1,set-1,S1,packagedgoods-v1,Acme cola 330ml,"brand=acme,type=cola",'
    '"1,2,30,2,30,25,1,25"\n'
    "img/b.png,,set-1,S2,packagedgoods-v1,Acme lemon,,\n"
    'img/b.png,,set-1,S3,general-v1,Norm box,,"0.1,0.2,0.5,0.2,0.5,0.6,0.1,0.6"\n'
)


def test_google_csv_loads_into_the_same_records(images: Path) -> None:
    path = images / "import.csv"
    path.write_text(GOOD_CSV, encoding="utf-8")
    result = read_catalog(path)
    assert result.errors == []
    a, b, c = result.items
    assert a == CatalogItem(
        image=str(images / "img" / "a.jpg"),
        sku_id="S1",
        title="Acme cola 330ml",
        tags=("brand=acme", "type=cola"),
        category="packagedgoods-v1",
        box=(1.0, 2.0, 30.0, 25.0),
        source=f"{path}:1",
    )
    assert a.extra == {"product_set_id": "set-1", "image_id": "img-1"}
    assert b.box is None and b.tags == ()
    # normalised vertices are converted with the image's size (b.png is 50x50)
    assert c.box == pytest.approx((5.0, 10.0, 25.0, 30.0))
    assert c.extra["box_normalized"] == pytest.approx([0.1, 0.2, 0.5, 0.6])


BAD_CSV_ROWS = [
    ("img/a.jpg,,set,S1,cat,title,", "<row>", "8 columns"),
    ("img/a.jpg,,set,,cat,title,,", "product-id", "missing"),
    (",,set,S1,cat,title,,", "image-uri", "missing"),
    ("img/none.jpg,,set,S1,cat,title,,", "image-uri", "not found"),
    ("img/a.jpg,,set,S1,,title,,", "product-category", "missing"),
    ('img/a.jpg,,set,S1,cat,title,"brand",', "labels", "key=value"),
    ('img/a.jpg,,set,S1,cat,title,,"1,2,3"', "bounding-poly", "at least 3 vertices"),
    ('img/a.jpg,,set,S1,cat,title,,"5,5,5,5,5,5"', "box", "x0 < x1"),
    ('img/a.jpg,,set,S1,cat,title,,"a,b,c,d,e,f"', "bounding-poly", "numbers"),
]


@pytest.mark.parametrize(("row", "field", "reason"), BAD_CSV_ROWS)
def test_google_csv_bad_row_names_file_line_and_field(
    images: Path, row: str, field: str, reason: str
) -> None:
    path = images / "import.csv"
    path.write_text(GOOD_CSV + row + "\n", encoding="utf-8")
    with pytest.raises(CatalogError) as info:
        read_google_csv(path)
    assert (info.value.error.line, info.value.error.field) == (4, field)
    assert reason in info.value.error.message
    skipped = read_google_csv(path, on_error="skip")
    assert len(skipped.items) == 3 and [e.line for e in skipped.errors] == [4]


def test_write_then_read_round_trips(images: Path) -> None:
    items = read_jsonl(_write_lines(images / "m.jsonl", [json.dumps(GOOD_JSON)])).items
    out = images / "sub" / "copy.jsonl"
    (images / "sub").mkdir()
    write_jsonl(items, out)
    again = read_jsonl(out).items
    assert [(i.image, i.sku_id, i.title, i.tags, i.category, i.box) for i in again] == [
        (i.image, i.sku_id, i.title, i.tags, i.category, i.box) for i in items
    ]
    assert json.loads(out.read_text())["image"] == "../img/a.jpg"


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="catalog manifest not found"):
        read_catalog(tmp_path / "nope.jsonl")


@pytest.mark.shared
def test_emoji_catalog_manifests_load_unchanged(emoji_catalog: Path) -> None:
    for split, needs_box in (("train", False), ("catalog", False), ("queries", True)):
        result = read_catalog(emoji_catalog / split / "manifest.jsonl")
        assert result.errors == [] and len(result) > 0
        assert all(Path(i.image).is_file() for i in result.items)
        assert all((i.box is not None) == needs_box for i in result.items)
    train = read_catalog(emoji_catalog / "train" / "manifest.jsonl").items
    assert all(i.title and i.category for i in train)
    assert {i.sku_id for i in train} == {
        i.sku_id for i in read_catalog(emoji_catalog / "catalog" / "manifest.jsonl").items
    }


@pytest.mark.shared
def test_emoji_and_google_csv_give_the_same_records(emoji_catalog: Path, tmp_path: Path) -> None:
    """The same catalog exported as a Google bulk-import CSV reads back to equal records."""
    import csv

    items = read_catalog(emoji_catalog / "catalog" / "manifest.jsonl").items
    path = tmp_path / "import.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        for it in items:
            labels = ",".join(f"tag{i}={t}" for i, t in enumerate(it.tags))
            writer.writerow([it.image, "", "emoji", it.sku_id, it.category, it.title, labels, ""])
    back = read_catalog(path).items
    assert [(b.image, b.sku_id, b.title, b.category) for b in back] == [
        (i.image, i.sku_id, i.title, i.category) for i in items
    ]
    assert [tuple(t.split("=", 1)[1] for t in b.tags) for b in back] == [i.tags for i in items]
