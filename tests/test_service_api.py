"""End to end: httpx against the app, a real redis-server holding an index published by
index_builder, the real ONNX model of a freshly trained tiny SICoT artifact."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index_builder import cli as index_cli
from service.api.app import create_app
from service.api.settings import ServiceSettings
from service.redis_server import PrivateRedisServer

API_KEY = "test-key-0123456789"
HEADERS = {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def published(small_artifact: Path, demo_catalog: Path, tmp_path_factory) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    """A private Redis with the demo catalog's index published into it."""
    index_dir = tmp_path_factory.mktemp("index")
    with PrivateRedisServer() as server:
        rc = index_cli.main([
            "build", "--catalog", str(demo_catalog / "catalog" / "manifest.jsonl"),
            "--artifact", str(small_artifact), "--index-dir", str(index_dir),
            "--redis-url", server.url, "--thumbnails", "--no-progress", "--version", "v1",
        ])
        assert rc == 0
        yield {"url": server.url, "index_dir": index_dir, "server": server}


def _settings(published: dict, small_artifact: Path, **over) -> ServiceSettings:  # type: ignore[no-untyped-def]
    values = dict(
        redis_url=published["url"], model_dir=small_artifact, index_dir=published["index_dir"],
        api_keys=[API_KEY], index_poll_s=0.1, max_concurrency=2, max_queue=4,
    )
    values.update(over)
    return ServiceSettings(**values)


@pytest.fixture(scope="module")
def client(published, small_artifact) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(create_app(_settings(published, small_artifact))) as c:
        yield c


