"""The learning loop end to end, on real components: the service retains queries (opt-in),
takes feedback into a Redis stream, ``sku-index build --feedback`` turns it into reference rows
that the service then answers from, and ``sku-feedback export`` writes a training manifest."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index_builder import cli as index_cli
from index_builder import feedback_cli
from service.api.app import create_app
from service.api.settings import ServiceSettings
from service.catalog import read_catalog
from service.feedback import FeedbackKeys, key_id
from service.redis_server import PrivateRedisServer, connect
from training.builders import prepare_splits
from training.settings import TrainConfig

KEY_A, KEY_B = "feedback-key-A-0123", "feedback-key-B-0123"
A, B = {"X-API-Key": KEY_A}, {"X-API-Key": KEY_B}


@pytest.fixture(scope="module")
def published(tiny_artifact: Path, demo_catalog: Path, tmp_path_factory) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    index_dir = tmp_path_factory.mktemp("fb-index")
    with PrivateRedisServer() as server:
        info = {"url": server.url, "index_dir": index_dir, "artifact": tiny_artifact,
                "catalog": demo_catalog / "catalog" / "manifest.jsonl"}
        assert _build(info, "v1") == 0
        yield info


def _build(info: dict, version: str, *extra: str) -> int:
    return index_cli.main([
        "build", "--catalog", str(info["catalog"]), "--artifact", str(info["artifact"]),
        "--index-dir", str(info["index_dir"]), "--redis-url", info["url"], "--no-progress",
        "--version", version, *extra,
    ])


def _app(info: dict, **over) -> TestClient:  # type: ignore[no-untyped-def]
    values = dict(redis_url=info["url"], model_dir=info["artifact"], index_dir=info["index_dir"],
                  api_keys=[KEY_A, KEY_B], index_poll_s=0.1, retain_queries=True)
    values.update(over)
    return TestClient(create_app(ServiceSettings(**values)))


@pytest.fixture(scope="module")
def client(published: dict) -> Iterator[TestClient]:
    with _app(published) as c:
        yield c


@pytest.fixture(scope="module")
def redis(published: dict):  # type: ignore[no-untyped-def]
    c = connect(published["url"])
    yield c
    c.close()


def _queries(demo_catalog: Path) -> list[dict]:
    lines = (demo_catalog / "queries" / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _recognize(client: TestClient, demo_catalog: Path, row: dict, rid: str,
               headers: dict) -> dict:
    data = (demo_catalog / "queries" / row["image"]).read_bytes()
    x0, y0, x1, y1 = row["box"]
    r = client.post(f"/recognize?roi={x0},{y0},{x1},{y1}&top_k=5", content=data,
                    headers={**headers, "Content-Type": "image/jpeg", "X-Request-ID": rid})
    assert r.status_code == 200, r.text
    return r.json()


def _feedback(client: TestClient, headers: dict, **body) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    r = client.post("/feedback", json=body, headers=headers)
    return r.status_code, r.json()


def test_retention_off_keeps_nothing(published: dict, demo_catalog: Path, redis) -> None:  # type: ignore[no-untyped-def]
    with _app(published, retain_queries=False) as off:
        body = _recognize(off, demo_catalog, _queries(demo_catalog)[0], "off-1", A)
        assert body["retained"] is False
        assert redis.exists(FeedbackKeys().query("off-1")) == 0
        code, err = _feedback(off, A, request_id="off-1", sku_id=body["sku"]["sku_id"],
                              kind="confirm")
        assert code == 404 and err["error"]["code"] == "query_not_found"


def test_retention_keeps_a_small_crop_and_the_answer_with_a_ttl(
    client: TestClient, demo_catalog: Path, redis  # type: ignore[no-untyped-def]
) -> None:
    body = _recognize(client, demo_catalog, _queries(demo_catalog)[0], "ret-1", A)
    assert body["retained"] is True
    key = FeedbackKeys().query("ret-1")
    h = redis.hgetall(key)
    assert h[b"owner"].decode() == key_id(KEY_A) and KEY_A.encode() not in b"".join(h.values())
    assert b"photo" not in h  # never the full photo unless retain_full_photo
    crop = Image.open(__import__("io").BytesIO(h[b"crop"]))
    assert crop.format == "JPEG" and max(crop.size) <= 256
    answer = json.loads(h[b"answer"])
    assert [c["sku_id"] for c in answer["candidates"]] == [c["sku_id"] for c in body["candidates"]]
    assert answer["index_version"] == body["index_version"] and answer["box"] == body["box"]["pixels"]
    # the model's shortlist for the feedback gate: at most 5 % of the 20 demo SKUs, i.e. its
    # most likely SKU
    assert len(answer["shortlist"]) == 1 and isinstance(answer["shortlist"][0], str)
    assert 7 * 86400 - 60 < redis.ttl(key) <= 7 * 86400
    # another key re-using the request id neither overwrites nor reads it
    again = _recognize(client, demo_catalog, _queries(demo_catalog)[1], "ret-1", B)
    assert again["retained"] is False and redis.hget(key, "owner").decode() == key_id(KEY_A)
    # the TTL ends it: feedback is then refused like for an unknown request
    redis.pexpire(key, 1)
    time.sleep(0.05)
    code, _ = _feedback(client, A, request_id="ret-1", sku_id=body["sku"]["sku_id"],
                        kind="confirm")
    assert code == 404


def test_full_photo_only_when_asked(published: dict, demo_catalog: Path, redis) -> None:  # type: ignore[no-untyped-def]
    with _app(published, retain_full_photo=True, retention_ttl_s=3600) as c:
        _recognize(c, demo_catalog, _queries(demo_catalog)[0], "photo-1", A)
    key = FeedbackKeys().query("photo-1")
    assert redis.hexists(key, "photo") and 3500 < redis.ttl(key) <= 3600


def test_feedback_validation_idempotency_stream_and_metrics(
    client: TestClient, demo_catalog: Path, redis  # type: ignore[no-untyped-def]
) -> None:
    body = _recognize(client, demo_catalog, _queries(demo_catalog)[2], "fb-1", A)
    top1 = body["candidates"][0]["sku_id"]
    second = body["candidates"][1]["sku_id"]
    stream = FeedbackKeys().stream
    n0 = redis.xlen(stream)
    cases = [  # (headers, body, status, error code)
        (B, dict(sku_id=top1, kind="confirm"), 404, "query_not_found"),
        (A, dict(sku_id="no-such-sku", kind="correct"), 422, "unknown_sku"),
        (A, dict(sku_id=second, kind="confirm"), 422, "invalid_feedback"),
        (A, dict(sku_id=second, kind="click", rank=1), 422, "invalid_feedback"),
        (A, dict(sku_id=top1, kind="like"), 422, "invalid_options"),
    ]
    for headers, extra, status, code in cases:
        got, err = _feedback(client, headers, request_id="fb-1", **extra)
        assert (got, err["error"]["code"]) == (status, code), (extra, err)
    assert client.post("/feedback", json={"request_id": "fb-1", "sku_id": top1,
                                          "kind": "confirm"}).status_code == 401
    got, first = _feedback(client, A, request_id="fb-1", sku_id=top1, kind="confirm")
    assert got == 201 and not first["duplicate"] and first["agrees_with_top1"]
    got, again = _feedback(client, A, request_id="fb-1", sku_id=top1, kind="confirm")
    assert got == 200 and again["duplicate"] and again["entry_id"] == first["entry_id"]
    got, err = _feedback(client, A, request_id="fb-1", sku_id=second, kind="correct")
    assert got == 201
    got, err = _feedback(client, A, request_id="fb-1", sku_id=top1, kind="correct")
    assert got == 409 and err["error"]["code"] == "feedback_conflict"
    got, _ = _feedback(client, A, request_id="fb-1", sku_id=second, kind="click", rank=2)
    assert got == 201
    entries = redis.xrange(stream)[n0:]
    assert [(e[b"kind"], e[b"sku_id"].decode()) for _, e in entries] == [
        (b"confirm", top1), (b"correct", second), (b"click", second)]
    assert all(e[b"owner"].decode() == key_id(KEY_A) for _, e in entries)
    metrics = client.get("/metrics").text
    assert 'sku_feedback_total{kind="confirm",result="accepted"} 1.0' in metrics
    assert 'sku_feedback_agreement_total{agrees="no",kind="correct"} 1.0' in metrics
    # deleting: only the owner; it removes the crop and the feedback entries
    assert client.delete("/queries/fb-1", headers=B).status_code == 404
    r = client.delete("/queries/fb-1", headers=A)
    assert r.status_code == 200 and r.json()["feedback_entries_removed"] == 3
    assert redis.exists(FeedbackKeys().query("fb-1")) == 0 and redis.xlen(stream) == n0
    assert client.delete("/queries/fb-1", headers=A).status_code == 404


def test_feedback_is_rate_limited_per_key(published: dict, demo_catalog: Path) -> None:
    # fresh keys: the counters live in Redis, shared by every app of this module
    c_key, d_key = "feedback-key-C-0123", "feedback-key-D-0123"
    C, D = {"X-API-Key": c_key}, {"X-API-Key": d_key}
    with _app(published, feedback_per_minute=2, api_keys=[c_key, d_key]) as c:
        body = _recognize(c, demo_catalog, _queries(demo_catalog)[3], "rl-1", C)
        top1 = body["candidates"][0]["sku_id"]
        codes = [_feedback(c, C, request_id="rl-1", sku_id=top1, kind="confirm")[0]
                 for _ in range(3)]
        assert codes == [201, 200, 429]
        # another key has its own budget (its answer is 404: the query is C's)
        assert _feedback(c, D, request_id="rl-1", sku_id=top1, kind="confirm")[0] == 404
        assert c.delete("/queries/rl-1", headers=C).status_code == 200


def _rows(info: dict, version: str) -> list[dict]:
    lines = (info["index_dir"] / version / "rows.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_build_with_feedback_adds_rows_that_answer_then_leave_with_the_feedback(
    client: TestClient, published: dict, demo_catalog: Path, redis, tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the tiny test model maps many crops within 0.98 of each other: de-duplication (tested in
    # test_feedback_gate.py) would hide which rows the votes let through
    monkeypatch.setenv("SKU_INDEX_FEEDBACK__DEDUP_SIM", "1.5")
    given: dict[str, str] = {}  # request id → the SKU the feedback names
    for i, row in enumerate(_queries(demo_catalog)[4:16]):
        rid = f"loop-{i}"
        body = _recognize(client, demo_catalog, row, rid, A if i % 2 else B)
        names = [c["sku_id"] for c in body["candidates"]]
        if row["sku_id"] not in names:
            continue
        kind = "confirm" if names[0] == row["sku_id"] else "correct"
        code, _ = _feedback(client, A if i % 2 else B, request_id=rid, sku_id=row["sku_id"],
                            kind=kind)
        assert code == 201
        given[rid] = row["sku_id"]
    # a lone `correct` naming a SKU the model never listed: the gate wants a second voter
    body = _recognize(client, demo_catalog, _queries(demo_catalog)[0], "lone", A)
    names = {c["sku_id"] for c in body["candidates"]}
    outsider = next(r["sku_id"] for r in _queries(demo_catalog)
                    if r["sku_id"] not in names and r["sku_id"] not in given.values())
    assert _feedback(client, A, request_id="lone", sku_id=outsider, kind="correct")[0] == 201
    assert given, "no query's true SKU was among its candidates"

    assert _build(published, "v2", "--feedback", "--report", str(tmp_path / "v2.json")) == 0
    notes = " ".join(json.loads((tmp_path / "v2.json").read_text())["notes"])
    assert "'too_few_votes': 1" in notes  # the lone outsider
    fb_rows = [r for r in _rows(published, "v2") if r.get("source") == "feedback"]
    assert {r["request_id"]: r["sku_id"] for r in fb_rows} == given
    catalog_rows = len(read_catalog(published["catalog"]).items)
    assert len(_rows(published, "v2")) == catalog_rows + len(given)
    deadline = time.time() + 10
    while client.get("/readyz").json()["index_version"] != "v2" and time.time() < deadline:
        time.sleep(0.1)
    # the same photos now find their own feedback rows among the neighbours
    rid, sku = next(iter(given.items()))
    row = next(r for i, r in enumerate(_queries(demo_catalog)[4:16]) if f"loop-{i}" == rid)
    after = _recognize(client, demo_catalog, row, "after-1", A)
    assert after["index_version"] == "v2"
    assert sku in {c["sku_id"] for c in after["candidates"] if c["source"] in ("index", "both")}

    # export: the accepted pairs as a training manifest the catalog reader loads
    out = tmp_path / "export"
    assert feedback_cli.main(["export", "--out", str(out), "--catalog", str(published["catalog"]),
                              "--artifact", str(published["artifact"]),
                              "--redis-url", published["url"]]) == 0
    exported = read_catalog(out / "manifest.jsonl", on_error="raise", check_images=True).items
    assert {it.extra["request_id"]: it.sku_id for it in exported} == given
    assert all(Image.open(it.image).format == "JPEG" and it.title for it in exported)
    cfg = TrainConfig(train_manifest=demo_catalog / "train" / "manifest.jsonl",
                      extra_train=[f"{out / 'manifest.jsonl'}:2.5"], heldout_per_class=0)
    base = prepare_splits(cfg.model_copy(update={"extra_train": []}))
    n = len(given)  # weight 2.5: every pair twice, and half of them a third time
    assert len(prepare_splits(cfg).train) - len(base.train) == 2 * n + int(round(0.5 * n))

    # deleted or expired feedback leaves the next version
    first, *rest = sorted(given)
    assert client.delete(f"/queries/{first}", headers=A if int(first[5:]) % 2 else B).json()["deleted"]
    for rid in rest:
        redis.pexpire(FeedbackKeys().query(rid), 1)
    time.sleep(0.05)
    assert _build(published, "v3", "--feedback") == 0
    assert not [r for r in _rows(published, "v3") if r.get("source") == "feedback"]


def test_pseudo_labels_add_confident_unlabelled_queries_and_stay_out_of_the_export(
    client: TestClient, published: dict, demo_catalog: Path, redis, tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from service.feedback import FeedbackLog
    from service.feedback_gate import pseudo_label

    monkeypatch.setenv("SKU_INDEX_FEEDBACK__DEDUP_SIM", "1.5")  # as above: see every row
    # The tiny test model (a 4-epoch four-conv CNN) answers with fused top-1 scores of about
    # 0.25-0.5, right at the policy's default 0.5, so which queries count as confident would
    # follow the last digits of its training; the rule is under test here, not the threshold.
    min_score = 0.35
    monkeypatch.setenv("SKU_INDEX_FEEDBACK__PSEUDO_MIN_SCORE", str(min_score))
    flog = FeedbackLog(redis)
    for i, row in enumerate(_queries(demo_catalog)[:12]):
        _recognize(client, demo_catalog, row, f"pl-{i}", A)
    top1 = flog.get("pl-0")
    assert top1 is not None and top1.top1
    # a query with feedback is the gate's to judge, never a pseudo-label
    assert _feedback(client, A, request_id="pl-0", sku_id=top1.top1, kind="confirm")[0] == 201
    ids = sorted(flog.retained_ids())
    retained = {rid: q for rid, q in zip(ids, flog.get_many(ids), strict=True) if q is not None}
    confident = {rid: pseudo_label(q.answer, min_score) for rid, q in retained.items()
                 if not q.feedback}
    confident = {rid: sku for rid, sku in confident.items() if sku is not None}
    assert confident, "no confident answer among the retained queries"

    report = tmp_path / "pl.json"
    assert _build(published, "pl1", "--pseudo-labels", "--report", str(report)) == 0
    rows = _rows(published, "pl1")
    pseudo = {r["request_id"]: r["sku_id"] for r in rows if r.get("source") == "pseudo_label"}
    # each one a confident answer's top-1 (those not nearest to a catalog row of that SKU are
    # dropped: the index-consistency rule), the confirmed query a feedback row, not a pseudo one
    assert pseudo and set(pseudo.items()) <= set(confident.items())
    assert "pl-0" not in pseudo
    assert [r["sku_id"] for r in rows if r.get("request_id") == "pl-0"] == [top1.top1]
    notes = " ".join(json.loads(report.read_text())["notes"])
    assert f"pseudo-labels: {len(confident)} confident unlabelled queries" in notes
    assert f"{len(pseudo)} accepted" in notes
    # off by default: the same night without the flag has no pseudo-labelled row
    assert _build(published, "pl2", "--feedback") == 0
    assert not [r for r in _rows(published, "pl2") if r.get("source") == "pseudo_label"]
    # and the weekly export holds the users' labels only
    monkeypatch.setenv("SKU_INDEX_FEEDBACK__PSEUDO_LABELS", "true")
    out = tmp_path / "export"
    assert feedback_cli.main(["export", "--out", str(out), "--catalog", str(published["catalog"]),
                              "--artifact", str(published["artifact"]),
                              "--redis-url", published["url"]]) == 0
    exported = read_catalog(out / "manifest.jsonl", on_error="raise").items
    assert {it.extra["request_id"] for it in exported} == {"pl-0"}
