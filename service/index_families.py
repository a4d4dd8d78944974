"""Which index family a version gets for its size (``float_factory='auto'``).

The thresholds and settings are the ones measured in ``docs/benchmarks.md`` ("Index at scale",
issue 13) on the benchmark's hard clustered data, with ``bench/index_scale.py``; they are
written here once and the document quotes them.  Rows = catalog images (≈ 3 per SKU).

==================  ===========================================================================
rows                family
==================  ===========================================================================
≤ EXACT_MAX_ROWS    ``Flat`` (exact) + binary ITQ-256 flat: exact answers, 1 GB per 1M rows
≤ MEMORY_MAX_ROWS   IVF with an HNSW coarse quantizer over 4-bit fast-scan PQ codes, the top
                    candidates re-ranked from the memory-mapped float vectors
above               the same over 16,384 lists (two-level k-means, rows added with a wider
                    quantizer search), float16 vectors on disk (half the disk and page cache),
                    no binary index: only the PQ codes and the quantizer are in RAM
==================  ===========================================================================
"""

from __future__ import annotations

from typing import Any

EXACT_MAX_ROWS = 200_000
MEMORY_MAX_ROWS = 2_000_000

# 1M: recall@10 0.970 at 1.68 CPU ms per query (1 thread), 47 MB in RAM, 118 s to build
MID_FAMILY: dict[str, Any] = {
    "float_factory": "IVF4096_HNSW32,PQ64x4fs", "ivf_nprobe": 512, "float_rerank": 300,
    "train_sample": 160_000, "binary": {"kind": "none"},
}
# > 2M, measured at 10M rows (bench/index_scale.py --section 10m, 200 queries): recall@10
# 0.961 at 1.93 CPU ms per query (1 thread), 430 MB in RAM, 5.1 GB float16 on disk, 960 s to
# build on 2 busy cores.  16,384 lists: at 10M, 4,096 would scan 4× more codes for the same
# fraction; a flat k-means of 16k lists is unaffordable here, two levels (128 × 128) is not.
# ivf_add_ef_search 64: FAISS's default 16 put 12% of rows in a wrong list (recall capped
# at 0.93 whatever nprobe); 64 misplaces 0.7%.  train_sample = 39 × 16,384 (FAISS's minimum).
LARGE_FAMILY: dict[str, Any] = {
    "float_factory": "IVF16384_HNSW32,PQ64x4fs", "ivf_nprobe": 256, "float_rerank": 300,
    "ivf_training": "two_level", "ivf_add_ef_search": 64, "train_sample": 640_000,
    "vectors_dtype": "float16", "binary": {"kind": "none"},
}


def family_for(n: int) -> dict[str, Any]:
    """IndexSpec fields for a version of ``n`` rows (a fresh dict: callers may change it)."""
    if n <= EXACT_MAX_ROWS:
        return {"float_factory": "Flat"}
    fam = MID_FAMILY if n <= MEMORY_MAX_ROWS else LARGE_FAMILY
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in fam.items()}
