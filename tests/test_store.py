"""The Redis SKU store against a real redis-server: schema, reads, publish, rollback."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis.crc import key_slot

from index_builder.redis_writer import write_records
from service.store import (
    KeySchema,
    SkuRecord,
    SkuStore,
    StoreError,
    VersionManifest,
    check_version,
    decode_sku_hash,
)


def manifest(version: str, prefix: str, **kw: object) -> VersionManifest:
    data: dict[str, object] = dict(
        version=version, built_at="2024-01-01T00:00:00Z", model_name="m", model_version="m-1",
        embed_dim=4, content_digest="d" * 64, counts={"skus": 2, "images": 2}, files={},
        index_dir=f"/tmp/{version}", key_prefix=prefix)
    data.update(kw)
    return VersionManifest.model_validate(data)


RECORDS = [
    SkuRecord("A-1", "Green tea 500 ml", ("tea", "drink"), "beverages", 3, "/img/a.jpg",
              ("/img/a.jpg", "/img/a2.jpg"), thumb=b"\xff\xd8\xff\x00binary\r\n"),
    SkuRecord("B:{2}", "Ünïcode title *?[", (), "", -1, "https://cdn/x.png", ("https://cdn/x.png",)),
]


@pytest.fixture
def store(redis_client, redis_key_prefix) -> SkuStore:  # type: ignore[no-untyped-def]
    return SkuStore(redis_client, redis_key_prefix)


@pytest.fixture
def write_skus(store: SkuStore, redis_server) -> Callable[[str, list[SkuRecord]], int]:  # type: ignore[no-untyped-def]
    """SKU hashes written by the index builder's own writer (its default method)."""
    def write(version: str, records: list[SkuRecord]) -> int:
        return write_records(store.client, redis_server.url, store.keys, version, records,
                             progress=False).count
    return write


def test_key_schema_and_cluster_slots() -> None:
    keys = KeySchema("sku")
    assert keys.current == "sku:{sku}:current"
    assert keys.sku("v1", "A-1") == "sku:v:v1:sku:{A-1}"
    assert keys.version_of_key(b"sku:v:v1:sku:{A-1}") == "v1"
    assert keys.version_of_key("other:v:v1:sku:{x}") is None
    # control keys share one slot: the publish MULTI/EXEC is legal on a cluster
    slots = {key_slot(k.encode()) for k in (keys.current, keys.history, keys.builds,
                                             keys.lock, keys.manifest("v1"))}
    assert len(slots) == 1
    # one SKU in two versions shares a slot (update's COPY), different SKUs spread
    assert key_slot(keys.sku("v1", "A-1").encode()) == key_slot(keys.sku("v2", "A-1").encode())
    spread = {key_slot(keys.sku("v1", f"S{i}").encode()) for i in range(50)}
    assert len(spread) > 40


@pytest.mark.parametrize("bad", ["", "a:b", "v*", "v?", "v[1]", "x" * 200, "-lead"])
def test_check_version_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        check_version(bad)


def test_write_and_get_skus_round_trip(store: SkuStore, write_skus: Callable[[str, list[SkuRecord]], int]) -> None:
    assert write_skus("v1", RECORDS) == 2
    got = store.get_skus("v1", ["B:{2}", "missing", "A-1"])
    assert got[0] == RECORDS[1].to_dict()
    assert got[1] is None
    assert got[2] == RECORDS[0].to_dict()
    assert got[2]["thumb"] == RECORDS[0].thumb and got[2]["class_index"] == 3
    assert store.get_skus("v1", []) == []
    assert store.get_skus("v2", ["A-1"]) == [None]


def test_get_skus_is_one_round_trip(
    store: SkuStore, monkeypatch: pytest.MonkeyPatch, write_skus: Callable[[str, list[SkuRecord]], int],
) -> None:
    write_skus("v1", RECORDS)
    calls: list[int] = []
    pipeline_cls = type(store.client.pipeline())
    original = pipeline_cls.execute

    def counting(self, *a, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(self.command_stack))
        return original(self, *a, **kw)

    monkeypatch.setattr(pipeline_cls, "execute", counting)
    monkeypatch.setattr(store.client, "execute_command",
                        lambda *a, **k: pytest.fail("a command outside the pipeline"))
    store.get_skus("v1", ["A-1", "B:{2}", "C"])
    assert calls == [3]


def test_decode_accepts_str_replies() -> None:
    raw = {k: v for k, v in RECORDS[1].to_hash().items()}
    assert decode_sku_hash(raw) == RECORDS[1].to_dict()
    assert decode_sku_hash({}) is None


def test_publish_is_atomic_and_sets_history(store: SkuStore, write_skus: Callable[[str, list[SkuRecord]], int]) -> None:
    assert store.current_version() is None and store.current_manifest() is None
    store.register_build("v1")
    write_skus("v1", RECORDS)
    assert store.current_version() is None  # written is not published
    published = store.publish(manifest("v1", store.keys.prefix))
    assert published.published_at
    assert store.current_version() == "v1"
    assert store.get_manifest("v1") == published
    store.publish(manifest("v2", store.keys.prefix))
    store.publish(manifest("v2", store.keys.prefix))  # idempotent
    assert store.history() == ["v2", "v1"]
    assert store.current_manifest().version == "v2"  # type: ignore[union-attr]


def test_rollback_one_step_and_to(store: SkuStore) -> None:
    for v in ("v1", "v2", "v3"):
        store.publish(manifest(v, store.keys.prefix))
    assert store.rollback() == ("v3", "v2")
    assert store.current_version() == "v2"
    assert store.history() == ["v2", "v1"]
    assert store.rollback(to="v3") == ("v2", "v3")  # roll forward again: v3 has its manifest
    assert store.history() == ["v3", "v1"]
    assert store.rollback() == ("v3", "v1")
    with pytest.raises(StoreError):
        store.rollback()
    with pytest.raises(StoreError):
        store.rollback(to="never")


def test_list_versions_states(store: SkuStore) -> None:
    store.register_build("v1")
    store.publish(manifest("v1", store.keys.prefix))
    store.register_build("v2")
    store.publish(manifest("v2", store.keys.prefix))
    store.register_build("v3")  # a build that died
    store.rollback()  # v2 retired
    states = {i.version: i.state for i in store.list_versions()}
    assert states == {"v1": "current", "v2": "retired", "v3": "unfinished"}
    assert [i.version for i in store.list_versions()] == ["v3", "v2", "v1"]
