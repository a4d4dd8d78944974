"""Issue 10: slow and vanishing clients, missing index data, hostile options, auth by default,
leaks, Redis timeouts.  Real uvicorn on real sockets, a real redis-server, the real model."""

from __future__ import annotations

import io
import json
import os
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_support import (
    HEADERS,
    build_index,
    demo_index,
    live_server,
    raw_request_head,
    read_response,
    service_settings,
)

from index_builder import maintenance
from service.api.app import create_app
from service.api.settings import ClientTimeouts, ServiceSettings
from service.redis_server import connect
from service.settings import SettingsError, load_settings
from service.store import SkuStore

JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture(scope="module")
def index(small_artifact: Path, demo_catalog: Path, tmp_path_factory) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    index_dir = tmp_path_factory.mktemp("index")
    with demo_index(small_artifact, demo_catalog, index_dir, thumbnails=True) as server:
        yield {"url": server.url, "index_dir": index_dir, "server": server,
               "artifact": small_artifact, "catalog": demo_catalog}


def _settings(index: dict, **over) -> ServiceSettings:  # type: ignore[no-untyped-def]
    return service_settings(index["url"], index["index_dir"], index["artifact"], **over)


def _photo(index: dict) -> tuple[bytes, str]:
    row = json.loads((index["catalog"] / "catalog" / "manifest.jsonl").read_text().splitlines()[0])
    return (index["catalog"] / "catalog" / row["image"]).read_bytes(), row["sku_id"]


@pytest.fixture(scope="module")
def client(index: dict) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(index))) as c:
        yield c


# ----------------------------------------------------------------------- 1. slow uploads
def test_trickling_uploads_do_not_lock_out_good_requests(index: dict) -> None:
    """100 uploads that never finish their body take no compute slot: good requests get 200
    (the queue holds 2 running + 4 waiting here)."""
    slow = ClientTimeouts(body_total_s=300, body_grace_s=300)
    app = create_app(_settings(index, client_timeouts=slow))
    jpeg, sku = _photo(index)
    socks: list[socket.socket] = []
    with live_server(app) as (url, port):
        try:
            for _ in range(100):
                s = socket.create_connection(("127.0.0.1", port), timeout=30)
                s.sendall(raw_request_head("/recognize", 200_000) + b"\xff\xd8\xff")
                socks.append(s)
            time.sleep(2)  # let every trickler reach the route and start reading its body
            with httpx.Client(base_url=url, timeout=60) as http:
                for _ in range(3):
                    r = http.post("/recognize", content=jpeg, headers={**HEADERS, **JPEG})
                    assert r.status_code == 200, r.text
                    assert r.json()["sku"]["sku_id"] == sku
        finally:
            for s in socks:
                s.close()


def test_body_deadline_answers_408_and_closes(index: dict) -> None:
    quick = ClientTimeouts(body_total_s=1.0, body_grace_s=0.5, body_min_rate_bps=10_000)
    app = create_app(_settings(index, client_timeouts=quick))
    with live_server(app) as (_, port):
        # announces more bytes than it sends
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(raw_request_head("/recognize", 5000) + b"\xff\xd8" * 50)
            status, data, closed = read_response(s)
            assert status == 408 and b'"request_timeout"' in data
            assert read_response(s)[2] or closed  # the server closed the connection
        # trickles: a byte every 0.1 s, far under the minimum rate, until the server answers
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(raw_request_head("/recognize", 5000))
            for _ in range(300):
                if select.select([s], [], [], 0.1)[0]:
                    break
                s.sendall(b"\x00")
            status, data, closed = read_response(s)
            assert status == 408 and b'"request_timeout"' in data


