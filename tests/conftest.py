"""Shared fixtures: a real Redis, a generated demo catalog, a freshly exported tiny artifact.

Redis: the tests start their own private ``redis-server`` (no persistence, free loopback port).
To run them against an existing server instead, set ``SKU_TEST_REDIS_URL`` to a URL with a
dedicated db: the tests then write only under a random key prefix and delete only that prefix.
They never read ``REDIS_URL``, so a developer's own database is never touched.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.redis_server import PrivateRedisServer, connect

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKU_SHARED_DIR", REPO_ROOT.parent / "shared"))
EMOJI_DIR = SHARED / "datasets" / "emoji-catalog"


@dataclass
class ExternalRedis:
    url: str
    private: bool = False


@pytest.fixture(scope="session")
def redis_server() -> Iterator[PrivateRedisServer | ExternalRedis]:
    """A real Redis for the whole session: private unless SKU_TEST_REDIS_URL is set."""
    url = os.environ.get("SKU_TEST_REDIS_URL")
    if url:
        yield ExternalRedis(url)
        return
    with PrivateRedisServer() as server:
        yield server


@pytest.fixture
def redis_key_prefix() -> str:
    """A key prefix unique to one test."""
    return f"skutest-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_client(redis_server, redis_key_prefix):  # type: ignore[no-untyped-def]
    """A client on the test server; afterwards the test's keys are deleted (the whole db only
    on a private server, else only the keys under ``redis_key_prefix``)."""
    client = connect(redis_server.url)
    try:
        yield client
    finally:
        if isinstance(redis_server, PrivateRedisServer):
            client.flushdb()
        else:
            for batch in _batched(client.scan_iter(match=f"{redis_key_prefix}*", count=1000)):
                client.unlink(*batch)
        client.close()


def _batched(it, n: int = 500):  # type: ignore[no-untyped-def]
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated 20-SKU demo catalog: catalog/, train/, queries/ with their manifests."""
    from training.demo_catalog import generate_demo_catalog

    out = tmp_path_factory.mktemp("demo-catalog")
    generate_demo_catalog(out, skus=20, seed=0)
    return out


@pytest.fixture(scope="session")
def emoji_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 50-SKU materialization of ../shared's emoji-catalog (skipped when it is absent)."""
    if not (EMOJI_DIR / "materialize.py").is_file():
        pytest.skip(f"emoji-catalog benchmark not found at {EMOJI_DIR} (../shared is absent)")
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("emoji-catalog")
    subprocess.run(
        [sys.executable, str(EMOJI_DIR / "materialize.py"), "--out", str(out), "--skus", "50"],
        check=True,
        capture_output=True,
    )
    return out
