"""Issue 12: the typed client, its retries and the ``sku-recognize`` CLI, against a real uvicorn
serving the real model over a real redis-server."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_support import API_KEY, HEADERS, demo_index, live_server, service_settings

from service.api.app import create_app
from service.api.schemas import RecognizeResponse
from service.client import AsyncSkuClient, RetryPolicy, SkuApiError, SkuClient
from service.client_cli import main as cli_main
from service.redis_server import PrivateRedisServer


@pytest.fixture(scope="module")
def index(small_artifact: Path, demo_catalog: Path, tmp_path_factory) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    index_dir = tmp_path_factory.mktemp("index")
    with demo_index(small_artifact, demo_catalog, index_dir) as server:
        rows = [json.loads(line) for line in
                (demo_catalog / "catalog" / "manifest.jsonl").read_text().splitlines()]
        yield {"url": server.url, "index_dir": index_dir, "artifact": small_artifact,
               "photos": [(demo_catalog / "catalog" / r["image"], r["sku_id"]) for r in rows]}


@pytest.fixture(scope="module")
def base_url(index: dict) -> Iterator[str]:
    app = create_app(service_settings(index["url"], index["index_dir"], index["artifact"]))
    with live_server(app) as (url, _):
        yield url


def test_client_returns_the_service_models_from_a_path_or_bytes(base_url: str, index: dict
                                                               ) -> None:
    photo, sku_id = index["photos"][0]
    with SkuClient(base_url, API_KEY) as client:
        by_path = client.recognize(photo, top_k=3)
        by_bytes = client.recognize(photo.read_bytes(), top_k=3, roi=(0, 0, 60, 60))
    assert isinstance(by_path, RecognizeResponse) and len(by_path.candidates) == 3
    assert by_path.sku is not None and by_path.sku.sku_id == sku_id
    assert by_bytes.box.source == "roi" and by_bytes.box.pixels == pytest.approx((0, 0, 60, 60))


def test_request_id_comes_back_as_a_header_and_in_the_body(base_url: str, index: dict) -> None:
    photo = index["photos"][0][0].read_bytes()
    r = httpx.post(f"{base_url}/recognize", content=photo,
                   headers={**HEADERS, "Content-Type": "image/jpeg"})
    assert r.status_code == 200 and r.headers["X-Request-ID"] == r.json()["request_id"]
    sent = httpx.post(f"{base_url}/recognize", content=photo,
                      headers={**HEADERS, "Content-Type": "image/jpeg", "X-Request-ID": "abc-1"})
    assert sent.headers["X-Request-ID"] == "abc-1" == sent.json()["request_id"]


def test_client_errors_carry_the_service_error_body(base_url: str, index: dict) -> None:
    photo = index["photos"][0][0]
    with SkuClient(base_url, "wrong-key-0000000000") as client, \
            pytest.raises(SkuApiError) as info:
        client.recognize(photo)
    assert info.value.status == 403 and info.value.code == "invalid_api_key"
    assert info.value.request_id and info.value.attempts == 1
    with SkuClient(base_url, API_KEY) as client, pytest.raises(SkuApiError) as info:
        client.recognize(photo, top_k=0)
    assert info.value.status == 422 and info.value.code == "invalid_options"


def test_client_retries_429_after_retry_after_and_succeeds(index: dict) -> None:
    # one request per second, no burst: the second request is refused with Retry-After: 1
    settings = service_settings(index["url"], index["index_dir"], index["artifact"],
                                rate_limit_per_s=1.0, rate_limit_burst=1)
    photo = index["photos"][0][0]
    with live_server(create_app(settings)) as (url, _), \
            SkuClient(url, API_KEY, retry=RetryPolicy(attempts=3, backoff_s=0.0)) as client:
        client.recognize(photo)
        refused = httpx.post(f"{url}/recognize", content=photo.read_bytes(),
                             headers={**HEADERS, "Content-Type": "image/jpeg"})
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        start = time.monotonic()
        answer = client.recognize(photo)  # refused once more, then let through
        waited = time.monotonic() - start
        metrics = httpx.get(f"{url}/metrics").text
    assert answer.status in ("recognized", "no_match")
    assert waited >= 1.0, "the client must not retry before Retry-After"
    assert 'route="/recognize",status="429"} 2.0' in metrics


def test_client_gives_up_on_503_and_async_client_too(
    small_artifact: Path, tmp_path: Path, index: dict
) -> None:
    # a Redis with no index published: every /recognize is 503 index_unavailable, Retry-After 1
    with PrivateRedisServer() as empty:
        settings = service_settings(empty.url, tmp_path, small_artifact, retry_after_s=1)
        photo = index["photos"][0][0]
        with live_server(create_app(settings)) as (url, _):
            with SkuClient(url, API_KEY, retry=RetryPolicy(attempts=2, backoff_s=0.0)) as c, \
                    pytest.raises(SkuApiError) as info:
                c.recognize(photo)
            assert info.value.status == 503 and info.value.code == "index_unavailable"
            assert info.value.attempts == 2
            # a Retry-After longer than the client will wait: raised at once, no sleep
            with SkuClient(url, API_KEY, retry=RetryPolicy(attempts=5, max_wait_s=0.5)) as c, \
                    pytest.raises(SkuApiError) as info:
                c.recognize(photo)
            assert info.value.attempts == 1

            async def call() -> None:
                async with AsyncSkuClient(url, API_KEY,
                                          retry=RetryPolicy(attempts=2, backoff_s=0.0)) as ac:
                    await ac.recognize(photo)

            with pytest.raises(SkuApiError) as info:
                asyncio.run(call())
            assert info.value.status == 503 and info.value.attempts == 2


def test_async_client_recognizes_concurrently(base_url: str, index: dict) -> None:
    photos = [p for p, _ in index["photos"][:3]]

    async def run() -> list[RecognizeResponse]:
        async with AsyncSkuClient(base_url, API_KEY, timeout=60.0) as client:
            return await asyncio.gather(*(client.recognize(p, top_k=2) for p in photos))

    answers = asyncio.run(run())
    assert [len(a.candidates) for a in answers] == [2, 2, 2]
    assert len({a.request_id for a in answers}) == 3


def test_client_timeout_is_raised_as_httpx_timeout(base_url: str, index: dict) -> None:
    with SkuClient(base_url, API_KEY, timeout=1e-6) as client, \
            pytest.raises(httpx.TimeoutException):
        client.recognize(index["photos"][0][0])


def test_cli_prints_a_table_or_json(base_url: str, index: dict,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    (p0, sku0), (p1, _) = index["photos"][:2]
    common = ["--url", base_url, "--api-key", API_KEY, "--top-k", "2"]
    assert cli_main([str(p0), str(p1), *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["PHOTO", "OBJ", "SKU", "TITLE", "SCORE", "BOX"]
    assert len(lines) == 3 and sku0 in lines[1]
    assert cli_main([str(p0), *common, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["photo"] == str(p0) and len(answer["candidates"]) == 2
    assert cli_main([str(p0), str(p0.parent / "missing.jpg"), *common]) == 1
    out = capsys.readouterr().out
    assert "missing.jpg" in out and sku0 in out


def test_retry_policy_waits() -> None:
    policy = RetryPolicy(attempts=3, backoff_s=0.5, max_wait_s=10)
    r503 = httpx.Response(503, headers={"Retry-After": "2"})
    assert policy.wait_s(r503, 0) == 2.0
    assert policy.wait_s(httpx.Response(429), 1) == 1.0  # backoff 0.5 * 2**1
    assert policy.wait_s(r503, 2) is None  # attempts spent
    assert policy.wait_s(httpx.Response(500), 0) is None
    assert policy.wait_s(httpx.Response(503, headers={"Retry-After": "60"}), 0) is None
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_openapi_documents_the_request_id_header(tmp_path: Path) -> None:
    # the schema needs no model: the lifespan (which loads them) is not run
    app = create_app(service_settings("redis://127.0.0.1:1/0", tmp_path, tmp_path))
    responses = app.openapi()["paths"]["/recognize"]["post"]["responses"]
    for status in ("200", "422", "429", "503"):
        assert "X-Request-ID" in responses[status]["headers"], status