def _catalog(demo_catalog: Path) -> list[dict]:
    lines = (demo_catalog / "catalog" / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _jpeg(path: Path) -> bytes:
    return path.read_bytes()


def test_ready_health_and_versions(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["ready"] and body["checks"] == {"models": True, "index": True, "redis": True}
    assert body["index_version"] == "v1" and body["model_version"].startswith("small-sicot-")


def test_catalog_images_come_back_as_their_skus_with_index_metadata(
    client: TestClient, demo_catalog: Path
) -> None:
    rows = _catalog(demo_catalog)
    by_sku = {r["sku_id"]: r for r in rows}
    correct = 0
    for row in rows:
        data = _jpeg(demo_catalog / "catalog" / row["image"])
        r = client.post("/recognize", files={"image": ("p.jpg", data, "image/jpeg")},
                        headers=HEADERS)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "recognized"
        best = body["sku"]
        correct += best["sku_id"] == row["sku_id"]
        truth = by_sku[best["sku_id"]]  # whatever it answered, the metadata is the index's
        assert best["title"] == truth["title"] and best["tags"] == truth["tags"]
        assert best["category"] == truth["category"]
        assert best["image"].endswith(truth["image"])
        assert body["index_version"] == "v1" and body["index_built_at"]
        assert set(body["timings_ms"]) >= {"decode", "localize", "recognize", "search", "fuse",
                                           "metadata", "total"}
    # a small frozen-backbone model trained for seconds: fine-grained variants of one brand
    # are sometimes confused, so this checks the path works, not the model's quality
    assert correct / len(rows) >= 0.5, f"{correct}/{len(rows)} catalog images recognised"
    thumb = client.get(best["thumbnail_url"], headers=HEADERS)
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"


def test_query_photo_raw_body_and_options(client: TestClient, demo_catalog: Path) -> None:
    row = json.loads((demo_catalog / "queries" / "manifest.jsonl").read_text().splitlines()[0])
    data = _jpeg(demo_catalog / "queries" / row["image"])
    r = client.post("/recognize?top_k=3", content=data,
                    headers={**HEADERS, "Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    w, h = body["image_size"]["width"], body["image_size"]["height"]
    assert len(body["candidates"]) == 3
    assert body["box"]["source"] == "full_image" and body["box"]["pixels"] == [0, 0, w, h]
    assert body["category"]["name"] in {c["category"] for c in _catalog(demo_catalog)}
    scores = [c["score"] for c in body["candidates"]]
    assert scores == sorted(scores, reverse=True)
    # a known box: the client's ROI is used as is
    x0, y0, x1, y1 = row["box"]
    r = client.post(f"/recognize?roi={x0},{y0},{x1},{y1}", content=data,
                    headers={**HEADERS, "Content-Type": "image/jpeg"})
    assert r.json()["box"]["source"] == "roi"
    assert r.json()["box"]["pixels"] == [float(v) for v in row["box"]]


def test_min_score_gives_an_explicit_no_match(client: TestClient, demo_catalog: Path) -> None:
    data = _jpeg(demo_catalog / "catalog" / _catalog(demo_catalog)[0]["image"])
    r = client.post("/recognize", data={"min_score": "1.0"},
                    files={"image": ("p.jpg", data, "image/jpeg")}, headers=HEADERS)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "no_match" and body["sku"] is None and body["candidates"]


def test_category_hint_restricts_candidates(client: TestClient, demo_catalog: Path) -> None:
    rows = _catalog(demo_catalog)
    cat = rows[0]["category"]
    data = _jpeg(demo_catalog / "catalog" / rows[0]["image"])
    r = client.post("/recognize", params={"category": cat, "top_k": 10}, content=data,
                    headers={**HEADERS, "Content-Type": "image/jpeg"})
    assert r.status_code == 200
    assert {c["category"] for c in r.json()["candidates"]} == {cat}
    bad = client.post("/recognize", params={"category": "no such"}, content=data,
                      headers={**HEADERS, "Content-Type": "image/jpeg"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "unknown_category"


def _png(img: Image.Image, **kw) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("truncated_jpeg", 400, "undecodable_image"),
        ("zero_bytes", 400, "undecodable_image"),
        ("text_file", 415, "unsupported_image_type"),
        ("png_bomb", 413, "image_too_large"),
        ("wrong_content_type", 415, "unsupported_media_type"),
        ("no_image_field", 400, "missing_image"),
        ("bad_top_k", 422, "invalid_options"),
        ("bad_roi", 422, "invalid_options"),
        ("missing_key", 401, "missing_api_key"),
        ("wrong_key", 403, "invalid_api_key"),
    ],
)
def test_error_codes(client: TestClient, demo_catalog: Path, case: str, status: int,
                     code: str) -> None:
    jpeg = _jpeg(demo_catalog / "catalog" / _catalog(demo_catalog)[0]["image"])
    kw: dict = {"files": {"image": ("p.jpg", jpeg, "image/jpeg")}, "headers": HEADERS}
    url = "/recognize"
    if case == "truncated_jpeg":
        kw["files"] = {"image": ("p.jpg", jpeg[: len(jpeg) // 2], "image/jpeg")}
    elif case == "zero_bytes":
        kw["files"] = {"image": ("p.jpg", b"", "image/jpeg")}
    elif case == "text_file":
        kw["files"] = {"image": ("notes.txt", b"just some text\n" * 20, "text/plain")}
    elif case == "png_bomb":
        bomb = _png(Image.new("1", (20000, 20000)), optimize=True)
        kw["files"] = {"image": ("bomb.png", bomb, "image/png")}
    elif case == "wrong_content_type":
        kw = {"content": b"{}", "headers": {**HEADERS, "Content-Type": "application/json"}}
    elif case == "no_image_field":
        kw["files"] = {"photo": ("p.jpg", jpeg, "image/jpeg")}
    elif case == "bad_top_k":
        url = "/recognize?top_k=0"
    elif case == "bad_roi":
        url = "/recognize?roi=10,10,5,5"
    elif case == "missing_key":
        kw["headers"] = {}
    elif case == "wrong_key":
        kw["headers"] = {"X-API-Key": "not-the-right-key"}
    r = client.post(url, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["request_id"]
    assert "Traceback" not in r.text


def test_body_over_the_limit_is_refused_before_reading(
    published, small_artifact: Path  # type: ignore[no-untyped-def]
) -> None:
    from service.settings import ImageLimits

    settings = _settings(published, small_artifact, limits=ImageLimits(max_bytes=10_000))
    with TestClient(create_app(settings)) as c:
        big = b"\xff\xd8" + b"0" * 200_000
        r = c.post("/recognize", content=big, headers={**HEADERS, "Content-Type": "image/jpeg"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            for _ in range(50):
                yield b"0" * 10_000

        r = c.post("/recognize", content=chunks(),
                   headers={**HEADERS, "Content-Type": "image/jpeg"})
        assert r.status_code == 413


def test_full_queue_answers_429(client: TestClient, demo_catalog: Path) -> None:
    state = client.app.state.service  # type: ignore[attr-defined]
    jpeg = _jpeg(demo_catalog / "catalog" / _catalog(demo_catalog)[0]["image"])
    capacity = state.settings.max_concurrency + state.settings.max_queue
    state.inflight += capacity  # as if that many requests were running or waiting
    try:
        r = client.post("/recognize", files={"image": ("p.jpg", jpeg, "image/jpeg")},
                        headers=HEADERS)
    finally:
        state.inflight -= capacity
    assert r.status_code == 429 and r.headers["Retry-After"]
    ok = client.post("/recognize", files={"image": ("p.jpg", jpeg, "image/jpeg")},
                     headers=HEADERS)
    assert ok.status_code == 200


def test_metrics_expose_requests_stages_and_versions(client: TestClient) -> None:
    text = client.get("/metrics").text
    assert 'sku_http_requests_total{route="/recognize",status="200"}' in text
    assert 'sku_stage_seconds_bucket{le="0.002",stage="recognize"}' in text
    assert "sku_queue_depth" in text and "sku_batch_size_bucket" in text
    assert 'index_version="v1"' in text


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/recognize"]["post"]
    assert set(post["requestBody"]["content"]) == {"multipart/form-data", "image/*"}
    assert {"200", "400", "401", "403", "413", "415", "422", "429", "503"} <= set(post["responses"])
    assert "RecognizeResponse" in spec["components"]["schemas"]
    # issue 12: the new options, fields and errors are documented with examples
    params = {p["name"]: p for p in post["parameters"]}
    assert params["max_objects"]["schema"]["maximum"] == 10
    assert params["filter"]["schema"]["examples"]
    example = post["responses"]["200"]["content"]["application/json"]["example"]
    assert example["objects"][0]["candidates"][0]["matched_image"]["image"]
    assert example["filter"]["expression"] and "fewer_than_top_k" in example
    error = post["responses"]["422"]["content"]["application/json"]["example"]["error"]
    assert error["code"] == "invalid_filter" and error["position"] == 16
    schemas = spec["components"]["schemas"]
    assert {"objects", "filter", "fewer_than_top_k"} <= set(schemas["RecognizeResponse"]["properties"])
    assert {"matched_image", "labels", "source"} <= set(schemas["Candidate"]["properties"])
    assert schemas["MatchedImage"]["properties"]["image"]["examples"]
    assert "position" in schemas["ErrorDetail"]["properties"]


def test_redis_down_gives_503_with_retry_after(
    small_artifact: Path, demo_catalog: Path, tmp_path: Path
) -> None:
    with PrivateRedisServer() as server:
        assert index_cli.main([
            "build", "--catalog", str(demo_catalog / "catalog" / "manifest.jsonl"),
            "--artifact", str(small_artifact), "--index-dir", str(tmp_path),
            "--redis-url", server.url, "--no-progress",
        ]) == 0
        settings = _settings({"url": server.url, "index_dir": tmp_path}, small_artifact)
        jpeg = _jpeg(demo_catalog / "catalog" / _catalog(demo_catalog)[0]["image"])
        with TestClient(create_app(settings)) as c:
            assert c.post("/recognize", content=jpeg,
                          headers={**HEADERS, "Content-Type": "image/jpeg"}).status_code == 200
            server.stop()
            r = c.post("/recognize", content=jpeg,
                       headers={**HEADERS, "Content-Type": "image/jpeg"})
            assert r.status_code == 503 and r.headers["Retry-After"]
            assert r.json()["error"]["code"] == "unavailable"
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["redis"] is False


def test_not_ready_without_models_answers_503(published, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = _settings(published, tmp_path / "no-artifact")
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz").json()
        assert ready["ready"] is False and "models" in ready["detail"]
        r = c.post("/recognize", content=b"x", headers={**HEADERS, "Content-Type": "image/jpeg"})
        assert r.status_code == 503 and r.headers["Retry-After"]


def test_follows_a_newly_published_version_without_failing_requests(
    client: TestClient, published, small_artifact: Path, demo_catalog: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    rows = _catalog(demo_catalog)
    # v2: the catalog with the first SKU's title changed
    changed = dict(rows[0], title="Renamed product 2.0",
                   image=str(demo_catalog / "catalog" / rows[0]["image"]))
    manifest = tmp_path / "catalog-v2.jsonl"
    manifest.write_text("\n".join(
        [json.dumps(changed)]
        + [json.dumps(dict(r, image=str(demo_catalog / "catalog" / r["image"]))) for r in rows[1:]]
    ) + "\n")
    assert index_cli.main([
        "build", "--catalog", str(manifest), "--artifact", str(small_artifact),
        "--index-dir", str(published["index_dir"]), "--redis-url", published["url"],
        "--no-progress", "--version", "v2", "--thumbnails",
    ]) == 0
    jpeg = _jpeg(demo_catalog / "catalog" / rows[0]["image"])
    seen = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "v2" not in seen:
        r = client.post("/recognize", content=jpeg,
                        headers={**HEADERS, "Content-Type": "image/jpeg"})
        assert r.status_code == 200
        seen.add(r.json()["index_version"])
        time.sleep(0.05)
    assert "v2" in seen
    assert r.json()["sku"]["title"] == "Renamed product 2.0"
    assert client.get("/readyz").json()["index_version"] == "v2"


def test_sku_added_after_training_is_answered_from_the_index(
    client: TestClient, published, small_artifact: Path, demo_catalog: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """A product the classifier has never seen (added to the catalog after training) is still
    recognised: the index check finds its catalog image among the nearest neighbours."""
    from demo.catalog import generate_demo_catalog

    other = tmp_path / "other"
    generate_demo_catalog(other, skus=3, seed=99, splits=["catalog"])
    new = json.loads((other / "catalog" / "manifest.jsonl").read_text().splitlines()[0])
    new = dict(new, sku_id="NEW-1", title="Brand new product",
               image=str(other / "catalog" / new["image"]))
    rows = [dict(r, image=str(demo_catalog / "catalog" / r["image"])) for r in _catalog(demo_catalog)]
    manifest = tmp_path / "catalog-new.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in [*rows, new]) + "\n")
    assert index_cli.main([
        "build", "--catalog", str(manifest), "--artifact", str(small_artifact),
        "--index-dir", str(published["index_dir"]), "--redis-url", published["url"],
        "--no-progress", "--version", "v3",
    ]) == 0
    deadline = time.monotonic() + 10
    while client.get("/readyz").json()["index_version"] != "v3" and time.monotonic() < deadline:
        time.sleep(0.1)
    r = client.post("/recognize", content=Path(new["image"]).read_bytes(),
                    headers={**HEADERS, "Content-Type": "image/jpeg"})
    best = r.json()["sku"]
    assert (best["sku_id"], best["source"]) == ("NEW-1", "index"), [
        (c["sku_id"], c["score"], c["source"]) for c in r.json()["candidates"]]
    assert best["title"] == "Brand new product"
