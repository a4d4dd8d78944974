"""The FAISS wrapper: every index kind against exact search on structured data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.binary_index import BinaryCodec, auto_nlist
from service.vector_index import (
    ROWS_FILE,
    BinarySpec,
    IndexSpec,
    VectorIndex,
    exact_search,
    load_version_index,
    recall_at_k,
    write_rows,
)


def clustered(n: int, d: int = 32, clusters: int = 20, latent: int = 6, seed: int = 0,
              noise: float = 0.05) -> np.ndarray:
    """Points near low-dimensional patches around cluster centres (like product embeddings:
    categories, and within them a few directions of variation), L2-normalised.  The centres
    and patches are fixed; ``seed`` draws the points."""
    shape_rng = np.random.default_rng(12345)
    centres = shape_rng.standard_normal((clusters, d))
    bases = shape_rng.standard_normal((clusters, d, latent)) * 0.35
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, clusters, n)
    x = centres[lab] + np.einsum("ndl,nl->nd", bases[lab], rng.standard_normal((n, latent)))
    x += noise * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, q = clustered(4000), clustered(100, seed=1)
    _, truth = exact_search(x, q, 10)
    return x, q, truth


@pytest.mark.parametrize(("factory", "floor"), [("Flat", 1.0), ("HNSW16", 0.9),
                                                ("IVF{nlist},Flat", 0.8)])
def test_float_recall(data, factory: str, floor: float) -> None:  # type: ignore[no-untyped-def]
    x, q, truth = data
    index = VectorIndex.build(x, IndexSpec(float_factory=factory, ivf_nprobe=8,
                                           binary=BinarySpec(kind="none")))
    scores, rows = index.search(q, 10)
    assert scores.shape == rows.shape == (100, 10)
    assert recall_at_k(rows, truth, 10) >= floor
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
@pytest.mark.parametrize("rotation", ["random", "itq"])
def test_binary_rerank_recall(data, kind: str, rotation: str) -> None:  # type: ignore[no-untyped-def]
    x, q, truth = data
    spec = IndexSpec(binary=BinarySpec(kind=kind, nbits=64, rotation=rotation, rerank=200,
                                       nprobe=8, itq_iterations=20))
    index = VectorIndex.build(x, spec)
    scores, rows = index.search(q, 10, mode="binary")
    # re-ranked with float vectors: scores are the true inner products of the rows returned
    np.testing.assert_allclose(scores, np.einsum("nkd,nd->nk", x[rows], q), atol=1e-5)
    assert recall_at_k(rows, truth, 10) >= 0.7


def test_itq_quantises_better_than_random(data) -> None:  # type: ignore[no-untyped-def]
    x = data[0]

    def loss(codec: BinaryCodec) -> float:
        v = (x - codec.mean) @ codec.projection
        return float(np.mean((np.sign(v) - v / np.abs(v).mean()) ** 2))

    itq = BinaryCodec.fit(x, BinarySpec(nbits=32, rotation="itq", itq_iterations=30))
    rnd = BinaryCodec.fit(x, BinarySpec(nbits=32, rotation="random"))
    assert itq.encode(x[:5]).shape == (5, 4) and itq.encode(x[:5]).dtype == np.uint8
    assert loss(itq) < loss(rnd)


def test_every_vector_is_its_own_nearest_neighbour(data) -> None:  # type: ignore[no-untyped-def]
    x = data[0][:500]
    index = VectorIndex.build(x, IndexSpec(float_factory="HNSW16",
                                           binary=BinarySpec(kind="hnsw", nbits=64)))
    for mode in ("float", "binary", "exact"):
        _, rows = index.search(x, 1, mode=mode)  # type: ignore[arg-type]
        assert (rows[:, 0] == np.arange(len(x))).mean() > 0.99, mode


def test_k_larger_than_index_pads(data) -> None:  # type: ignore[no-untyped-def]
    x = data[0][:5]
    index = VectorIndex.build(x, IndexSpec(binary=BinarySpec(kind="flat", nbits=16)))
    for mode in ("float", "binary", "exact"):
        scores, rows = index.search(x[:2], 8, mode=mode)  # type: ignore[arg-type]
        assert rows.shape == (2, 8)
        assert sorted(rows[0, :5].tolist()) == list(range(5))
        assert (rows[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()


def test_save_load_round_trip(tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    x, q, _ = data
    spec = IndexSpec(float_factory="IVF{nlist},Flat", binary=BinarySpec(kind="ivf", nbits=64))
    built = VectorIndex.build(x, spec)
    names = built.save(tmp_path)
    write_rows(tmp_path / ROWS_FILE, ({"sku_id": f"S{i // 2}", "image": f"/i/{i}.jpg",
                                       "category": "c"} for i in range(len(x))))
    loaded, rows = load_version_index(tmp_path)
    assert set(names) <= {p.name for p in tmp_path.iterdir()}
    assert rows.sku_ids[3] == "S1" and rows.images[3] == "/i/3.jpg" and len(rows) == len(x)
    assert isinstance(loaded.embeddings, np.memmap)
    for mode in ("float", "binary"):
        a, b = built.search(q, 10, mode=mode), loaded.search(q, 10, mode=mode)  # type: ignore[arg-type]
        np.testing.assert_array_equal(a[1], b[1])
    assert json.loads((tmp_path / "index_spec.json").read_text())["float_factory"] == \
        "IVF{nlist},Flat"


def test_row_map_mismatch_is_an_error(tmp_path: Path, data) -> None:  # type: ignore[no-untyped-def]
    VectorIndex.build(data[0][:10], IndexSpec(binary=BinarySpec(kind="none"))).save(tmp_path)
    write_rows(tmp_path / ROWS_FILE, [{"sku_id": "a", "image": "x"}])
    with pytest.raises(ValueError, match="rows"):
        load_version_index(tmp_path)


def test_bad_inputs() -> None:
    x = clustered(50)
    with pytest.raises(ValueError, match="factory"):
        VectorIndex.build(x, IndexSpec(float_factory="NoSuchIndex"))
    with pytest.raises(ValueError, match="at least"):
        VectorIndex.build(x, IndexSpec(float_factory="IVF100,Flat"))
    index = VectorIndex.build(x, IndexSpec(binary=BinarySpec(kind="none")))
    with pytest.raises(ValueError, match="binary"):
        index.search(x[:1], 1, mode="binary")
    with pytest.raises(ValueError, match="dimension"):
        index.search(np.zeros((1, 3), np.float32), 1)
    with pytest.raises(ValueError):
        BinarySpec(nbits=12)
    assert auto_nlist(100) == 2 and auto_nlist(1_000_000) == 4000


def test_compressed_family_reranks_from_memory_mapped_float16(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """IVF + HNSW quantizer over 4-bit PQ codes, top candidates re-scored from a float16
    embeddings.npy that the loaded index memory-maps (the large-catalog family)."""
    x, q, truth = data
    spec = IndexSpec(float_factory="IVF32_HNSW16,PQ16x4fs", ivf_nprobe=8, float_rerank=100,
                     vectors_dtype="float16", binary=BinarySpec(kind="none"))
    built = VectorIndex.build(x, spec)
    no_rerank = VectorIndex(built.embeddings, built.float_index,
                            spec.model_copy(update={"float_rerank": 0}))
    built.save(tmp_path)
    stored = np.load(tmp_path / "embeddings.npy", mmap_mode="r")
    assert stored.dtype == np.float16 and stored.shape == x.shape
    loaded = VectorIndex.load(tmp_path)
    assert isinstance(loaded.embeddings, np.memmap)
    scores, rows = loaded.search(q, 10)
    # re-ranked scores are the (float16-rounded) inner products of the returned rows
    want = np.einsum("nkd,nd->nk", stored[rows].astype(np.float32), q)
    np.testing.assert_allclose(scores, want, atol=1e-5)
    reranked = recall_at_k(rows, truth, 10)
    pq_only = recall_at_k(no_rerank.search(q, 10)[1], truth, 10)
    assert reranked >= 0.9 and reranked > pq_only


def test_two_level_ivf_training_fills_the_quantizer(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The >2M family's coarse centroids come from two-level k-means (8 × 8 → 64 lists here);
    the PQ is then trained on that quantizer and the version saves and loads as usual."""
    import faiss

    x, q, truth = data
    spec = IndexSpec(float_factory="IVF64_HNSW16,PQ16x4fs", ivf_nprobe=16, float_rerank=100,
                     ivf_training="two_level", binary=BinarySpec(kind="none"))
    built = VectorIndex.build(x, spec)
    ivf = faiss.extract_index_ivf(built.float_index)
    assert ivf.quantizer.ntotal == ivf.nlist == 64 and built.float_index.ntotal == len(x)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(64)])
    assert sizes.sum() == len(x) and (sizes > 0).sum() >= 48  # the lists are used
    built.save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    assert loaded.spec.ivf_training == "two_level"
    assert recall_at_k(loaded.search(q, 10)[1], truth, 10) >= 0.9
    with pytest.raises(ValueError, match="training vectors"):  # a sample smaller than nlist
        VectorIndex.build(x, spec.model_copy(update={"float_factory": "IVF2048_HNSW16,PQ16x4fs",
                                                     "train_sample": 1000}))


