"""Two service replicas (two real ``sku-serve`` processes) against one Redis and one shared
index volume: both follow every published version; a version that cannot be loaded leaves both
serving the previous one, saying so in /readyz and /metrics, until a loadable one comes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from index_builder_support import export_tiny_artifact, make_catalog
from service_support import API_KEY, HEADERS, build_index

from index_builder import cli as index_cli
from service.redis_server import PrivateRedisServer, connect, free_port
from service.store import SkuStore, VersionManifest
from service.vector_index import ROWS_FILE

SKUS = [f"R-{i:02d}" for i in range(8)]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[dict[str, Any]]:
    artifact = export_tiny_artifact(tmp_path / "art", SKUS, ["a", "b"])
    catalog, rows = make_catalog(tmp_path / "cat", SKUS, 1)
    index_dir = tmp_path / "index"  # the shared volume every replica mounts
    with PrivateRedisServer() as redis:
        build_index(catalog, artifact, index_dir, redis.url, "--version", "v1", "--keep", "5")
        procs, urls = [], []
        for i in range(2):
            port = free_port()
            env = dict(os.environ, REDIS_URL=redis.url, SKU_SERVICE_MODEL_DIR=str(artifact),
                       SKU_SERVICE_INDEX_DIR=str(index_dir),
                       SKU_SERVICE_API_KEYS=f'["{API_KEY}"]', SKU_SERVICE_INDEX_POLL_S="0.2",
                       PYTHONPATH=str(REPO))
            log = open(tmp_path / f"replica{i}.log", "wb")  # noqa: SIM115
            procs.append((subprocess.Popen(
                [sys.executable, "-m", "service.api.server", "--port", str(port),
                 "--log-level", "warning"], env=env, stdout=log, stderr=subprocess.STDOUT),
                log))
            urls.append(f"http://127.0.0.1:{port}")
        try:
            yield {"urls": urls, "url": redis.url, "catalog": catalog, "rows": rows,
                   "artifact": artifact, "index_dir": index_dir, "tmp": tmp_path}
        finally:
            for proc, log in procs:
                proc.terminate()
                proc.wait(30)
                log.close()


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass  # not listening yet
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def ready(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/readyz", timeout=5).json()  # type: ignore[no-any-return]


def answered_version(url: str, image: Path) -> str:
    r = httpx.post(f"{url}/recognize", headers=HEADERS, timeout=30,
                   files={"image": ("p.png", image.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    return str(r.json()["index_version"])


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_two_replicas_switch_versions_and_keep_serving_on_a_bad_one(
        replicas, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    urls, image = replicas["urls"], replicas["tmp"] / "cat" / replicas["rows"][0]["image"]
    for url in urls:
        wait_for(lambda u=url: ready(u).get("index_version") == "v1", f"{url} ready on v1")

    def publish(version: str) -> None:
        build_index(replicas["catalog"], replicas["artifact"], replicas["index_dir"],
                    replicas["url"], "--version", version, "--force", "--keep", "5")

    publish("v2")
    for url in urls:  # both replicas follow the pointer by themselves, no restart
        wait_for(lambda u=url: ready(u)["index_version"] == "v2", f"{url} on v2")
        assert answered_version(url, image) == "v2"
        assert metric(url, "sku_index_behind") == 0

    # v3 is published with a file on the shared volume that does not match its manifest (a
    # partial sync, a bad disk): written up to Redis, corrupted, then published
    monkeypatch.setenv("SKU_INDEX_FAIL_AFTER", "redis")
    assert index_cli.main(["build", "--catalog", str(replicas["catalog"]), "--artifact",
                           str(replicas["artifact"]), "--index-dir", str(replicas["index_dir"]),
                           "--redis-url", replicas["url"], "--no-progress", "--version", "v3",
                           "--force"]) == 1
    monkeypatch.delenv("SKU_INDEX_FAIL_AFTER")
    folder = replicas["index_dir"] / "v3"
    rows_file = folder / ROWS_FILE
    rows_file.write_bytes(rows_file.read_bytes().replace(b"Product", b"Produkt", 1))
    client = connect(replicas["url"])
    SkuStore(client).publish(VersionManifest.model_validate_json(
        (folder / "manifest.json").read_text()))
    client.close()
    for url in urls:  # every replica keeps answering from v2 and says why
        wait_for(lambda u=url: ready(u)["published_index_version"] == "v3", f"{url} sees v3")
        body = httpx.get(f"{url}/readyz", timeout=5)
        assert body.status_code == 200  # still ready: it serves the previous version
        detail = body.json()["detail"]["index"]
        assert "serving v2" in detail and "v3 not loaded" in detail and "sha256" in detail
        assert answered_version(url, image) == "v2"
        assert metric(url, "sku_index_behind") == 1
        assert metric(url, 'sku_index_reloads_total{result="failed"}') >= 1

    publish("v4")
    for url in urls:
        wait_for(lambda u=url: ready(u)["index_version"] == "v4", f"{url} on v4")
        assert "index" not in ready(url)["detail"]
        assert metric(url, "sku_index_behind") == 0
        assert answered_version(url, image) == "v4"
