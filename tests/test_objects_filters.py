"""Issue 12 end to end: every object of the photo in one batched model call, label filters,
and each candidate's matched catalog image; a real redis-server holding an index published by
index_builder, the real ONNX sessions of a trained SICoT artifact and localizer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_support import API_KEY, HEADERS, demo_index, live_server, service_settings

from service.api.app import create_app
from service.artifact import load_artifact
from service.client import SkuClient
from service.client_cli import main as cli_main
from service.label_filter import labels_of
from service.localize import LocalizerConfig, localize_image, main_box_values
from service.preprocess import CROP_MARGIN, crop_rect, preprocess
from service.recognizer import pool_views
from service.redis_server import connect
from service.store import SkuStore
from training.localizer.cli import main as train_localizer

SCORE_THRESHOLD = 0.05  # a localizer trained for seconds: keep its weaker peaks too
SEARCH_K = 5


class RecordingSession:
    """The real ONNX Runtime session, with the input batch of every call recorded."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.batches: list[tuple[int, ...]] = []

    def run(self, output_names: Any, feeds: dict[str, np.ndarray], *args: Any) -> Any:
        self.batches += [tuple(v.shape) for v in feeds.values()]
        return self.session.run(output_names, feeds, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


@pytest.fixture(scope="module")
def localizer(demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("localizer")
    assert train_localizer([
        "--catalog", str(demo_catalog / "catalog" / "manifest.jsonl"), "--out", str(out),
        "--backbone", "tiny_cnn", "--no-pretrained", "--input-size", "64", "--steps", "20",
        "--batch-size", "8", "--val-scenes", "0", "--threads", "1",
    ]) == 0
    return out


@pytest.fixture(scope="module")
def served(small_artifact: Path, localizer: Path, demo_catalog: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    index_dir = tmp_path_factory.mktemp("index")
    with demo_index(small_artifact, demo_catalog, index_dir) as server:
        settings = service_settings(server.url, index_dir, small_artifact,
                                    localizer_dir=localizer, search_k=SEARCH_K,
                                    localizer_score_threshold=SCORE_THRESHOLD)
        app = create_app(settings)
        with TestClient(app) as client:
            yield {"client": client, "app": app, "settings": settings, "url": server.url,
                   "index_dir": index_dir}


def _catalog(demo_catalog: Path, split: str = "catalog") -> list[dict[str, Any]]:
    lines = (demo_catalog / split / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _post(client: TestClient, photo: Path, **params: Any) -> Any:
    return client.post("/recognize", params=params, content=photo.read_bytes(),
                       headers={**HEADERS, "Content-Type": "image/jpeg"})


def _ordered_detections(localizer: Path, photo: Path, n: int, **overrides: Any
                        ) -> list[tuple[np.ndarray, float]]:
    """What the main-box rule orders, computed apart from the service: (detection, score)."""
    art = load_artifact(localizer)
    cfg = LocalizerConfig.from_model_cfg(art.config.model, score_threshold=SCORE_THRESHOLD,
                                         **overrides)
    img = Image.open(photo).convert("RGB")
    dets = localize_image(art, img, cfg)
    values = main_box_values(dets, img.size, size_power=cfg.size_power,
                             center_power=cfg.center_power)
    order = np.argsort(-values, kind="stable")[:n]
    return [(dets.boxes[i], float(dets.scores[i])) for i in order]


def _expected_objects(localizer: Path, photo: Path, n: int, **overrides: Any
                      ) -> list[tuple[list[float], float]]:
    """(crop box, score) of the first ``n`` objects; the test artifact keeps the default crop
    margin (its preprocess.crop_margin)."""
    size = Image.open(photo).size
    return [(list(map(float, crop_rect(det, CROP_MARGIN, size))), score)
            for det, score in _ordered_detections(localizer, photo, n, **overrides)]


def _busy_photo(demo_catalog: Path, localizer: Path) -> Path:
    for row in _catalog(demo_catalog, "queries"):
        photo = demo_catalog / "queries" / row["image"]
        if len(_expected_objects(localizer, photo, 3)) == 3:
            return photo
    raise AssertionError("no query photo with 3 detections")


def test_objects_come_main_first_with_their_boxes_from_one_batched_model_call(
    served: dict[str, Any], demo_catalog: Path, localizer: Path
) -> None:
    photo = _busy_photo(demo_catalog, localizer)
    expected = _expected_objects(localizer, photo, 3)
    state = served["app"].state.service
    sicot, loc = state.recognizer.sicot.model, state.recognizer.localizer.model
    sicot.session, loc.session = RecordingSession(sicot.session), RecordingSession(loc.session)
    try:
        r = _post(served["client"], photo, max_objects=3, top_k=3)
        sicot_batches, loc_batches = sicot.session.batches, loc.session.batches
    finally:
        sicot.session, loc.session = sicot.session.session, loc.session.session
    assert r.status_code == 200, r.text
    body = r.json()
    # every object recognised in one call of the SICoT model, batch = number of objects
    assert [b[0] for b in sicot_batches] == [3] and [b[0] for b in loc_batches] == [1]
    objects = body["objects"]
    assert len(objects) == 3
    for obj, (box, score) in zip(objects, expected, strict=True):
        assert obj["box"]["source"] == "localizer"
        assert obj["box"]["pixels"] == pytest.approx(box, abs=1e-3)
        assert obj["score"] == pytest.approx(score, abs=1e-6) == obj["box"]["score"]
        assert 1 <= len(obj["candidates"]) <= 3
    # the top-level answer is the main object's
    main = objects[0]
    assert body["box"] == main["box"] and body["candidates"] == main["candidates"]
    assert body["sku"] == main["sku"] and body["category"] == main["category"]
    assert body["timings_ms"]["recognize"] > 0
    # default: one object, the same main one
    one = _post(served["client"], photo, top_k=3).json()
    assert len(one["objects"]) == 1 and one["objects"][0]["box"] == main["box"]


def test_an_objects_box_sent_back_as_roi_recognises_that_crop_again(
    served: dict[str, Any], demo_catalog: Path, localizer: Path
) -> None:
    photo = _busy_photo(demo_catalog, localizer)
    second = _post(served["client"], photo, max_objects=3, top_k=3).json()["objects"][1]
    roi = ",".join(str(v) for v in second["box"]["pixels"])
    again = _post(served["client"], photo, roi=roi, top_k=3, max_objects=3).json()
    assert again["box"]["source"] == "roi" and len(again["objects"]) == 1
    assert [c["sku_id"] for c in again["candidates"]] == [c["sku_id"] for c in second["candidates"]]
    assert [c["score"] for c in again["candidates"]] == pytest.approx(
        [c["score"] for c in second["candidates"]], abs=1e-5)


def test_localizer_flip_and_size_power_settings_override_the_artifacts(
    served: dict[str, Any], demo_catalog: Path, localizer: Path
) -> None:
    photo = _busy_photo(demo_catalog, localizer)
    overrides = {"flip": True, "size_power": 0.0}
    expected = _expected_objects(localizer, photo, 3, **overrides)
    assert expected != _expected_objects(localizer, photo, 3)  # the settings change the boxes
    settings = served["settings"].model_copy(
        update={"localizer_flip": True, "localizer_size_power": 0.0})
    with TestClient(create_app(settings)) as client:
        state = client.app.state.service  # type: ignore[attr-defined]
        loc = state.recognizer.localizer.model
        loc.session = RecordingSession(loc.session)
        try:
            body = _post(client, photo, max_objects=3, top_k=3).json()
            loc_batches = loc.session.batches
        finally:
            loc.session = loc.session.session
    assert [b[0] for b in loc_batches] == [2]  # the photo and its mirror in one call
    assert [o["box"]["pixels"] for o in body["objects"]] == \
        [pytest.approx(box, abs=1e-3) for box, _ in expected]
    assert [o["score"] for o in body["objects"]] == \
        [pytest.approx(score, abs=1e-6) for _, score in expected]


@pytest.mark.parametrize("value", [0, 11, "x"])
def test_max_objects_out_of_range_is_422(served: dict[str, Any], demo_catalog: Path,
                                         value: Any) -> None:
    photo = demo_catalog / "catalog" / _catalog(demo_catalog)[0]["image"]
    r = _post(served["client"], photo, max_objects=value)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_options"


def _label_counts(demo_catalog: Path) -> dict[str, set[str]]:
    skus: dict[str, set[str]] = {}
    for row in _catalog(demo_catalog):
        for label in labels_of(row["tags"]):
            skus.setdefault(label, set()).add(row["sku_id"])
    return skus


def test_filter_keeps_only_skus_whose_labels_match(served: dict[str, Any],
                                                    demo_catalog: Path) -> None:
    rows = _catalog(demo_catalog)
    by_label = _label_counts(demo_catalog)
    # a label shared by several SKUs, without spaces (the grammar's values are single words)
    label = max((lab for lab in by_label if " " not in lab), key=lambda lab: len(by_label[lab]))
    other = next(lab for lab in sorted(by_label) if " " not in lab
                 and not by_label[lab] & by_label[label])
    expr = f"{label} OR ({other} AND {other})"
    photo = demo_catalog / "catalog" / rows[0]["image"]
    r = _post(served["client"], photo, filter=expr, top_k=10)
    assert r.status_code == 200, r.text
    body = r.json()
    passing = by_label[label] | by_label[other]
    assert body["candidates"] and {c["sku_id"] for c in body["candidates"]} <= passing
    for c in body["candidates"]:
        assert label in c["labels"] or other in c["labels"]
    assert body["filter"]["expression"] == expr
    assert body["filter"]["skus_passing"] == len(passing)
    unfiltered = _post(served["client"], photo, top_k=10).json()
    assert unfiltered["filter"] is None
    assert {c["sku_id"] for c in unfiltered["candidates"]} - passing  # the filter removed some


def test_selective_filter_searches_deeper_and_flags_fewer_than_top_k(
    served: dict[str, Any], demo_catalog: Path
) -> None:
    rows = _catalog(demo_catalog)
    by_label = _label_counts(demo_catalog)
    label, (sku,) = next((lab, s) for lab, s in sorted(by_label.items())
                         if len(s) == 1 and " " not in lab)
    photo = demo_catalog / "catalog" / next(r for r in rows if r["sku_id"] != sku)["image"]
    body = _post(served["client"], photo, filter=label, top_k=5).json()
    assert [c["sku_id"] for c in body["candidates"]] == [sku]
    assert body["fewer_than_top_k"] and body["objects"][0]["fewer_than_top_k"]
    # one SKU of twenty passes: the whole index is searched, not just search_k neighbours
    assert body["filter"]["skus_passing"] == 1
    assert body["filter"]["search_k"] == len(rows) > SEARCH_K
    none = _post(served["client"], photo, filter="tag=nosuchlabel", top_k=5).json()
    assert none["candidates"] == [] and none["status"] == "no_match" and none["fewer_than_top_k"]
    full = _post(served["client"], photo, top_k=5).json()
    assert len(full["candidates"]) == 5 and not full["fewer_than_top_k"]


@pytest.mark.parametrize(("expr", "position"), [
    ("brand=Flora AND AND size=1", 16),
    ("brand=Flora AND (size=1 OR size=2", 33),
    ("brand", 0),
    ("brand=Flora size=2", 12),
    (" OR ".join(f"k{i}=v" for i in range(21)), 170),
])
def test_invalid_filter_is_422_with_the_position(served: dict[str, Any], demo_catalog: Path,
                                                 expr: str, position: int) -> None:
    photo = demo_catalog / "catalog" / _catalog(demo_catalog)[0]["image"]
    r = served["client"].post("/recognize", data={"filter": expr},
                              files={"image": ("p.jpg", photo.read_bytes(), "image/jpeg")},
                              headers=HEADERS)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_filter" and error["position"] == position
    assert f"position {position}" in error["message"] and error["request_id"]


def test_each_candidate_names_its_nearest_catalog_image(served: dict[str, Any],
                                                        demo_catalog: Path) -> None:
    rows = _catalog(demo_catalog)
    index_rows = [json.loads(line) for line in
                  (served["index_dir"] / "v1" / "rows.jsonl").read_text().splitlines()]
    row = rows[3]
    photo = demo_catalog / "catalog" / row["image"]
    w, h = Image.open(photo).size  # the whole packshot, as the index embedded it
    body = _post(served["client"], photo, top_k=5, roi=f"0,0,{w},{h}").json()
    assert {c["source"] for c in body["candidates"]} <= {"classifier", "index", "both"}
    for c in body["candidates"]:
        match = c["matched_image"]
        assert index_rows[match["row"]]["sku_id"] == c["sku_id"]
        assert index_rows[match["row"]]["image"] == match["image"]
        assert -1.0 <= match["similarity"] <= 1.0 + 1e-5
    # the packshot is in the index: its own row is the nearest image of its SKU, which the
    # index check puts first whatever the classifier says
    top = body["candidates"][0]
    assert top["sku_id"] == row["sku_id"] and top["source"] in ("index", "both")
    assert top["matched_image"]["image"].endswith(row["image"])
    assert top["matched_image"]["similarity"] == pytest.approx(1.0, abs=1e-3)


def test_index_stores_labels_as_key_value_pairs(served: dict[str, Any],
                                                demo_catalog: Path) -> None:
    rows = _catalog(demo_catalog)
    client = connect(served["url"])
    try:
        got = SkuStore(client).get_skus("v1", [rows[0]["sku_id"]])[0]
    finally:
        client.close()
    assert got is not None
    assert got["labels"] == sorted(f"tag={t}" for t in rows[0]["tags"])
    first = json.loads((served["index_dir"] / "v1" / "rows.jsonl").read_text().splitlines()[0])
    assert first["labels"] == sorted(labels_of(first["tags"]))


def test_client_and_cli_pass_filter_and_max_objects(
    served: dict[str, Any], demo_catalog: Path, localizer: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    photo = _busy_photo(demo_catalog, localizer)
    label = next(lab for lab, s in sorted(_label_counts(demo_catalog).items())
                 if len(s) >= 2 and " " not in lab)
    with live_server(create_app(served["settings"])) as (url, _), \
            SkuClient(url, API_KEY) as client:
        answer = client.recognize(photo, top_k=2, max_objects=3, filter=label)
        assert len(answer.objects) == 3 and answer.filter is not None
        assert all(label in c.labels for o in answer.objects for c in o.candidates)
        common = ["--url", url, "--api-key", API_KEY, "--top-k", "2"]
        assert cli_main([str(photo), *common, "--max-objects", "3", "--filter", label]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["PHOTO", "OBJ", "SKU", "TITLE", "SCORE", "BOX"]
        assert [line.split()[1] for line in lines[1:]] == ["1", "2", "3"]
        assert answer.objects[0].sku is None or answer.objects[0].sku.sku_id in lines[1]
        assert cli_main([str(photo), *common, "--filter", "tag=a AND", "--json"]) == 1
        out = json.loads(capsys.readouterr().out)
        assert "invalid_filter" in out["error"] and "position 9" in out["error"]


def test_micro_batching_serves_every_object_of_a_request(
    served: dict[str, Any], demo_catalog: Path, localizer: Path
) -> None:
    photo = _busy_photo(demo_catalog, localizer)
    plain = _post(served["client"], photo, max_objects=3, top_k=3).json()
    settings = served["settings"].model_copy(update={"batching": True})
    with TestClient(create_app(settings)) as client:
        batched = _post(client, photo, max_objects=3, top_k=3).json()
    assert [o["box"] for o in batched["objects"]] == [o["box"] for o in plain["objects"]]
    assert [[c["sku_id"] for c in o["candidates"]] for o in batched["objects"]] == \
        [[c["sku_id"] for c in o["candidates"]] for o in plain["objects"]]


def _post_recording_batches(settings: Any, photo: Path, **params: Any
                            ) -> tuple[dict[str, Any], list[tuple[int, ...]], np.ndarray]:
    """One request to a service made from ``settings``, with the input shape of every call
    of its real SICoT ONNX session recorded: (answer, batch shapes, served embeddings)."""
    with TestClient(create_app(settings)) as client:
        state = client.app.state.service  # type: ignore[attr-defined]
        sicot = state.recognizer.sicot.model
        sicot.session = RecordingSession(sicot.session)
        try:
            body = _post(client, photo, **params).json()
            batches = sicot.session.batches
        finally:
            sicot.session = sicot.session.session
        return body, batches, state.snapshot.embeddings


def test_extra_crop_margins_pool_each_objects_crops_in_the_same_model_call(
    served: dict[str, Any], demo_catalog: Path, localizer: Path
) -> None:
    photo = _busy_photo(demo_catalog, localizer)
    one_view = served["settings"].model_copy(update={"context_below": 0.0})  # no second look
    with TestClient(create_app(one_view)) as client:
        plain = _post(client, photo, max_objects=2, top_k=3).json()
    # an extra margin equal to the crop margin adds nothing: one crop per object, same answer
    same = one_view.model_copy(update={"extra_crop_margins": (CROP_MARGIN,)})
    with TestClient(create_app(same)) as client:
        assert _post(client, photo, max_objects=2, top_k=3).json()["objects"] == plain["objects"]

    settings = one_view.model_copy(update={"extra_crop_margins": (0.3,)})
    body, batches, embeddings = _post_recording_batches(settings, photo, max_objects=2, top_k=3)
    # 2 objects x 2 margins in one call; each object keeps its primary crop as its box
    assert [b[0] for b in batches] == [4]
    assert [o["box"] for o in body["objects"]] == [o["box"] for o in plain["objects"]]
    # the object's embedding is the normalised mean of its two crops' embeddings, computed
    # here apart from the service: each candidate's matched image is scored against it
    art = load_artifact(served["settings"].model_dir)
    img = Image.open(photo).convert("RGB")
    for obj, (det, _) in zip(body["objects"], _ordered_detections(localizer, photo, 2),
                             strict=True):
        crops = [img.crop(crop_rect(det, m, img.size)) for m in (CROP_MARGIN, 0.3)]
        emb = art.model.run(np.stack([preprocess(c, art.preprocess) for c in crops]))["embedding"]
        pooled = emb.mean(0) / np.linalg.norm(emb.mean(0))
        for c in obj["candidates"]:
            match = c["matched_image"]
            assert match["similarity"] == pytest.approx(
                float(embeddings[match["row"]] @ pooled), abs=1e-4)


def test_pool_views_averages_rows_per_object_and_renormalises_the_embedding() -> None:
    out = {"embedding": np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32),
           "sku_logits": np.array([[1.0, 3.0], [3.0, 1.0], [0.0, 5.0]], np.float32)}
    pooled = pool_views(out, np.array([0, 0, 1]), 2)
    s = np.sqrt(0.5)
    assert pooled["embedding"] == pytest.approx(np.array([[s, s], [0.6, 0.8]]), abs=1e-6)
    assert pooled["sku_logits"] == pytest.approx(np.array([[2.0, 2.0], [0.0, 5.0]]))
    assert pool_views(out, np.arange(3), 3) is out  # one crop per object: untouched


def _scored(body: dict[str, Any]) -> tuple[list[str], float]:
    cands = body["candidates"]
    return [c["sku_id"] for c in cands], (cands[0]["score"] if cands else 0.0)


def test_context_view_looks_again_wider_at_unsure_objects_and_keeps_the_surer_answer(
    served: dict[str, Any], demo_catalog: Path, localizer: Path
) -> None:
    photo = _busy_photo(demo_catalog, localizer)
    # a threshold no score is below: never a second look (the context view is off)
    never = served["settings"].model_copy(update={"context_margin": 1.0, "context_below": 0.0})
    with TestClient(create_app(never)) as client:
        plain = _post(client, photo, max_objects=2, top_k=3).json()
        assert "context" not in plain["timings_ms"]

    always = served["settings"].model_copy(update={"context_margin": 1.0, "context_below": 1.0})
    body, batches, _ = _post_recording_batches(always, photo, max_objects=2, top_k=3)
    unsure = [o for o in plain["objects"] if _scored(o)[1] < 1.0]
    assert unsure, "the test photo needs an object the model is not certain of"
    # one batched call for every object, then one for the unsure objects' wider crops
    assert [b[0] for b in batches] == [2, len(unsure)] and body["timings_ms"]["context"] > 0
    size = Image.open(photo).size
    for obj, first, (det, _) in zip(body["objects"], plain["objects"],
                                    _ordered_detections(localizer, photo, 2), strict=True):
        wide = crop_rect(det, 1.0, size)
        # the wider crop recognized on its own: what a client gets sending it back as roi
        again = _post(served["client"], photo, roi=",".join(map(str, wide)), top_k=3).json()
        (ids, score), score_first = _scored(again), _scored(first)[1]
        if obj["box"]["pixels"] == list(map(float, wide)):  # the wider view answered
            assert score > score_first and _scored(obj) == (ids, score)
        else:  # the first view was surer: its answer and box stay
            assert obj == first and score_first >= score
