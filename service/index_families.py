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
above               the same with more lists, float16 vectors on disk (half the disk and page
                    cache), no binary index: only the PQ codes and the quantizer are in RAM
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
# > 2M: the same quantizer (more lists would cost a k-means these 2 cores cannot afford
# nightly), float16 vectors on disk.  NOT yet measured at 10M (docs/benchmarks.md): nprobe
# 256 is the 1M figure's (0.947); `bench/index_scale.py --section 10m` is the run to set it
LARGE_FAMILY: dict[str, Any] = {
    "float_factory": "IVF4096_HNSW32,PQ64x4fs", "ivf_nprobe": 256, "float_rerank": 300,
    "train_sample": 160_000, "vectors_dtype": "float16", "binary": {"kind": "none"},
}


def family_for(n: int) -> dict[str, Any]:
    """IndexSpec fields for a version of ``n`` rows (a fresh dict: callers may change it)."""
    if n <= EXACT_MAX_ROWS:
        return {"float_factory": "Flat"}
    fam = MID_FAMILY if n <= MEMORY_MAX_ROWS else LARGE_FAMILY
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in fam.items()}
