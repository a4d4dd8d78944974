"""The FAISS index of one version: float index, the binary (Hamming) scheme, the row map.

Files of a version folder (the index builder writes them, the service loads them)::

    embeddings.npy      (N, d) float32, L2-normalised; row i = line i of rows.jsonl.  Used for
                        the binary scheme's re-rank, for exact search and by `update` to reuse
                        unchanged embeddings instead of re-embedding the catalog
    float.faiss         float index from a FAISS factory string, inner product
                        ("Flat" exact, "HNSW32", "IVF{nlist},Flat" with nlist chosen from N...)
    binary.faiss        optional IndexBinaryFlat / IndexBinaryHNSW / IndexBinaryIVF over codes
    binary_codec.npz    mean (d,) and projection (d, nbits): code = sign((x - mean) @ projection)
    index_spec.json     the :class:`IndexSpec` it was built with
    rows.jsonl          row → catalog item (sku_id, image, box, title, tags, category), in row
                        order (see :class:`RowMap`)

The binary scheme follows "Visual Search at Alibaba": a (random or ITQ-learned) rotation and
the sign give compact codes searched by Hamming distance; the top ``rerank`` candidates are
re-ranked with the float vectors, so scores are always inner products.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.artifact import sha256_file

EMBEDDINGS_FILE = "embeddings.npy"
FLOAT_INDEX_FILE = "float.faiss"
BINARY_INDEX_FILE = "binary.faiss"
BINARY_CODEC_FILE = "binary_codec.npz"
SPEC_FILE = "index_spec.json"
ROWS_FILE = "rows.jsonl"
SearchMode = Literal["float", "binary", "exact"]
# faiss 1.15 switches batched flat search to BLAS only from 128k queries (MEASUREMENTS.md:
# ~10x slower batched search); 20 is the value that fixed it there.
BLAS_THRESHOLD = 20


def configure_faiss() -> Any:
    import faiss

    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    return faiss


class BinarySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["none", "flat", "hnsw", "ivf"] = Field("flat", description="Hamming index type")
    nbits: int = Field(256, ge=8, le=4096, description="code length; a multiple of 8")
    rotation: Literal["random", "itq"] = Field("itq", description="random or learned (ITQ)")
    itq_iterations: int = Field(50, ge=0, le=500)
    hnsw_m: int = Field(32, ge=4, le=256)
    hnsw_ef_search: int = Field(128, ge=1)
    nlist: int = Field(0, ge=0, description="IVF lists; 0 = about 4*sqrt(N)")
    nprobe: int = Field(16, ge=1)
    rerank: int = Field(100, ge=1, description="Hamming candidates re-ranked with float vectors")

    @field_validator("nbits")
    @classmethod
    def _bytes(cls, v: int) -> int:
        if v % 8:
            raise ValueError("nbits must be a multiple of 8")
        return v


class IndexSpec(BaseModel):
    """Which indexes a version gets and how they are searched."""

    model_config = ConfigDict(extra="forbid")

    float_factory: str = Field(
        "Flat", description="FAISS factory string (inner product); '{nlist}' = about 4*sqrt(N)"
    )
    hnsw_ef_search: int = Field(128, ge=1)
    ivf_nprobe: int = Field(16, ge=1)
    binary: BinarySpec = Field(default_factory=BinarySpec)
    default_search: Literal["float", "binary"] = "float"
    train_sample: int = Field(100_000, ge=1000, description="max vectors to train IVF / ITQ")
    seed: int = 1234


def auto_nlist(n: int) -> int:
    """About 4*sqrt(N) lists, but at least 39 training points per list (FAISS's minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def resolve_factory(factory: str, n: int) -> str:
    return factory.replace("{nlist}", str(auto_nlist(n)))


def _as_f32(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, d) matrix, got shape {x.shape}")
    return x


def _sample(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(x) <= n:
        return np.ascontiguousarray(x)
    rows = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return np.ascontiguousarray(x[rows])


def _set_float_params(index: Any, spec: IndexSpec) -> None:
    faiss = configure_faiss()
    ps = faiss.ParameterSpace()
    for name, value in (("nprobe", spec.ivf_nprobe), ("efSearch", spec.hnsw_ef_search)):
        try:
            ps.set_index_parameter(index, name, value)
        except RuntimeError:  # the parameter does not apply to this index type
            pass


def build_float_index(x: np.ndarray, spec: IndexSpec) -> Any:
    """A FAISS float index (inner product) from ``spec.float_factory``, trained and filled."""
    faiss = configure_faiss()
    x = _as_f32(x)
    factory = resolve_factory(spec.float_factory, len(x))
    try:
        index = faiss.index_factory(x.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"invalid FAISS factory string {factory!r}: {exc}") from None
    if not index.is_trained:
        m = re.search(r"IVF(\d+)", factory)
        if m and int(m.group(1)) > len(x):
            raise ValueError(f"{factory!r} needs at least {m.group(1)} vectors, got {len(x)}: "
                             "use fewer lists or 'IVF{nlist},Flat'")
        index.train(_sample(x, spec.train_sample, spec.seed))
    index.add(x)
    _set_float_params(index, spec)
    return index


@dataclass
class BinaryCodec:
    """code = packbits(sign((x - mean) @ projection)); ``projection`` is (d, nbits)."""

    mean: np.ndarray
    projection: np.ndarray

    @property
    def nbits(self) -> int:
        return int(self.projection.shape[1])

    def encode(self, x: np.ndarray) -> np.ndarray:
        bits = (_as_f32(x) - self.mean) @ self.projection > 0
        return np.packbits(bits, axis=1)

    @classmethod
    def fit(cls, x: np.ndarray, spec: BinarySpec, seed: int = 1234) -> BinaryCodec:
        x = _as_f32(x)
        d, nbits = x.shape[1], spec.nbits
        rng = np.random.default_rng(seed)
        mean = x.mean(axis=0)
        if spec.rotation == "random" or nbits > d:
            # Orthonormal columns when nbits <= d; a Gaussian projection beyond that.
            g = rng.standard_normal((d, nbits))
            proj = np.linalg.qr(g)[0] if nbits <= d else g / np.linalg.norm(g, axis=0)
            return cls(mean.astype(np.float32), proj.astype(np.float32))
        return cls(mean.astype(np.float32), _itq(x - mean, nbits, spec.itq_iterations, rng))

    def save(self, path: str | os.PathLike[str]) -> None:
        with open(path, "wb") as fh:
            np.savez(fh, mean=self.mean, projection=self.projection)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BinaryCodec:
        with np.load(path) as z:
            return cls(z["mean"].astype(np.float32), z["projection"].astype(np.float32))


def _itq(xc: np.ndarray, nbits: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """PCA to ``nbits`` then ITQ (Gong & Lazebnik 2011): alternate B = sign(VR) and the
    orthogonal Procrustes solution for R."""
    cov = (xc.T @ xc).astype(np.float64) / len(xc)
    w, vecs = np.linalg.eigh(cov)
    pca = vecs[:, np.argsort(w)[::-1][:nbits]]
    v = xc @ pca
    r = np.linalg.qr(rng.standard_normal((nbits, nbits)))[0]
    for _ in range(iterations):
        b = np.where(v @ r >= 0, 1.0, -1.0)
        u, _, wt = np.linalg.svd(b.T @ v)
        r = (u @ wt).T
    return (pca @ r).astype(np.float32)


def build_binary_index(codes: np.ndarray, spec: BinarySpec, seed: int = 1234) -> Any:
    faiss = configure_faiss()
    n, nbytes = codes.shape
    nbits = nbytes * 8
    if spec.kind == "flat":
        index = faiss.IndexBinaryFlat(nbits)
    elif spec.kind == "hnsw":
        index = faiss.IndexBinaryHNSW(nbits, spec.hnsw_m)
    elif spec.kind == "ivf":
        nlist = spec.nlist or auto_nlist(n)
        if nlist > n:
            raise ValueError(f"binary IVF with {nlist} lists needs at least {nlist} vectors")
        index = faiss.index_binary_factory(nbits, f"BIVF{nlist}")
        index.train(_sample(codes, max(nlist * 39, 10_000), seed))
    else:
        raise ValueError(f"no binary index for kind {spec.kind!r}")
    index.add(np.ascontiguousarray(codes))
    _set_binary_params(index, spec)
    return index


def _set_binary_params(index: Any, spec: BinarySpec) -> None:
    if hasattr(index, "nprobe"):
        index.nprobe = spec.nprobe
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = spec.hnsw_ef_search


def exact_search(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k (the ground truth for recall)."""
    faiss = configure_faiss()
    d, i = faiss.knn(_as_f32(queries), _as_f32(x), min(k, len(x)), metric=faiss.METRIC_INNER_PRODUCT)
    return _pad(d, i, k)


def _pad(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if rows.shape[1] >= k:
        return scores[:, :k].astype(np.float32), rows[:, :k].astype(np.int64)
    extra = k - rows.shape[1]
    scores = np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf)
    rows = np.pad(rows, ((0, 0), (0, extra)), constant_values=-1)
    return scores.astype(np.float32), rows.astype(np.int64)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of the true top-k rows found in the returned top-k."""
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist()) - {-1}) for f, t in zip(found, truth)]
    return float(np.mean(hits)) / k if hits else 0.0


def rerank(
    x: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score ``candidates`` (n, R; -1 = none) by inner product with the float vectors."""
    valid = candidates >= 0
    vecs = np.asarray(x[np.where(valid, candidates, 0).ravel()], dtype=np.float32)
    scores = np.einsum("nrd,nd->nr", vecs.reshape(*candidates.shape, -1), queries)
    scores[~valid] = -np.inf
    kk = min(k, candidates.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
    rows = np.take_along_axis(candidates, top, axis=1)
    out_scores = np.take_along_axis(scores, top, axis=1)
    rows[~np.isfinite(out_scores)] = -1
    return _pad(out_scores, rows, k)


class VectorIndex:
    """The float index, the optional binary index + codec, and the float vectors."""

    def __init__(self, embeddings: np.ndarray, float_index: Any, spec: IndexSpec,
                 binary_index: Any = None, codec: BinaryCodec | None = None) -> None:
        self.embeddings = embeddings
        self.float_index = float_index
        self.binary_index = binary_index
        self.codec = codec
        self.spec = spec

    @property
    def ntotal(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @classmethod
    def build(cls, embeddings: np.ndarray, spec: IndexSpec) -> VectorIndex:
        x = _as_f32(embeddings)
        float_index = build_float_index(x, spec)
        binary_index = codec = None
        if spec.binary.kind != "none":
            codec = BinaryCodec.fit(_sample(x, spec.train_sample, spec.seed), spec.binary, spec.seed)
            binary_index = build_binary_index(codec.encode(x), spec.binary, spec.seed)
        return cls(x, float_index, spec, binary_index, codec)

    def search(self, queries: np.ndarray, k: int,
               mode: SearchMode | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows for each query: ``(scores, rows)``, both (n, k); scores are inner
        products (cosine for normalised vectors), rows -1 where fewer than k exist."""
        if k < 1:
            raise ValueError("k must be >= 1")
        q = _as_f32(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, the index {self.dim}")
        mode = mode or self.spec.default_search
        if mode == "exact":
            return exact_search(self.embeddings, q, k)
        if mode == "binary":
            if self.binary_index is None or self.codec is None:
                raise ValueError("this index was built without a binary index")
            r = max(k, self.spec.binary.rerank)
            _, cand = self.binary_index.search(self.codec.encode(q), min(r, self.ntotal))
            return rerank(self.embeddings, q, cand, k)
        scores, rows = self.float_index.search(q, min(k, self.ntotal))
        return _pad(scores, rows, k)

    def save(self, folder: str | os.PathLike[str]) -> list[str]:
        """Write the index files into ``folder``; returns their names."""
        faiss = configure_faiss()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / EMBEDDINGS_FILE, np.asarray(self.embeddings, dtype=np.float32))
        faiss.write_index(self.float_index, str(folder / FLOAT_INDEX_FILE))
        names = [EMBEDDINGS_FILE, FLOAT_INDEX_FILE, SPEC_FILE]
        (folder / SPEC_FILE).write_text(self.spec.model_dump_json(indent=2))
        if self.binary_index is not None and self.codec is not None:
            faiss.write_index_binary(self.binary_index, str(folder / BINARY_INDEX_FILE))
            self.codec.save(folder / BINARY_CODEC_FILE)
            names += [BINARY_INDEX_FILE, BINARY_CODEC_FILE]
        return names

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, mmap: bool = True) -> VectorIndex:
        """Load a version folder; ``mmap`` maps embeddings.npy instead of reading it."""
        faiss = configure_faiss()
        folder = Path(folder)
        spec = IndexSpec.model_validate_json((folder / SPEC_FILE).read_text())
        emb = np.load(folder / EMBEDDINGS_FILE, mmap_mode="r" if mmap else None)
        float_index = faiss.read_index(str(folder / FLOAT_INDEX_FILE))
        _set_float_params(float_index, spec)
        binary_index = codec = None
        if (folder / BINARY_INDEX_FILE).is_file():
            binary_index = faiss.read_index_binary(str(folder / BINARY_INDEX_FILE))
            _set_binary_params(binary_index, spec.binary)
            codec = BinaryCodec.load(folder / BINARY_CODEC_FILE)
        if float_index.ntotal != len(emb):
            raise ValueError(f"{folder}: float index has {float_index.ntotal} rows, "
                             f"embeddings {len(emb)}")
        return cls(emb, float_index, spec, binary_index, codec)


@dataclass
class RowMap:
    """Row → SKU: parallel lists, row i of the index is ``sku_ids[i]`` seen in ``images[i]``."""

    sku_ids: list[str]
    images: list[str]
    categories: list[str]

    def __len__(self) -> int:
        return len(self.sku_ids)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> RowMap:
        sku_ids, images, categories = [], [], []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                obj = json.loads(line)
                sku_ids.append(obj["sku_id"])
                images.append(obj["image"])
                categories.append(obj.get("category", ""))
        return cls(sku_ids, images, categories)


def write_rows(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write the row map (one JSON object per row, at least ``sku_id`` and ``image``)."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for obj in rows:
            fh.write(json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n


def file_entries(folder: str | os.PathLike[str], names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``name → {"sha256", "bytes"}`` for the manifest."""
    folder = Path(folder)
    return {n: {"sha256": sha256_file(folder / n), "bytes": (folder / n).stat().st_size}
            for n in sorted(names)}


def load_version_index(folder: str | os.PathLike[str], *, mmap: bool = True
                       ) -> tuple[VectorIndex, RowMap]:
    """What the service loads for a version: the index and its row map, checked to agree."""
    index = VectorIndex.load(folder, mmap=mmap)
    rows = RowMap.read(Path(folder) / ROWS_FILE)
    if len(rows) != index.ntotal:
        raise ValueError(f"{folder}: {len(rows)} rows in {ROWS_FILE}, {index.ntotal} vectors")
    return index, rows
