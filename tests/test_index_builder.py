"""sku-index end to end: real redis-server, real ONNX Runtime, real FAISS, generated catalogs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from index_builder_support import (
    export_tiny_artifact,
    make_catalog,
    sku_row,
    write_image,
    write_manifest,
)

from index_builder.cli import main
from index_builder.delta import read_delta
from index_builder.redis_writer import (
    MassInsertUnavailable,
    WriteError,
    choose_method,
    copy_skus,
    mass_insert,
    redis_cli_command,
    resp_command,
    write_records,
)
from index_builder.settings import IndexBuilderSettings
from service.artifact import load_artifact
from service.imageio import load_image
from service.preprocess import crop_box, preprocess_batch
from service.settings import SettingsError, load_settings
from service.store import SkuRecord, SkuStore
from service.vector_index import EMBEDDINGS_FILE, ROWS_FILE, load_version_index

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def artifact_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conftest's freshly exported tiny SICoT artifact when it exists, else a tiny model."""
    try:
        return Path(request.getfixturevalue("tiny_artifact"))
    except pytest.FixtureLookupError:
        return export_tiny_artifact(tmp_path_factory.mktemp("artifact"),
                                    [f"SKU-{i:03d}" for i in range(6)], ["a", "b", "c"])


@pytest.fixture(scope="session")
def sku_ids(artifact_dir: Path) -> list[str]:
    """Some SKUs the model knows (class_index >= 0) and some it does not (-1)."""
    labels = load_artifact(artifact_dir).config.labels
    known = labels.sku_ids[:4] if labels else []
    return known + [f"NEW-{i}" for i in range(8 - len(known))]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_server, redis_client,  # type: ignore[no-untyped-def]
        redis_key_prefix: str, artifact_dir: Path) -> dict[str, str]:
    values = {
        "REDIS_URL": redis_server.url, "SKU_INDEX_KEY_PREFIX": redis_key_prefix,
        "SKU_INDEX_INDEX_DIR": str(tmp_path / "index"),
        "SKU_INDEX_ARTIFACT_DIR": str(artifact_dir),
        "SKU_INDEX_INDEX__BINARY__NBITS": "32", "SKU_INDEX_INDEX__BINARY__KIND": "hnsw",
        "SKU_INDEX_DECODE_WORKERS": "1", "SKU_INDEX_BATCH_SIZE": "8",
    }
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return values


@pytest.fixture
def store(redis_client, redis_key_prefix: str) -> SkuStore:  # type: ignore[no-untyped-def]
    return SkuStore(redis_client, redis_key_prefix)


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """``run("build", "--catalog", p) -> (exit code, JSON result or None)``."""

    def _run(*args: str) -> tuple[int, Any]:
        capsys.readouterr()
        rc = main([*args, "--no-progress", "--json"])
        out = capsys.readouterr().out
        return rc, json.loads(out) if out.strip() else None

    return _run


def sku_keys(store: SkuStore, version: str) -> list[bytes]:
    return sorted(store.client.scan_iter(match=store.keys.version_pattern(version), count=1000))


def snapshot(store: SkuStore, version: str) -> dict[bytes, dict[bytes, bytes]]:
    return {k: store.client.hgetall(k) for k in sku_keys(store, version)}