def test_headers_that_never_complete_are_cut(index: dict) -> None:
    app = create_app(_settings(index))
    with live_server(app, header_timeout_s=0.5) as (_, port):
        for opening in (b"", b"POST /recognize HTTP/1.1\r\nHost: x\r\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(opening)
                assert s.recv(1024) == b""  # closed by the server, not by our timeout


# ----------------------------------------------------------------------- 6. client aborts
def test_client_abort_is_counted_as_499_not_500(index: dict) -> None:
    app = create_app(_settings(index))
    with live_server(app) as (url, port):
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(raw_request_head("/recognize", 200_000) + b"\xff\xd8" * 500)
            time.sleep(0.2)
            s.close()
        with httpx.Client(base_url=url, timeout=30) as http:
            deadline = time.monotonic() + 30
            text = ""
            while time.monotonic() < deadline:
                text = http.get("/metrics").text
                if 'route="/recognize",status="499"} 5.0' in text:
                    break
                time.sleep(0.2)
    assert 'sku_http_requests_total{route="/recognize",status="499"} 5.0' in text
    assert 'status="500"' not in text


# ----------------------------------------------------------------------- 2. missing data
def test_missing_index_data_is_503_not_no_match_and_recovers(
    small_artifact: Path, demo_catalog: Path, tmp_path: Path
) -> None:
    catalog = demo_catalog / "catalog" / "manifest.jsonl"
    with demo_index(small_artifact, demo_catalog, tmp_path) as server:
        settings = service_settings(server.url, tmp_path, small_artifact)
        jpeg = _photo({"catalog": demo_catalog})[0]
        redis = connect(server.url)
        store = SkuStore(redis, settings.key_prefix)
        with TestClient(create_app(settings)) as c:
            assert c.post("/recognize", content=jpeg, headers={**HEADERS, **JPEG}).status_code == 200
            assert store.served_versions() == ["v1"]  # gc will keep it
            # the served version's manifest disappears: the very next request knows
            redis.delete(store.keys.manifest("v1"))
            r = c.post("/recognize", content=jpeg, headers={**HEADERS, **JPEG})
            assert r.status_code == 503 and r.headers["Retry-After"], r.text
            assert r.json()["error"]["code"] == "index_unavailable"
            # Redis restarted empty: not ready, and 503, until something is published
            redis.flushall()
            _wait(lambda: c.get("/readyz").status_code == 503)
            ready = c.get("/readyz").json()
            assert ready["checks"]["index"] is False and "index" in ready["detail"]
            r = c.post("/recognize", content=jpeg, headers={**HEADERS, **JPEG})
            assert r.status_code == 503 and r.json()["error"]["code"] == "index_unavailable"
            # the next published version is picked up without a restart
            build_index(catalog, small_artifact, tmp_path, server.url, "--version", "v2")
            _wait(lambda: c.get("/readyz").status_code == 200)
            r = c.post("/recognize", content=jpeg, headers={**HEADERS, **JPEG})
            assert r.status_code == 200 and r.json()["index_version"] == "v2"
        redis.close()


def test_gc_never_deletes_a_version_a_service_serves(
    small_artifact: Path, demo_catalog: Path, tmp_path: Path
) -> None:
    with demo_index(small_artifact, demo_catalog, tmp_path, "v1", "v2") as server:
        redis = connect(server.url)
        store = SkuStore(redis)
        store.mark_served("v1", ttl_s=60)  # a service that has not followed v2 yet
        result = maintenance.gc(store, tmp_path, keep=0, progress=False)
        assert "v1" in result.kept and store.has_manifest("v1")
        assert "v1" not in result.deleted_versions
        redis.close()


def _wait(cond, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


# ----------------------------------------------------------------------- 3, 8, 9, 10, 11
@pytest.mark.parametrize("where", ["query", "form"])
def test_deeply_nested_roi_is_422(client: TestClient, index: dict, where: str) -> None:
    jpeg = _photo(index)[0]
    roi = "[" * 3000 + "]" * 3000
    if where == "query":
        r = client.post("/recognize", params={"roi": roi}, content=jpeg,
                        headers={**HEADERS, **JPEG})
    else:
        r = client.post("/recognize", data={"roi": roi},
                        files={"image": ("p.jpg", jpeg, "image/jpeg")}, headers=HEADERS)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_options", r.text


def test_roi_as_a_flat_json_list(client: TestClient, index: dict) -> None:
    jpeg = _photo(index)[0]
    r = client.post("/recognize", params={"roi": "[1, 2, 30, 40]"}, content=jpeg,
                    headers={**HEADERS, **JPEG})
    assert r.status_code == 200 and r.json()["box"]["pixels"] == [1, 2, 30, 40]
    for bad in ("[[1,2,30,40]]", "1,2,3", "nan,0,5,5", "1,2,30,40,5", '{"a": 1}'):
        r = client.post("/recognize", params={"roi": bad}, content=jpeg,
                        headers={**HEADERS, **JPEG})
        assert r.status_code == 422, bad


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_large_photos_are_decoded_reduced_but_answered_in_their_own_pixels(
    client: TestClient, fmt: str
) -> None:
    img = Image.linear_gradient("L").resize((2400, 1800)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    r = client.post("/recognize", params={"roi": "100,200,1300,1000"}, content=buf.getvalue(),
                    headers={**HEADERS, "Content-Type": f"image/{fmt.lower()}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image_size"] == {"width": 2400, "height": 1800}
    assert body["box"]["pixels"] == pytest.approx([100, 200, 1300, 1000], abs=0.01)
    assert body["box"]["normalized"] == pytest.approx([100 / 2400, 200 / 1800, 1300 / 2400,
                                                       1000 / 1800], abs=1e-3)


def test_big_endian_16_bit_tiff_is_recognised(client: TestClient) -> None:
    img = Image.linear_gradient("L").resize((64, 64)).convert("I").convert("I;16B")
    buf = io.BytesIO()
    img.save(buf, format="TIFF")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "I;16B"
    r = client.post("/recognize", content=buf.getvalue(),
                    headers={**HEADERS, "Content-Type": "image/tiff"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("where", ["query", "form"])
@pytest.mark.parametrize("top_k", ["0", "51", "-1"])
def test_top_k_is_validated_the_same_way_as_query_and_form(
    client: TestClient, index: dict, where: str, top_k: str
) -> None:
    jpeg = _photo(index)[0]
    files = {"image": ("p.jpg", jpeg, "image/jpeg")}
    if where == "query":
        r = client.post("/recognize", params={"top_k": top_k}, files=files, headers=HEADERS)
    else:
        r = client.post("/recognize", data={"top_k": top_k}, files=files, headers=HEADERS)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_options", r.text


def test_schema_states_the_limits_the_code_checks(client: TestClient) -> None:
    settings = client.app.state.service.settings  # type: ignore[attr-defined]
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/recognize"]["post"]
    top_k = next(p for p in post["parameters"] if p["name"] == "top_k")["schema"]
    assert top_k["maximum"] == settings.max_top_k and top_k["minimum"] == 1
    assert f"at least {settings.limits.min_side} px" in post["description"]
    scheme = spec["components"]["securitySchemes"]["ApiKey"]
    assert scheme == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert post["security"] == [{"ApiKey": []}]


def test_tiny_image_is_image_too_small_with_the_limit(client: TestClient) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (10, 40), "red").save(buf, format="PNG")
    r = client.post("/recognize", content=buf.getvalue(),
                    headers={**HEADERS, "Content-Type": "image/png"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "image_too_small"
    assert "16" in r.json()["error"]["message"]


def test_head_on_health_routes(client: TestClient) -> None:
    assert client.head("/healthz").status_code == 200
    assert client.head("/readyz").status_code == 200


# ----------------------------------------------------------------------- 5. auth
def test_the_service_refuses_to_start_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.api import server
    from service.api.settings import get_settings

    for name in list(os.environ):
        if name.startswith("SKU_SERVICE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    with pytest.raises(SettingsError, match="SKU_SERVICE_AUTH=disabled"):
        load_settings(ServiceSettings)
    get_settings.cache_clear()
    try:
        assert server.main(["--port", "1"]) == 2
    finally:
        get_settings.cache_clear()
    assert load_settings(ServiceSettings, auth="disabled").auth == "disabled"


def test_auth_disabled_must_be_explicit_and_is_reported(index: dict) -> None:
    with TestClient(create_app(_settings(index, api_keys=[], auth="disabled"))) as c:
        jpeg = _photo(index)[0]
        assert c.post("/recognize", content=jpeg, headers=JPEG).status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 200 and "disabled" in ready.json()["detail"]["auth"]
        assert "securitySchemes" not in c.get("/openapi.json").json().get("components", {})


def test_keys_rotate_from_a_file_and_carry_their_own_rate(index: dict, tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("first-key-aaaaaaaa\nlimited-key-bbbbbbbb 0.01 2  # two, then 1 per 100 s\n")
    settings = _settings(index, api_keys=[], api_keys_file=keys)
    with TestClient(create_app(settings)) as c:
        def status(key: str) -> int:
            return c.get("/skus/none/thumbnail", headers={"X-API-Key": key}).status_code

        assert status("first-key-aaaaaaaa") == 404  # past auth: the SKU has no thumbnail
        assert status("second-key-cccccccc") == 403
        assert [status("limited-key-bbbbbbbb") for _ in range(3)] == [404, 404, 429]
        r = c.get("/skus/none/thumbnail", headers={"X-API-Key": "limited-key-bbbbbbbb"})
        assert r.json()["error"]["code"] == "rate_limited" and int(r.headers["Retry-After"]) > 0
        keys.write_text("second-key-cccccccc\n")
        _wait(lambda: status("second-key-cccccccc") == 404)
        assert status("first-key-aaaaaaaa") == 403


# ----------------------------------------------------------------------- 7. leaks, docs
def test_unavailable_answers_say_what_not_where(
    small_artifact: Path, demo_catalog: Path, tmp_path: Path
) -> None:
    with demo_index(small_artifact, demo_catalog, tmp_path) as server:
        settings = service_settings(server.url, tmp_path, small_artifact)
        jpeg = _photo({"catalog": demo_catalog})[0]
        port = str(server.port)
        with TestClient(create_app(settings)) as c:
            assert c.post("/recognize", content=jpeg, headers={**HEADERS, **JPEG}).status_code == 200
            server.stop()
            r = c.post("/recognize", content=jpeg, headers={**HEADERS, **JPEG})
            ready = c.get("/readyz")
    assert r.status_code == 503 and ready.status_code == 503
    for text in (r.text, ready.text):
        assert port not in text and "127.0.0.1" not in text and "Error" not in text
    assert "Redis" in r.json()["error"]["message"]


def test_docs_and_metrics_are_configurable(index: dict) -> None:
    settings = _settings(index, docs_enabled=False, metrics_require_key=True)
    with TestClient(create_app(settings)) as c:
        assert c.get("/docs").status_code == 404 and c.get("/openapi.json").status_code == 404
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=HEADERS).status_code == 200


# ----------------------------------------------------------------------- Redis timeouts
def test_frozen_redis_gives_503_not_a_hang(
    small_artifact: Path, demo_catalog: Path, tmp_path: Path
) -> None:
    with demo_index(small_artifact, demo_catalog, tmp_path) as server:
        settings = service_settings(server.url, tmp_path, small_artifact, index_poll_s=0.5)
        jpeg = _photo({"catalog": demo_catalog})[0]
        assert server.proc is not None
        with TestClient(create_app(settings)) as c:
            assert c.post("/recognize", content=jpeg, headers={**HEADERS, **JPEG}).status_code == 200
            os.kill(server.proc.pid, signal.SIGSTOP)
            try:
                r = c.post("/recognize", content=jpeg, headers={**HEADERS, **JPEG})
                assert r.status_code == 503 and r.headers["Retry-After"], r.text
                assert c.get("/readyz").status_code == 503
            finally:
                os.kill(server.proc.pid, signal.SIGCONT)
            _wait(lambda: c.post("/recognize", content=jpeg,
                                 headers={**HEADERS, **JPEG}).status_code == 200)

