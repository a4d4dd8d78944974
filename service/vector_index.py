"""The FAISS index of one version: float index, the binary (Hamming) scheme, the row map.

Files of a version folder (the index builder writes them, the service loads them)::

    embeddings.npy      (N, d) float32 (or float16, ``vectors_dtype``), L2-normalised; row i =
                        line i of rows.jsonl.  Memory-mapped by the service: used for the
                        re-ranks, for exact search and by `update` to reuse unchanged
                        embeddings instead of re-embedding the catalog
    float.faiss         float index from a FAISS factory string, inner product
                        ("Flat" exact, "HNSW32", "IVF{nlist},Flat" with nlist chosen from N,
                        or a compressed one such as "IVF{nlist}_HNSW32,PQ64x4fs" whose top
                        ``float_rerank`` candidates are re-scored from embeddings.npy: the
                        large-catalog family, where only the codes live in RAM)
    binary.faiss        optional IndexBinaryFlat / IndexBinaryHNSW / IndexBinaryIVF over codes
    binary_codec.npz    mean (d,) and projection (d, nbits): code = sign((x - mean) @ projection)
    index_spec.json     the :class:`IndexSpec` it was built with
    rows.jsonl          row → catalog item (sku_id, image, box, title, tags, category, labels), in row
                        order (see :class:`RowMap`)

The binary scheme follows "Visual Search at Alibaba": a (random or ITQ-learned) rotation and
the sign give compact codes searched by Hamming distance; the top ``rerank`` candidates are
re-ranked with the float vectors, so scores are always inner products.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.artifact import sha256_file
from service.binary_index import (
    BinaryCodec,
    BinarySpec,
    as_f32,
    auto_nlist,
    build_binary_index,
    configure_faiss,
    pad_topk,
    rerank,
    sample_rows,
    set_binary_params,
)
from service.index_families import family_for
from service.label_filter import labels_of

__all__ = [
    "BinaryCodec", "BinarySpec", "IndexSpec", "RowMap", "VectorIndex", "build_float_index",
    "exact_search", "file_entries", "load_version_index", "recall_at_k", "write_rows",
]

EMBEDDINGS_FILE = "embeddings.npy"
FLOAT_INDEX_FILE = "float.faiss"
BINARY_INDEX_FILE = "binary.faiss"
BINARY_CODEC_FILE = "binary_codec.npz"
SPEC_FILE = "index_spec.json"
ROWS_FILE = "rows.jsonl"
SearchMode = Literal["float", "binary", "exact"]
CHUNK_ROWS = 500_000  # rows per block when adding, encoding, saving or exact-searching


class IndexSpec(BaseModel):
    """Which indexes a version gets and how they are searched."""

    model_config = ConfigDict(extra="forbid")

    float_factory: str = Field(
        "auto", description="FAISS factory string (inner product); '{nlist}' = about 4*sqrt(N); "
        "'auto' = the measured default for the catalog size (service.index_families)"
    )
    hnsw_ef_search: int = Field(128, ge=1)
    ivf_nprobe: int = Field(16, ge=1)
    float_rerank: int = Field(0, ge=0, description="re-score this many candidates of the float "
                              "index with embeddings.npy (0: its own scores are final)")
    vectors_dtype: Literal["float32", "float16"] = Field(
        "float32", description="embeddings.npy on disk: float16 halves it (re-rank precision "
        "is unchanged at 3 decimals)")
    binary: BinarySpec = Field(default_factory=BinarySpec)
    default_search: Literal["float", "binary"] = "float"
    train_sample: int = Field(100_000, ge=1000, description="max vectors to train IVF / ITQ")
    ivf_add_ef_search: int = Field(0, ge=0, description="efSearch of an HNSW coarse quantizer "
                                   "while rows are added (0: FAISS's 16, which puts ~12% of "
                                   "rows in a wrong list at 16k lists; 64: <1%)")
    ivf_training: Literal["kmeans", "two_level"] = Field(
        "kmeans", description="IVF coarse centroids: one k-means of nlist (cost ∝ sample × "
        "nlist), or two levels (sqrt(nlist) clusters, each split again: FAISS's "
        "contrib.clustering, what makes 16k+ lists affordable on a few cores)")
    seed: int = 1234


def resolve_spec(spec: IndexSpec, n: int) -> IndexSpec:
    """``float_factory='auto'`` → the measured family for ``n`` vectors; else ``spec``."""
    if spec.float_factory != "auto":
        return spec
    fam = family_for(n)
    binary = spec.binary.model_copy(update=fam.pop("binary", {}))
    return spec.model_copy(update=fam | {"binary": binary})


def resolve_factory(factory: str, n: int) -> str:
    return factory.replace("{nlist}", str(auto_nlist(n)))


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
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"expected a non-empty (N, d) matrix, got shape {x.shape}")
    spec = resolve_spec(spec, len(x))
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
        sample = as_f32(sample_rows(x, spec.train_sample, spec.seed))
        if spec.ivf_training == "two_level":
            train_two_level(index, sample, spec.seed)
        index.train(sample)  # with a filled quantizer, only the codes (PQ...) are trained
    if spec.ivf_add_ef_search:
        _hnsw_quantizer(index).hnsw.efSearch = spec.ivf_add_ef_search
    add_chunked(index, x)
    _set_float_params(index, spec)
    return index


def _hnsw_quantizer(index: Any) -> Any:
    faiss = configure_faiss()
    try:
        q = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    except RuntimeError:
        q = None
    if not hasattr(q, "hnsw"):
        raise ValueError("ivf_add_ef_search needs an IVF index with an HNSW quantizer "
                         "('IVF{n}_HNSW{m},...')")
    return q


def train_two_level(index: Any, sample: np.ndarray, seed: int) -> None:
    """Fill the IVF quantizer of ``index`` with centroids from two-level k-means: sqrt(nlist)
    clusters, each split in proportion to its size (spherical for inner product, like
    FAISS's own IVF training, same iterations).  ``index.train`` then trains only the encoder."""
    faiss = configure_faiss()
    from faiss.contrib.clustering import two_level_clustering

    ivf = faiss.extract_index_ivf(index)
    nlist = int(ivf.nlist)
    if nlist > len(sample):
        raise ValueError(f"{nlist} lists need at least as many training vectors, got {len(sample)}")
    centroids, _ = two_level_clustering(
        sample, max(1, int(np.sqrt(nlist))), nlist, clustering_niter=int(ivf.cp.niter),
        spherical=ivf.metric_type == faiss.METRIC_INNER_PRODUCT, seed=seed)
    ivf.quantizer.train(centroids)
    ivf.quantizer.add(centroids)
    if ivf.quantizer.ntotal != nlist:
        raise RuntimeError(f"quantizer holds {ivf.quantizer.ntotal} centroids, want {nlist}")


def row_chunks(x: np.ndarray, chunk: int | None = None) -> Iterator[np.ndarray]:
    """``x`` (an array or a memory map, any float dtype) as float32 blocks of ``chunk`` rows
    (default :data:`CHUNK_ROWS`): a 10M-row memory map never becomes one 10 GB array."""
    chunk = chunk or CHUNK_ROWS
    for start in range(0, len(x), chunk):
        yield as_f32(x[start:start + chunk])


def add_chunked(index: Any, x: np.ndarray) -> None:
    for block in row_chunks(x):
        index.add(block)


def exact_search(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k (the ground truth for recall), block by block."""
    faiss = configure_faiss()
    q = as_f32(queries)
    if len(x) <= CHUNK_ROWS:
        xb = as_f32(x)
        d, i = faiss.knn(q, xb, min(k, len(xb)), metric=faiss.METRIC_INNER_PRODUCT)
        return pad_topk(d, i, k)
    from faiss.contrib.exhaustive_search import knn_ground_truth

    d, i = knn_ground_truth(q, row_chunks(x), k, metric_type=faiss.METRIC_INNER_PRODUCT)
    return pad_topk(d, i, k)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean fraction of the true top-k rows found in the returned top-k."""
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist()) - {-1}) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k if hits else 0.0


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
        """Build from (N, d) vectors: an array or a memory map (added block by block)."""
        spec = resolve_spec(spec, len(embeddings))
        x = embeddings if spec.vectors_dtype == "float16" else as_f32(embeddings)
        float_index = build_float_index(x, spec)
        binary_index = codec = None
        if spec.binary.kind != "none":
            codec = BinaryCodec.fit(x, spec.binary, spec.seed)
            binary_index = build_binary_index(
                np.concatenate([codec.encode(b) for b in row_chunks(x)]), spec.binary, spec.seed)
        return cls(x, float_index, spec, binary_index, codec)

    def search(self, queries: np.ndarray, k: int,
               mode: SearchMode | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows for each query: ``(scores, rows)``, both (n, k); scores are inner
        products (cosine for normalised vectors), rows -1 where fewer than k exist."""
        if k < 1:
            raise ValueError("k must be >= 1")
        q = as_f32(queries)
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
        if self.spec.float_rerank:
            r = max(k, self.spec.float_rerank)
            _, cand = self.float_index.search(q, min(r, self.ntotal))
            return rerank(self.embeddings, q, cand, k)
        scores, rows = self.float_index.search(q, min(k, self.ntotal))
        return pad_topk(scores, rows, k)

    def save(self, folder: str | os.PathLike[str]) -> list[str]:
        """Write the index files into ``folder``; returns their names."""
        faiss = configure_faiss()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / EMBEDDINGS_FILE
        if not _is_mapped_from(self.embeddings, path, self.spec.vectors_dtype):  # a 10M-row file is not copied onto itself
            save_vectors(path, self.embeddings, self.spec.vectors_dtype)
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
            set_binary_params(binary_index, spec.binary)
            codec = BinaryCodec.load(folder / BINARY_CODEC_FILE)
        if float_index.ntotal != len(emb):
            raise ValueError(f"{folder}: float index has {float_index.ntotal} rows, "
                             f"embeddings {len(emb)}")
        return cls(emb, float_index, spec, binary_index, codec)


@dataclass
class RowMap:
    """Row → SKU: parallel lists, row i of the index is ``sku_ids[i]`` seen in ``images[i]``;
    ``labels[i]`` are its SKU's ``key=value`` labels, ``catalog[i]`` is False for a row made
    from user feedback (a shopper's crop, never shown to other clients as a catalog image)."""

    sku_ids: list[str]
    images: list[str]
    categories: list[str]
    labels: list[tuple[str, ...]] = field(default_factory=list)
    catalog: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sku_ids)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> RowMap:
        out = cls([], [], [])
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                obj = json.loads(line)
                out.sku_ids.append(obj["sku_id"])
                out.images.append(obj["image"])
                out.categories.append(obj.get("category", ""))
                # versions built before labels were stored: the same rule, from the tags
                labels = obj["labels"] if "labels" in obj else labels_of(obj.get("tags", []))
                out.labels.append(tuple(sorted(labels)))
                out.catalog.append(obj.get("source") != "feedback")
        return out


def _is_mapped_from(x: np.ndarray, path: Path, dtype: str) -> bool:
    name = getattr(x, "filename", None)
    return (isinstance(x, np.memmap) and name is not None and path.exists()
            and os.path.samefile(name, path) and x.dtype == np.dtype(dtype))


def save_vectors(path: str | os.PathLike[str], x: np.ndarray, dtype: str) -> None:
    """``x`` as a .npy of ``dtype``, written block by block (``x`` may be a memory map)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(x.shape))
    for start in range(0, len(x), CHUNK_ROWS):
        out[start:start + CHUNK_ROWS] = x[start:start + CHUNK_ROWS]
    out.flush()
    del out


def write_rows(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> int:
    """Write the row map (one JSON object per row, at least ``sku_id`` and ``image``)."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for obj in rows:
            fh.write(json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n")
            n += 1
    return n


def file_entries(
    folder: str | os.PathLike[str], names: Iterable[str]
) -> dict[str, dict[str, Any]]:
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
