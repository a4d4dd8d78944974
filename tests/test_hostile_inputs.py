"""Our own hostile-input suite (issue 10): a few hundred generated, seeded inputs against the
real app (real decoding, real model, real Redis).  Each must be answered 200 or a documented
4xx JSON error, never a 5xx or a hang; afterwards a good photo is still recognised."""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_support import HEADERS, demo_index, service_settings

from service.api.app import create_app

DOCUMENTED = {200, 400, 401, 403, 404, 413, 415, 422, 429}
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
SEED = 10


@pytest.fixture(scope="module")
def client(small_artifact: Path, demo_catalog: Path, tmp_path_factory) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    index_dir = tmp_path_factory.mktemp("index")
    with demo_index(small_artifact, demo_catalog, index_dir, thumbnails=True) as server:
        settings = service_settings(server.url, index_dir, small_artifact, max_queue=64)
        with TestClient(create_app(settings)) as c:
            yield c


@pytest.fixture(scope="module")
def good(demo_catalog: Path) -> tuple[bytes, str]:
    row = json.loads((demo_catalog / "catalog" / "manifest.jsonl").read_text().splitlines()[0])
    return (demo_catalog / "catalog" / row["image"]).read_bytes(), row["sku_id"]


def _encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _photo(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    img = Image.linear_gradient("L").resize(size).convert("RGB")
    return img.convert(mode)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _with_chunk(png: bytes, chunk: bytes) -> bytes:
    iend = png.rindex(b"IEND") - 4
    return png[:iend] + chunk + png[iend:]


def _giant_headers() -> list[tuple[str, bytes]]:
    """Small files whose headers declare a huge picture."""
    png = bytearray(_encode(_photo(), "PNG"))
    png[16:24] = struct.pack(">II", 100_000, 100_000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    gif = bytearray(_encode(_photo(mode="P"), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)
    bmp = bytearray(_encode(_photo(), "BMP"))
    bmp[18:26] = struct.pack("<ii", 60_000, 60_000)
    jpeg = bytearray(_encode(_photo(), "JPEG"))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)
    bomb_text = zlib.compress(b"\0" * 20_000_000, 9)
    base = _encode(_photo(), "PNG")
    ztxt = _with_chunk(base, _png_chunk(b"zTXt", b"Comment\0\0" + bomb_text))
    iccp = _with_chunk(base, _png_chunk(b"iCCP", b"icc\0\0" + bomb_text))
    one_bit = _encode(Image.new("1", (8000, 8000)), "PNG", optimize=True)  # 64 Mpx
    return [("png_giant", bytes(png)), ("gif_giant", bytes(gif)), ("bmp_giant", bytes(bmp)),
            ("jpeg_giant", bytes(jpeg)), ("png_ztxt_bomb", ztxt), ("png_iccp_bomb", iccp),
            ("png_1bit_bomb", one_bit)]


def _images(rng: random.Random) -> Iterator[tuple[str, bytes]]:
    for i in range(20):
        yield f"random_{i}", rng.randbytes(rng.choice([1, 16, 512, 4096]))
    for fmt in FORMATS:
        data = _encode(_photo(mode="P" if fmt == "GIF" else "RGB"), fmt)
        yield f"{fmt}_intact", data
        for j in range(8):
            yield f"{fmt}_cut_{j}", data[: rng.randrange(1, len(data))]
        for j in range(8):
            flipped = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(len(flipped))
                flipped[pos] ^= 1 << rng.randrange(8)
            yield f"{fmt}_flip_{j}", bytes(flipped)
    yield from _giant_headers()
    yield "1x1", _encode(_photo((1, 1)), "PNG")
    yield "1x20000", _encode(_photo((1, 20000)), "PNG")
    yield "20000x16", _encode(_photo((20000, 16)), "PNG")
    for mode, fmt in [("I;16", "PNG"), ("I;16B", "TIFF"), ("I", "TIFF"), ("F", "TIFF"),
                      ("1", "PNG"), ("P", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"),
                      ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("YCbCr", "TIFF"), ("LAB", "TIFF"),
                      ("L", "WEBP"), ("RGBA", "WEBP")]:
        base = _photo().convert("I") if mode.startswith("I") else _photo()
        yield f"mode_{mode}_{fmt}", _encode(base.convert(mode), fmt)
    frames = [_photo(mode="P"), _photo((64, 48), "RGB").rotate(90).convert("P")]
    yield "gif_animated", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    yield "tiff_multipage", _encode(_photo(), "TIFF", save_all=True, append_images=[_photo()])
    yield "webp_animated", _encode(_photo(), "WEBP", save_all=True, append_images=[_photo()])
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        yield f"exif_{orientation}", _encode(_photo(), "JPEG", exif=exif)
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: a 60 kB EXIF block
    yield "exif_huge", _encode(_photo(), "JPEG", exif=exif)
    jpeg = _encode(_photo(), "JPEG", exif=b"Exif\0\0II*\0\xff\xff\xff\xff" + b"\0" * 64)
    yield "exif_corrupt", jpeg
    yield "exif_orientation_text", _encode(_photo(), "JPEG", exif=_bad_orientation())
    for name, text in [("html", b"<html><body>hi</body></html>"), ("pdf", b"%PDF-1.4\n%\xe2\xe3"),
                       ("zip", b"PK\x03\x04" + b"\0" * 100),
                       ("svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>'), ("empty", b"")]:
        yield f"not_image_{name}", text


def _bad_orientation() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 99
    return exif


def _check(r: Any, case: str) -> None:
    assert r.status_code in DOCUMENTED, f"{case}: {r.status_code} {r.text[:300]}"
    if r.status_code != 200:
        err = r.json()["error"]
        assert err["code"] and err["message"], case


def test_hostile_images(client: TestClient, good: tuple[bytes, str]) -> None:
    rng = random.Random(SEED)
    n = 0
    for case, data in _images(rng):
        ctype = rng.choice(["image/jpeg", "image/png", "application/octet-stream"])
        if rng.random() < 0.5:
            r = client.post("/recognize", content=data, headers={**HEADERS, "Content-Type": ctype})
        else:
            r = client.post("/recognize", files={"image": ("x", data, ctype)}, headers=HEADERS)
        _check(r, case)
        n += 1
    assert n > 150
    _still_answers(client, good)


def test_multipart_options_and_auth_edges(client: TestClient, good: tuple[bytes, str]) -> None:
    photo = good[0]
    img = ("p.jpg", photo, "image/jpeg")
    cases: list[tuple[str, dict[str, Any]]] = [
        ("two_images", {"files": [("image", img), ("image", img)]}),
        ("image_as_text", {"data": {"image": "not a file"}}),
        ("empty_filename", {"files": {"image": ("", photo, "image/jpeg")}}),
        ("many_fields", {"data": {f"f{i}": "x" for i in range(40)}, "files": {"image": img}}),
        ("no_boundary", {"content": photo, "headers": {"Content-Type": "multipart/form-data"}}),
        ("bad_boundary", {"content": b"--zz\r\nxx", "headers": {
            "Content-Type": "multipart/form-data; boundary=yy"}}),
        ("no_content_type", {"content": photo, "headers": {}}),
    ]
    for top_k in ["1", "50", "51", "0", "-1", "1e3", "abc", "", " 5", "9" * 40]:
        cases.append((f"top_k={top_k!r}", {"params": {"top_k": top_k}, "files": {"image": img}}))
        cases.append((f"form top_k={top_k!r}", {"data": {"top_k": top_k}, "files": {"image": img}}))
    for score in ["0", "1", "-0", "1.0000001", "nan", "inf", "-inf", "x"]:
        cases.append((f"min_score={score}", {"params": {"min_score": score}, "files": {"image": img}}))
    for cat in ["", "x" * 199, "x" * 5000, "\u0000", "🙂"]:
        cases.append((f"category={cat[:10]!r}", {"params": {"category": cat}, "files": {"image": img}}))
    for roi in ["", "0,0,0,0", "1,1,1e308,1e308", "-1,0,5,5", "[" * 5000, "1,2,3,4" * 100,
                "0x1,0,5,5", "1_0,0,50,50"]:
        cases.append((f"roi={roi[:10]!r}", {"params": {"roi": roi}, "files": {"image": img}}))
    for key in ["", " ", "x" * 10_000, "test-key-0123456789 ", "tést-key-ünïcode".encode()]:
        cases.append((f"key={key[:10]!r}", {"files": {"image": img},
                                            "headers": {"X-API-Key": key}}))
    for case, kw in cases:
        headers = {**HEADERS, **kw.pop("headers", {})}
        r = client.post("/recognize", headers=headers, **kw)
        _check(r, case)
    _still_answers(client, good)


@pytest.mark.parametrize("sku_id", ["../../etc/passwd", "*", "sku:*", "{P}", "a?b", "[a-z]",
                                    "%00", "..%2F..%2F", "x" * 5000, "}{", "\\", "v:1:sku:{x}"])
def test_thumbnail_ids_are_just_ids(client: TestClient, sku_id: str) -> None:
    r = client.get(f"/skus/{sku_id}/thumbnail", headers=HEADERS)
    _check(r, sku_id)
    assert r.status_code in (404, 422), sku_id


def _still_answers(client: TestClient, good: tuple[bytes, str]) -> None:
    r = client.post("/recognize", content=good[0], headers={**HEADERS, "Content-Type": "image/jpeg"})
    assert r.status_code == 200 and r.json()["sku"]["sku_id"] == good[1]
