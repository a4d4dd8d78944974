"""The binary half of the index ("Visual Search at Alibaba"): codes, Hamming index, re-rank.

An embedding becomes ``nbits`` bits: ``sign((x - mean) @ projection)``, packed 8 per byte.
``projection`` is random (orthonormal columns) or learned with ITQ (PCA to ``nbits`` then an
iterative rotation that minimises the quantisation error, Gong & Lazebnik 2011).  Codes go
into ``IndexBinaryFlat`` / ``IndexBinaryHNSW`` / ``IndexBinaryIVF``; the ``rerank`` nearest
codes by Hamming distance are then re-scored with the float vectors.

Also the small helpers both index kinds share (faiss tuning, sampling, padding).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from threadpoolctl import threadpool_limits

# faiss 1.15 switches batched flat search to BLAS only from 128k queries (measured here:
# ~10x slower batched search without it); 20 is the value that fixed it there.
BLAS_THRESHOLD = 20


def configure_faiss() -> Any:
    """Import faiss with the BLAS threshold lowered (idempotent)."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
    return faiss


class BinarySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["none", "flat", "hnsw", "ivf"] = Field("flat", description="Hamming index type")
    nbits: int = Field(256, ge=8, le=4096, description="code length; a multiple of 8")
    rotation: Literal["random", "itq"] = Field("itq", description="random or learned (ITQ)")
    itq_iterations: int = Field(50, ge=0, le=500)
    itq_sample: int = Field(20_000, ge=100, description="vectors used to learn the rotation")
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


def auto_nlist(n: int) -> int:
    """About 4*sqrt(N) lists, but at least 39 training points per list (FAISS's minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def as_f32(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, d) matrix, got shape {x.shape}")
    return x


def sample_rows(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` rows of ``x``, drawn without replacement (deterministic for a seed)."""
    if len(x) <= n:
        return np.ascontiguousarray(x)
    rows = np.sort(np.random.default_rng(seed).choice(len(x), n, replace=False))
    return np.ascontiguousarray(x[rows])


def pad_topk(scores: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, k') results → exactly (n, k): extra columns are row -1, score -inf."""
    if rows.shape[1] >= k:
        return scores[:, :k].astype(np.float32), rows[:, :k].astype(np.int64)
    extra = k - rows.shape[1]
    scores = np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf)
    rows = np.pad(rows, ((0, 0), (0, extra)), constant_values=-1)
    return scores.astype(np.float32), rows.astype(np.int64)


@dataclass
class BinaryCodec:
    """code = packbits(sign((x - mean) @ projection)); ``projection`` is (d, nbits)."""

    mean: np.ndarray
    projection: np.ndarray

    @property
    def nbits(self) -> int:
        return int(self.projection.shape[1])

    def encode(self, x: np.ndarray) -> np.ndarray:
        bits = (as_f32(x) - self.mean) @ self.projection > 0
        return np.packbits(bits, axis=1)

    @classmethod
    def fit(cls, x: np.ndarray, spec: BinarySpec, seed: int = 1234) -> BinaryCodec:
        x = as_f32(sample_rows(x, spec.itq_sample, seed))
        d, nbits = x.shape[1], spec.nbits
        rng = np.random.default_rng(seed)
        mean = x.mean(axis=0)
        if spec.rotation == "random" or nbits > d:
            # Orthonormal columns when nbits <= d; a Gaussian projection beyond that (ITQ's
            # PCA cannot give more components than dimensions).
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
    """PCA to ``nbits`` then ITQ: alternate B = sign(VR) and the orthogonal Procrustes
    solution R = argmin ||B - VR|| (SVD of VᵀB)."""
    # nbits x nbits matrices: BLAS threads only add overhead, and under CPU contention
    # OpenBLAS's spinning threads made 50 SVDs of 256x256 take 20 s instead of 0.6 s
    with threadpool_limits(1, user_api="blas"):
        return _itq_single_thread(xc, nbits, iterations, rng)


def _itq_single_thread(
    xc: np.ndarray, nbits: int, iterations: int, rng: np.random.Generator
) -> np.ndarray:
    cov = (xc.T @ xc).astype(np.float64) / len(xc)
    w, vecs = np.linalg.eigh(cov)
    pca = vecs[:, np.argsort(w)[::-1][:nbits]].astype(np.float32)
    v = xc @ pca
    r = np.linalg.qr(rng.standard_normal((nbits, nbits)))[0].astype(np.float32)
    for _ in range(iterations):
        b = np.where(v @ r >= 0, np.float32(1), np.float32(-1))
        u, _, wt = np.linalg.svd(v.T @ b)
        r = (u @ wt).astype(np.float32)
    return (pca @ r).astype(np.float32)


def build_binary_index(codes: np.ndarray, spec: BinarySpec, seed: int = 1234) -> Any:
    """A Hamming index of ``spec.kind`` over packed ``codes`` (n, nbits/8) uint8."""
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
        index.train(sample_rows(codes, max(nlist * 39, 10_000), seed))
    else:
        raise ValueError(f"no binary index for kind {spec.kind!r}")
    index.add(np.ascontiguousarray(codes))
    set_binary_params(index, spec)
    return index


def set_binary_params(index: Any, spec: BinarySpec) -> None:
    if hasattr(index, "nprobe"):
        index.nprobe = spec.nprobe
    if hasattr(index, "hnsw"):
        index.hnsw.efSearch = spec.hnsw_ef_search


def rerank(
    x: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score ``candidates`` (n, R; -1 = none) by inner product with the float rows of ``x``
    (a memory map is fine: only the candidates' rows are read)."""
    valid = candidates >= 0
    vecs = np.asarray(x[np.where(valid, candidates, 0).ravel()], dtype=np.float32)
    scores = np.einsum("nrd,nd->nr", vecs.reshape(*candidates.shape, -1), queries)
    scores[~valid] = -np.inf
    kk = min(k, candidates.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
    rows = np.take_along_axis(candidates, top, axis=1)
    out_scores = np.take_along_axis(scores, top, axis=1)
    rows[~np.isfinite(out_scores)] = -1
    return pad_topk(out_scores, rows, k)