def test_add_ef_search_puts_every_row_in_its_nearest_list(data) -> None:  # type: ignore[no-untyped-def]
    """With a large enough efSearch while adding, the HNSW quantizer assigns each row to its
    exact nearest centroid; the query-time efSearch is set back afterwards."""
    import faiss

    x, _, _ = data
    spec = IndexSpec(float_factory="IVF256_HNSW8,PQ16x4fs", ivf_add_ef_search=256,
                     hnsw_ef_search=32, binary=BinarySpec(kind="none"))
    index = VectorIndex.build(x, spec).float_index
    ivf = faiss.extract_index_ivf(index)
    quantizer = faiss.downcast_index(ivf.quantizer)
    assert quantizer.hnsw.efSearch == 32
    _, nearest = faiss.knn(x, quantizer.reconstruct_n(0, ivf.nlist), 1,
                           metric=faiss.METRIC_INNER_PRODUCT)
    stored = np.empty(len(x), dtype=np.int64)
    for lst in range(ivf.nlist):
        ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(lst), ivf.invlists.list_size(lst))
        stored[np.asarray(ids)] = lst
    np.testing.assert_array_equal(stored, nearest[:, 0])
    with pytest.raises(ValueError, match="HNSW quantizer"):
        VectorIndex.build(x, spec.model_copy(update={"float_factory": "IVF16,Flat"}))


