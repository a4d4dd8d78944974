"""sku-index and the service on a real 3-master Redis Cluster (three cluster-enabled
redis-servers joined by ``redis-cli --cluster create``): build, publish, update, rollback, gc and
verify across every master, and the service reading SKU metadata in one round trip per node."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from index_builder_support import export_tiny_artifact, make_catalog, sku_row, write_manifest
from service_support import HEADERS, service_settings

from index_builder.cli import main
from index_builder.redis_writer import write_records
from service.redis_cluster import PrivateRedisCluster, cluster_support, node_clients, scan_keys
from service.redis_server import RedisUnavailable, connect
from service.store import SkuStore
from service.vector_index import ROWS_FILE

SKUS = [f"C-{i:03d}" for i in range(30)]  # enough that every master holds some of a version


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateRedisCluster]:
    why = cluster_support()
    if why:
        pytest.skip(f"no local Redis Cluster possible: {why}")
    try:
        c = PrivateRedisCluster(masters=3).start()
    except RedisUnavailable as exc:
        if "cluster" in str(exc).lower():  # e.g. a redis-server built without cluster support
            pytest.skip(f"redis-server cannot run a cluster here: {exc}")
        raise
    yield c
    c.stop()


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_artifact(tmp_path_factory.mktemp("art"), SKUS[:10], ["a", "b", "c"])


@pytest.fixture
def store(cluster: PrivateRedisCluster) -> Iterator[SkuStore]:
    client = connect(cluster.url)
    yield SkuStore(client, "sku")
    for node in node_clients(client):
        node.flushall()
    client.close()


@pytest.fixture
def run(cluster: PrivateRedisCluster, artifact: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    base = ["--redis-url", cluster.url, "--index-dir", str(tmp_path / "index"), "--no-progress",
            "--json"]

    def _run(*args: str) -> tuple[int, Any]:
        capsys.readouterr()
        extra = ["--artifact", str(artifact)] if args[0] in ("build", "update") else []
        rc = main([*args, *extra, *base])
        out = capsys.readouterr().out
        return rc, json.loads(out) if out.strip() else None

    return _run


def keys_per_master(store: SkuStore, version: str) -> list[int]:
    pattern = store.keys.version_pattern(version)
    return [sum(1 for _ in node.scan_iter(match=pattern)) for node in node_clients(store.client)]


def test_client_is_a_cluster_client_over_three_masters(store: SkuStore) -> None:
    import redis

    assert isinstance(store.client, redis.RedisCluster)
    assert len(node_clients(store.client)) == 3


def test_build_update_rollback_gc_verify_on_every_master(
        tmp_path: Path, run, store: SkuStore, cluster: PrivateRedisCluster) -> None:  # type: ignore[no-untyped-def]
    catalog, rows = make_catalog(tmp_path / "cat", SKUS, 1)
    rc, rep = run("build", "--catalog", str(catalog), "--keep", "1")
    assert rc == 0, rep
    assert rep["write_method"] == "pipeline"  # redis-cli --pipe is not cluster-aware
    v1 = store.current_version()
    spread = keys_per_master(store, v1)  # type: ignore[arg-type]
    assert sum(spread) == len(SKUS) and all(n > 0 for n in spread), spread
    got = store.get_skus(v1, SKUS, published=True)  # type: ignore[arg-type]
    assert [g["title"] for g in got] == [f"Product {s}" for s in SKUS]  # type: ignore[index]

    # update: COPY of unchanged SKUs is legal on a cluster (same hash tag = same slot)
    delta = write_manifest(tmp_path / "cat" / "delta.jsonl", [
        sku_row(SKUS[0], rows[0]["image"], title="Renamed"), {"op": "delete", "sku_id": SKUS[1]}])
    rc, rep = run("update", "--delta", str(delta), "--keep", "1")
    assert rc == 0 and rep["copied_skus"] == len(SKUS) - 2, rep
    v2 = store.current_version()
    assert store.get_skus(v2, SKUS[:2]) == [  # type: ignore[arg-type]
        store.get_skus(v2, SKUS[:1])[0], None]  # type: ignore[arg-type]
    assert store.get_skus(v2, SKUS[:1])[0]["title"] == "Renamed"  # type: ignore[arg-type,index]
    assert sum(keys_per_master(store, v2)) == len(SKUS) - 1  # type: ignore[arg-type]

    # rollback: WATCH + MULTI/EXEC on the control keys' one slot
    rc, res = run("rollback")
    assert rc == 0 and res == {"from": v2, "to": v1} and store.current_version() == v1
    assert run("rollback", "--to", v2)[0] == 0 and store.current_version() == v2

    # debris of a dead build on every master (registered, never published) + a third version
    store.register_build("dead-build")
    write_records(store.client, cluster.url, store.keys, "dead-build",
                  [store_record(s) for s in SKUS], progress=False)
    assert all(n > 0 for n in keys_per_master(store, "dead-build"))
    rc, rep = run("build", "--catalog", str(catalog), "--force", "--no-gc")
    v3 = store.current_version()
    rc, res = run("gc", "--keep", "1")
    assert rc == 0 and res["deleted_versions"] == sorted(["dead-build", v1]), res
    for gone in ("dead-build", v1):
        assert keys_per_master(store, gone) == [0, 0, 0]  # type: ignore[arg-type]
    assert {store.keys.version_of_key(k) for k in
            scan_keys(store.client, store.keys.all_versions_pattern)} == {v2, v3}

    # verify counts keys on every master: a key deleted on any node is found
    assert run("verify")[0] == 0
    victim = SKUS[-1]
    store.client.delete(store.keys.sku(v3, victim))  # type: ignore[arg-type]
    rc, res = run("verify")
    assert rc == 5 and "1 SKU keys missing" in res["problems"][0], res
    assert f"{len(SKUS) - 1} keys under" in res["problems"][1]


def store_record(sku_id: str):  # type: ignore[no-untyped-def]
    from service.store import SkuRecord

    return SkuRecord(sku_id, title="debris")


def test_metadata_read_is_one_round_trip_per_node(
        tmp_path: Path, run, store: SkuStore, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import redis

    catalog, _ = make_catalog(tmp_path / "cat", SKUS, 1)
    assert run("build", "--catalog", str(catalog))[0] == 0
    version = store.current_version()
    store.get_skus(version, SKUS, published=True)  # type: ignore[arg-type]  # warm: topology
    sends: Counter[int] = Counter()
    real = redis.connection.AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):  # type: ignore[no-untyped-def]
        sends[self.port] += 1
        return real(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    cluster: Any = store.client
    for ids in (SKUS, SKUS[:3]):
        sends.clear()
        got = store.get_skus(version, ids, published=True)  # type: ignore[arg-type]
        assert [g["sku_id"] for g in got] == ids  # type: ignore[index]
        touched = {cluster.get_node_from_key(store.keys.sku(version, s)).port for s in ids}
        touched.add(cluster.get_node_from_key(store.keys.manifest(version)).port)  # type: ignore[arg-type]
        assert dict(sends) == {port: 1 for port in touched}, (dict(sends), touched)


def test_service_answers_from_the_cluster(
        tmp_path: Path, run, store: SkuStore, artifact: Path, cluster: PrivateRedisCluster) -> None:  # type: ignore[no-untyped-def]
    from service.api.app import create_app

    catalog, rows = make_catalog(tmp_path / "cat", SKUS, 1)
    assert run("build", "--catalog", str(catalog), "--version", "cv1")[0] == 0
    by_sku = {r["sku_id"]: r for r in rows}
    settings = service_settings(cluster.url, tmp_path / "index", artifact)
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz").json()
        assert ready["ready"] and ready["index_version"] == "cv1", ready
        for row in rows[:5]:
            data = (tmp_path / "cat" / row["image"]).read_bytes()
            r = client.post("/recognize", files={"image": ("p.png", data, "image/png")},
                            headers=HEADERS)
            assert r.status_code == 200, r.text
            best = r.json()["sku"]
            assert best["title"] == by_sku[best["sku_id"]]["title"]
            assert r.json()["index_version"] == "cv1"
    assert (tmp_path / "index" / "cv1" / ROWS_FILE).is_file()