def embed_directly(artifact_dir: Path, rows: list[dict[str, Any]]) -> np.ndarray:
    art = load_artifact(artifact_dir)
    imgs = [crop_box(load_image(r["image"]), r.get("box")) for r in rows]
    emb = art.model.run(preprocess_batch(imgs, art.config.preprocess))["embedding"]
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def test_build_then_read_back(tmp_path: Path, env, run, store: SkuStore, sku_ids,  # type: ignore[no-untyped-def]
                              artifact_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKU_INDEX_THUMBNAILS", "true")
    catalog, rows = make_catalog(tmp_path / "cat", sku_ids, images_per_sku=2)
    rc, rep = run("build", "--catalog", str(catalog))
    assert rc == 0 and rep["status"] == "ok", rep
    version = store.current_version()
    assert version == rep["version"]
    man = store.get_manifest(version)
    assert man is not None and man.counts["skus"] == len(sku_ids) and man.counts["images"] == 16
    assert set(man.index["recall_at_10"]) == {"float", "binary"}
    assert man.index["recall_at_10"]["float"] == 1.0  # Flat is exact
    labels = load_artifact(artifact_dir).config.labels
    index_of = labels.index_of() if labels else {}
    got = store.get_skus(version, sku_ids)
    for sku, rec in zip(sku_ids, got, strict=True):
        mine = [r for r in rows if r["sku_id"] == sku]
        assert rec is not None
        assert (rec["title"], rec["tags"], rec["category"]) == \
            (mine[0]["title"], mine[0]["tags"], mine[0]["category"])
        assert rec["images"] == [str(tmp_path / "cat" / r["image"]) for r in mine]
        assert rec["image"] == rec["images"][0]
        assert rec["class_index"] == index_of.get(sku, -1)
        assert rec["thumb"][:2] == b"\xff\xd8"  # a JPEG
    assert any(r["class_index"] >= 0 for r in got) or not index_of
    # every catalog image, embedded independently, finds itself first
    index, rowmap = load_version_index(Path(env["SKU_INDEX_INDEX_DIR"]) / version)
    abs_rows = [dict(r, image=str(tmp_path / "cat" / r["image"])) for r in rows]
    q = embed_directly(artifact_dir, abs_rows)
    for mode in ("float", "binary"):
        _, found = index.search(q, 3, mode=mode)
        assert [rowmap.images[i] for i in found[:, 0]] == [r["image"] for r in abs_rows], mode
    assert run("verify", "--deep")[0] == 0


def test_bad_rows_are_reported_and_skipped(tmp_path: Path, env, run, store: SkuStore,  # type: ignore[no-untyped-def]
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cat"
    good = [sku_row(f"G{i}", str(write_image(root / f"g{i}.png", i))) for i in range(6)]
    (root / "broken.png").write_bytes(b"not an image")
    bad: list[Any] = [
        sku_row("M1", "no/such.png"),                                         # line 7
        sku_row("B1", good[0]["image"], box=[30, 5, 10, 20]),                 # line 8
        sku_row("G1", str(write_image(root / "g1b.png", 77)), title="Other"),  # line 9
        sku_row("O1", good[2]["image"], box=[0, 0, 400, 400]),                # line 10
        sku_row("C1", str(root / "broken.png")),                              # line 11
        "{not json",                                                          # line 12
        sku_row("G3", good[3]["image"]),                                      # line 13
    ]
    catalog = write_manifest(root / "catalog.jsonl", good + bad)
    report_file = tmp_path / "report.json"
    monkeypatch.setenv("SKU_INDEX_MAX_BAD_FRACTION", "0.01")
    rc, rep = run("build", "--catalog", str(catalog))
    assert rc == 3 and store.current_version() is None and rep["status"].startswith("FAILED")
    rc, rep = run("build", "--catalog", str(catalog), "--max-bad-fraction", "0.6",
                  "--report", str(report_file))
    assert rc == 0, rep
    reasons = {b["source"].rsplit(":", 1)[1]: b["reason"]
               for b in json.loads(report_file.read_text())["bad"]}
    assert reasons == {"7": "missing_image", "8": "bad_box", "9": "conflicting_duplicate",
                       "10": "bad_box", "11": "unsupported_image_type", "12": "invalid_json",
                       "13": "duplicate_row"}
    assert rep["failures_by_reason"]["bad_box"] == 2 and rep["skus"] == 6
    recs = store.get_skus(rep["version"], ["G1", "M1", "B1"])
    assert recs[0]["title"] == "Product G1" and recs[0]["images"] == [good[1]["image"]]
    assert recs[1] is None and recs[2] is None


def test_dry_run_writes_nothing(tmp_path: Path, env, run, store: SkuStore, sku_ids) -> None:  # type: ignore[no-untyped-def]
    catalog, _ = make_catalog(tmp_path / "cat", sku_ids, 1)
    with open(catalog, "a") as fh:
        fh.write(json.dumps(sku_row("X", "missing.png")) + "\n")
    rc, rep = run("build", "--catalog", str(catalog), "--dry-run", "--max-bad-fraction", "0.5")
    assert rc == 0 and rep["status"] == "dry-run" and rep["bad_rows"] == 1
    assert rep["skus"] == len(sku_ids)
    assert not Path(env["SKU_INDEX_INDEX_DIR"]).exists()
    assert list(store.client.scan_iter(match=f"{store.keys.prefix}*")) == []
    assert run("build", "--catalog", str(catalog), "--dry-run")[0] == 3


def test_idempotent_rebuild(tmp_path: Path, env, run, store: SkuStore, sku_ids) -> None:  # type: ignore[no-untyped-def]
    catalog, _ = make_catalog(tmp_path / "cat", sku_ids, 2)
    rc, first = run("build", "--catalog", str(catalog))
    rc2, again = run("build", "--catalog", str(catalog))
    assert rc == rc2 == 0 and again["status"] == "unchanged"
    assert again["version"] == first["version"] == store.current_version()
    assert store.history() == [first["version"]]
    rc, forced = run("build", "--catalog", str(catalog), "--force")
    assert rc == 0 and forced["version"] != first["version"]
    a, b = (store.get_manifest(v) for v in (first["version"], forced["version"]))
    assert a.content_digest == b.content_digest  # type: ignore[union-attr]
    assert {k: v.sha256 for k, v in a.files.items()} == \
        {k: v.sha256 for k, v in b.files.items()}  # type: ignore[union-attr]
    sa, sb = snapshot(store, a.version), snapshot(store, b.version)  # type: ignore[union-attr]
    assert list(sa.values()) == list(sb.values()) and len(sa) == len(sku_ids)


def test_update_equals_full_build(tmp_path: Path, env, run, store: SkuStore, sku_ids,  # type: ignore[no-untyped-def]
                                  monkeypatch: pytest.MonkeyPatch, redis_client) -> None:
    monkeypatch.setenv("SKU_INDEX_THUMBNAILS", "true")
    root = tmp_path / "cat"
    catalog, rows = make_catalog(root, sku_ids, 2)
    assert run("build", "--catalog", str(catalog))[0] == 0
    base = store.current_version()
    changed, deleted = sku_ids[1], sku_ids[2]
    new_img = str(write_image(root / "images" / "changed.png", 999))
    upserts = [sku_row(changed, new_img, title="New title"),
               sku_row(changed, rows[2]["image"], title="New title"),
               sku_row("BRAND-NEW", str(write_image(root / "images" / "bn.png", 555)))]
    delta = write_manifest(root / "delta.jsonl", [{**u, "op": "upsert"} for u in upserts[:1]]
                           + upserts[1:] + [{"op": "delete", "sku_id": deleted},
                                            {"op": "delete", "sku_id": "NEVER-EXISTED"}])
    rc, rep = run("update", "--delta", str(delta))
    assert rc == 0, rep
    assert rep["parent_version"] == base and rep["embedded"] == 3 and rep["deleted_skus"] == 1
    assert rep["reused"] == len(rows) - 4 and rep["copied_skus"] == len(sku_ids) - 2
    updated = store.current_version()
    assert store.get_manifest(updated).kind == "update"  # type: ignore[union-attr]
    # the same catalog built from scratch, in another namespace and folder
    full_rows = [r for r in rows if r["sku_id"] not in (changed, deleted)] + upserts
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in full_rows:
        groups.setdefault(r["sku_id"], []).append(r)
    # the order of SKUs in a catalog does not matter (within a SKU, the first image is primary)
    full = write_manifest(root / "full.jsonl", [r for g in list(groups.values())[::-1] for r in g])
    monkeypatch.setenv("SKU_INDEX_KEY_PREFIX", store.keys.prefix + "-full")
    monkeypatch.setenv("SKU_INDEX_INDEX_DIR", str(tmp_path / "index-full"))
    assert run("build", "--catalog", str(full))[0] == 0
    other = SkuStore(redis_client, store.keys.prefix + "-full")
    built = other.current_version()
    m_up, m_full = store.get_manifest(updated), other.get_manifest(built)
    assert m_up.content_digest == m_full.content_digest  # type: ignore[union-attr]
    up_dir = Path(env["SKU_INDEX_INDEX_DIR"]) / updated
    full_dir = tmp_path / "index-full" / built
    assert (up_dir / ROWS_FILE).read_bytes() == (full_dir / ROWS_FILE).read_bytes()
    np.testing.assert_allclose(np.load(up_dir / EMBEDDINGS_FILE),
                               np.load(full_dir / EMBEDDINGS_FILE), atol=1e-5)
    all_ids = sku_ids + ["BRAND-NEW", "NEVER-EXISTED"]
    assert store.get_skus(updated, all_ids) == other.get_skus(built, all_ids)
    assert store.get_skus(updated, [changed])[0]["title"] == "New title"
    assert store.get_skus(updated, [deleted]) == [None]
    assert run("verify", "--deep")[0] == 0


def test_injected_failures_leave_current_untouched(tmp_path: Path, env, run, store: SkuStore,  # type: ignore[no-untyped-def]
                                                   sku_ids, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, _ = make_catalog(tmp_path / "cat", sku_ids, 1)
    assert run("build", "--catalog", str(catalog))[0] == 0
    v1 = store.current_version()
    before = snapshot(store, v1)
    for stage in ("embed", "files", "redis"):
        monkeypatch.setenv("SKU_INDEX_FAIL_AFTER", stage)
        rc, rep = run("build", "--catalog", str(catalog), "--force")
        assert rc == 1 and rep["status"].startswith("FAILED"), stage
        assert store.current_version() == v1 and snapshot(store, v1) == before
    states = {i.version: i.state for i in store.list_versions()}
    assert list(states.values()).count("unfinished") == 1  # only "redis" reached Redis
    index_dir = Path(env["SKU_INDEX_INDEX_DIR"])
    assert len(list(index_dir.iterdir())) == 3  # v1 + two complete-but-unpublished folders
    monkeypatch.delenv("SKU_INDEX_FAIL_AFTER")
    rc, rep = run("build", "--catalog", str(catalog), "--force")
    assert rc == 0 and "gc removed" in " ".join(rep["notes"])
    v2 = store.current_version()
    assert {i.version: i.state for i in store.list_versions()} == {v2: "current",
                                                                     v1: "published"}
    assert sorted(p.name for p in index_dir.iterdir()) == sorted([v1, v2])
    assert {store.keys.version_of_key(k) for k in
            store.client.scan_iter(match=store.keys.all_versions_pattern)} == {v1, v2}


def test_killed_build_is_harmless(tmp_path: Path, env, run, store: SkuStore, sku_ids,  # type: ignore[no-untyped-def]
                                  redis_client) -> None:
    catalog, _ = make_catalog(tmp_path / "cat", sku_ids, 1)
    assert run("build", "--catalog", str(catalog))[0] == 0
    v1 = store.current_version()
    before = snapshot(store, v1)
    child_env = dict(os.environ, SKU_INDEX_FAIL_AFTER="redis", SKU_INDEX_FAIL_HOW="hang",
                     SKU_INDEX_LOCK_TTL_S="1", PYTHONPATH=str(REPO))
    log = open(tmp_path / "child.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "index_builder.cli", "build", "--catalog",
                             str(catalog), "--force", "--no-progress"], cwd=REPO, env=child_env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while b"HANGING" not in (tmp_path / "child.log").read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, \
                (tmp_path / "child.log").read_text()
            time.sleep(0.1)
        proc.kill()  # SIGKILL: no cleanup of any kind
    finally:
        proc.wait()
        log.close()
    debris = [i.version for i in store.list_versions() if i.state == "unfinished"]
    assert len(debris) == 1 and sku_keys(store, debris[0])  # keys written, never published
    assert store.current_version() == v1 and snapshot(store, v1) == before
    deadline = time.monotonic() + 10  # the dead run's lock expires (TTL 1 s)
    while redis_client.exists(store.keys.lock) and time.monotonic() < deadline:
        time.sleep(0.1)
    rc, rep = run("build", "--catalog", str(catalog), "--force")
    assert rc == 0 and store.current_version() not in (v1, debris[0])
    assert sku_keys(store, debris[0]) == []
    assert debris[0] not in {i.version for i in store.list_versions()}


def test_rollback_list_gc_verify(tmp_path: Path, env, run, store: SkuStore, sku_ids,  # type: ignore[no-untyped-def]
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKU_INDEX_KEEP_VERSIONS", "1")
    catalog, _ = make_catalog(tmp_path / "cat", sku_ids, 1)
    versions = []
    for _ in range(3):
        assert run("build", "--catalog", str(catalog), "--force")[0] == 0
        versions.append(store.current_version())
    v1, v2, v3 = versions
    assert store.get_manifest(v1) is None and sku_keys(store, v1) == []  # gc kept 1 + current
    rc, listing = run("list")
    assert [(i["version"], i["state"]) for i in listing] == [(v3, "current"), (v2, "published")]
    before = snapshot(store, v2)
    rc, res = run("rollback")
    assert rc == 0 and res == {"from": v3, "to": v2}
    assert store.current_version() == v2 and snapshot(store, v2) == before
    assert run("rollback")[0] == 7  # nothing older is kept
    assert run("rollback", "--to", v3)[0] == 0 and store.current_version() == v3
    assert run("verify")[0] == 0
    # tampering is caught: a changed file, then a deleted key
    rows_file = Path(env["SKU_INDEX_INDEX_DIR"]) / v3 / ROWS_FILE
    original = rows_file.read_bytes()
    rows_file.write_bytes(original.replace(b"Product", b"Produkt", 1))
    rc, res = run("verify")
    assert rc == 5 and "does not match" in res["problems"][0]
    rows_file.write_bytes(original)
    store.client.delete(store.keys.sku(v3, sku_ids[0]))
    rc, res = run("verify")
    assert rc == 5 and "missing" in res["problems"][0]
    rc, res = run("gc", "--keep", "0", "--dry-run")
    assert rc == 0 and res["deleted_versions"] == [v2] and store.get_manifest(v2) is not None
    assert run("gc", "--keep", "0")[0] == 0 and store.get_manifest(v2) is None


def test_lock_held_and_config_errors(tmp_path: Path, env, run, store: SkuStore, sku_ids,  # type: ignore[no-untyped-def]
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    catalog, _ = make_catalog(tmp_path / "cat", sku_ids, 1)
    store.client.set(store.keys.lock, "someone-else", px=10_000)
    assert run("build", "--catalog", str(catalog))[0] == 6
    store.client.delete(store.keys.lock)
    assert run("update", "--delta", str(catalog))[0] == 7  # nothing to update yet
    assert run("build", "--catalog", str(tmp_path / "missing.jsonl"))[0] == 2
    monkeypatch.setenv("SKU_INDEX_ARTIFACT_DIR", str(tmp_path / "no-artifact"))
    assert run("build", "--catalog", str(catalog))[0] == 2
    monkeypatch.setenv("SKU_INDEX_INDEX__BINARY__NBITS", "12")
    assert run("list")[0] == 2


# --------------------------------------------------------------------------- units
def _records(n: int, thumb_every: int = 3) -> list[SkuRecord]:
    return [SkuRecord(f"S{i}{{x}}", f"Title {i} ü %s %d", ("a", f"t{i}"), f"c{i % 3}", i - 1,
                      f"/img/{i}.jpg", (f"/img/{i}.jpg",),
                      thumb=b"\xff\xd8\r\n$*%d" if i % thumb_every == 0 else None)
            for i in range(n)]


@pytest.mark.parametrize("method", ["mass", "pipeline"])
def test_writers_store_identical_hashes(method: str, store: SkuStore, redis_server) -> None:  # type: ignore[no-untyped-def]
    recs = _records(2500)
    stats = write_records(store.client, redis_server.url, store.keys, "v1", recs, method=method,
                          progress=False)
    assert stats.method == method and stats.count == 2500
    ids = [r.sku_id for r in recs]
    assert store.get_skus("v1", ids) == [r.to_dict() for r in recs]
    copy_skus(store.client, redis_server.url, store.keys, "v1", "v2", ids[:100], method=method)
    assert store.get_skus("v2", ids[:101])[:100] == store.get_skus("v1", ids[:100])
    assert store.get_skus("v2", [ids[100]]) == [None]
    with pytest.raises(WriteError):
        copy_skus(store.client, redis_server.url, store.keys, "v0", "v3", ids[:5], method=method)


def test_mass_insert_reports_server_errors(store: SkuStore, redis_server) -> None:  # type: ignore[no-untyped-def]
    store.client.set("plain-string", "x")
    chunks = [resp_command("HSET", "plain-string", "f", "v"), resp_command("PING")]
    with pytest.raises(WriteError, match="1 errors"):
        mass_insert(redis_server.url, chunks, 2)


def test_redis_cli_arguments(tmp_path: Path) -> None:
    argv, env = redis_cli_command("redis://alice:s%40cret@db.example:6380/3")
    assert argv[1:] == ["--no-auth-warning", "-h", "db.example", "-p", "6380", "-n", "3",
                        "--user", "alice", "--pipe"]
    assert env["REDISCLI_AUTH"] == "s@cret" and "s@cret" not in " ".join(argv)
    argv, env = redis_cli_command("unix:///run/redis.sock?db=2&password=pw")
    assert argv[2:6] == ["-s", "/run/redis.sock", "-n", "2"] and env["REDISCLI_AUTH"] == "pw"
    argv, _ = redis_cli_command("rediss://h:1/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=none")
    assert {"--tls", "--cacert", "/ca.pem", "--insecure"} <= set(argv)
    with pytest.raises(MassInsertUnavailable):
        redis_cli_command("redis://h:1/0", redis_cli=str(tmp_path / "no-redis-cli"))
    assert choose_method("auto", "redis://h:1/0", str(tmp_path / "none")) == "pipeline"


def test_delta_format(tmp_path: Path) -> None:
    img = str(write_image(tmp_path / "a.png", 1))
    path = write_manifest(tmp_path / "d.jsonl", [
        {"op": "upsert", **sku_row("A", img)}, sku_row("B", img),
        {"op": "delete", "sku_id": "C"}, {"op": "delete"}, {"op": "rename", "sku_id": "D"},
        {"op": "delete", "sku_id": "A"}, sku_row("E", "missing.png"),
    ])
    delta = read_delta(path)
    assert [i.sku_id for i in delta.upserts] == ["A", "B"] and delta.deletes == ["C"]
    assert all("op" not in i.extra for i in delta.upserts)
    assert sorted((b.source.rsplit(":", 1)[1], b.reason) for b in delta.bad) == [
        ("4", "missing_sku_id"), ("5", "bad_op"), ("6", "conflicting_ops"),
        ("7", "missing_image")]
    assert delta.rows_read == 7 and delta.touched == {"A", "B", "C"}


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {"REDIS_URL": "redis://r:6379/1", "SKU_INDEX_INDEX__FLOAT_FACTORY": "HNSW32",
                 "SKU_INDEX_INDEX__BINARY__KIND": "ivf", "SKU_INDEX_KEEP_VERSIONS": "5",
                 "SKU_INDEX_IMAGE_LIMITS__MAX_BYTES": "1000"}.items():
        monkeypatch.setenv(k, v)
    s = load_settings(IndexBuilderSettings)
    assert (s.redis_url, s.index.float_factory, s.index.binary.kind, s.keep_versions,
            s.image_limits.max_bytes) == ("redis://r:6379/1", "HNSW32", "ivf", 5, 1000)
    monkeypatch.setenv("SKU_INDEX_REDIS_URL", "http://nope")
    monkeypatch.delenv("REDIS_URL")
    with pytest.raises(SettingsError, match="REDIS_URL"):
        load_settings(IndexBuilderSettings)


def test_build_from_google_csv(tmp_path: Path, env, run, store: SkuStore) -> None:  # type: ignore[no-untyped-def]
    a, b = write_image(tmp_path / "a.png", 1), write_image(tmp_path / "b.png", 2)
    (tmp_path / "cat.csv").write_text(
        f"{a},img-a,set1,P-1,homegoods,Blue mug,\"color=blue,size=m\",\"0,0,0.5,0,0.5,0.5\"\n"
        f"{b},img-b,set1,P-2,toys,Red ball,,\n")
    rc, rep = run("build", "--catalog", str(tmp_path / "cat.csv"))
    assert rc == 0 and rep["skus"] == 2
    mug, ball = store.get_skus(rep["version"], ["P-1", "P-2"])
    assert mug["title"] == "Blue mug" and mug["tags"] == ["color=blue", "size=m"]
    assert ball["category"] == "toys" and ball["image"] == str(b)