def test_build_from_a_memory_map_equals_build_from_memory(data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    x, q, _ = data
    np.save(tmp_path / "x.npy", x)
    spec = IndexSpec(float_factory="IVF{nlist},Flat", ivf_nprobe=4)
    a = VectorIndex.build(np.load(tmp_path / "x.npy", mmap_mode="r"), spec)
    b = VectorIndex.build(x, spec)
    for mode in ("float", "binary", "exact"):
        np.testing.assert_array_equal(a.search(q, 10, mode=mode)[1],  # type: ignore[arg-type]
                                      b.search(q, 10, mode=mode)[1])  # type: ignore[arg-type]


def test_exact_search_in_blocks_equals_one_block(data, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import service.vector_index as vi

    x, q, truth = data
    monkeypatch.setattr(vi, "CHUNK_ROWS", 700)  # 4000 rows → 6 blocks merged
    scores, rows = vi.exact_search(x, q, 10)
    np.testing.assert_array_equal(rows, truth)
    np.testing.assert_allclose(scores, np.sort(q @ x.T, axis=1)[:, ::-1][:, :10], atol=1e-5)


@pytest.mark.parametrize("n", [1000, 300_000, 5_000_000])
def test_auto_family_follows_the_measured_thresholds(n: int) -> None:
    from service.index_families import EXACT_MAX_ROWS, MEMORY_MAX_ROWS, family_for
    from service.vector_index import resolve_spec

    spec = resolve_spec(IndexSpec(float_factory="auto"), n)
    fam = family_for(n)
    assert spec.float_factory == fam["float_factory"]
    if n <= EXACT_MAX_ROWS:
        assert spec.float_factory == "Flat" and spec.binary.kind == "flat"
    else:
        assert spec.float_rerank > 0 and spec.binary.kind == "none"
        assert spec.vectors_dtype == ("float16" if n > MEMORY_MAX_ROWS else "float32")
