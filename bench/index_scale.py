"""Index at scale (issue 13): a 1M-vector parameter sweep and a 10M-vector memory-mapped build.

    .venv/bin/python bench/index_scale.py --section 1m [--only PREFIX]
    .venv/bin/python bench/index_scale.py --section 10m --data-dir /work/tmp-10m

Data: the hard clustered vectors of ``bench/index_build.py`` (``clustered``: 100 categories,
each a 64-dim patch, L2-normalised, 256-d); queries are held out (another seed); ground truth
is exact inner-product search.  Builds use ``--build-threads`` FAISS threads; every query is
timed alone (batch 1) with ONE thread, as the service does per request.

* 1m: each family is built once with ``VectorIndex.build`` (the builder's code) and swept
  over its search knobs (efSearch, nprobe, re-rank depth) without rebuilding.
* 10m: vectors are generated in blocks straight into a float16 ``embeddings.npy`` memory map
  (ground truth kept on the fly), the large family of ``service.index_families`` is built from
  the map, saved as a version folder, then a fresh process loads it the way the service does
  (``load_version_index``-style, memory-mapped vectors) and reports its RSS, ms per query and
  recall@10.  ``--keep-data`` keeps the 5 GB folder (deleted by default).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from index_build import clustered  # noqa: E402

from service.binary_index import set_binary_params  # noqa: E402
from service.index_families import LARGE_FAMILY, family_for  # noqa: E402
from service.vector_index import (  # noqa: E402
    IndexSpec,
    VectorIndex,
    _set_float_params,
    exact_search,
    recall_at_k,
)

D = 256


def say(line: str = "") -> None:
    print(line, flush=True)


def threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n)


def retune(index: VectorIndex, knobs: dict[str, Any]) -> None:
    """Change search-time knobs of a built index (no rebuild)."""
    binary = {k[2:]: v for k, v in knobs.items() if k.startswith("b_")}
    flt = {k: v for k, v in knobs.items() if not k.startswith("b_")}
    spec = index.spec.model_copy(update=flt)
    if binary:
        spec = spec.model_copy(update={"binary": spec.binary.model_copy(update=binary)})
    index.spec = spec
    _set_float_params(index.float_index, spec)
    if index.binary_index is not None:
        set_binary_params(index.binary_index, spec.binary)


def time_queries(index: VectorIndex, q: np.ndarray, mode: str, n: int) -> tuple[float, float]:
    """(CPU ms, wall ms) medians of ``n`` single-query searches on one thread.  CPU time of
    the calling thread (FAISS runs on it with one OpenMP thread) is what a query costs; the
    wall time also holds the waits for a core on this shared, oversubscribed machine."""
    cpu, wall = [], []
    for i in range(n):
        t0, c0 = time.perf_counter(), time.thread_time()
        index.search(q[i:i + 1], 10, mode=mode)  # type: ignore[arg-type]
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    return float(np.median(cpu) * 1e3), float(np.median(wall) * 1e3)


def index_mb(index: VectorIndex, mode: str) -> float:
    import faiss

    if mode == "binary":
        return faiss.serialize_index_binary(index.binary_index).nbytes / 1e6
    return faiss.serialize_index(index.float_index).nbytes / 1e6


# (label, IndexSpec fields, search mode, knob sweep)
SWEEP_1M: list[tuple[str, dict[str, Any], str, list[dict[str, Any]]]] = [
    ("binary ITQ-256 flat", {"binary": {"kind": "flat"}}, "binary",
     [{"b_rerank": r} for r in (300, 1000)]),
    ("IVF4096_HNSW32,PQ64x4fs + re-rank", {"float_factory": "IVF4096_HNSW32,PQ64x4fs",
                                           "train_sample": 160_000, "binary": {"kind": "none"}},
     "float", [{"ivf_nprobe": p, "float_rerank": r} for p in (128, 256, 512, 1024)
               for r in (300, 1000)]),
    ("HNSW32", {"float_factory": "HNSW32", "binary": {"kind": "none"}}, "float",
     [{"hnsw_ef_search": e} for e in (128, 256, 512)]),
]


def sweep_1m(n: int, nq: int, timed: int, build_threads: int, only: str,
             results: dict[str, Any]) -> None:
    threads(build_threads)
    t0 = time.perf_counter()
    x, q = clustered(n, D, seed=1), clustered(nq, D, seed=2)
    _, truth = exact_search(x, q, 10)
    say(f"### {n:,} × {D}-d clustered vectors, {nq} held-out queries "
        f"(data + ground truth {time.perf_counter() - t0:.0f} s)\n")
    say("| family | knobs | build s | RAM MB (index) | CPU ms/query | wall ms p50 | recall@10 |")
    say("|---|---|---:|---:|---:|---:|---:|")
    for label, fields, mode, knobs in SWEEP_1M:
        if only and not label.startswith(only):
            continue
        threads(build_threads)
        spec = IndexSpec(**(fields | {"binary": IndexSpec().binary.model_copy(
            update=fields.get("binary", {}))}))
        t0 = time.perf_counter()
        index = VectorIndex.build(x, spec)
        build = time.perf_counter() - t0
        mb = index_mb(index, mode)
        threads(1)
        for k in knobs:
            retune(index, k)
            _, rows = index.search(q, 10, mode=mode)  # type: ignore[arg-type]
            rec = recall_at_k(rows, truth, 10)
            cpu, wall = time_queries(index, q, mode, timed)
            knob = ", ".join(f"{a.removeprefix('b_')} {b}" for a, b in k.items())
            say(f"| {label} | {knob} | {build:.0f} | {mb:,.0f} | {cpu:.2f} | {wall:.2f} | "
                f"{rec:.3f} |")
            results.setdefault(label, []).append(
                {"knobs": k, "build_s": build, "index_mb": mb, "cpu_ms": cpu, "wall_p50_ms": wall,
                 "recall_at_10": rec})
        del index


def rss_kb() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.split(":")[0] in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[line.split(":")[0]] = int(line.split()[1])
    return out


def gen_10m(folder: Path, n: int, nq: int, block: int) -> tuple[np.ndarray, np.ndarray, float]:
    """float16 vectors into ``folder/embeddings.npy`` block by block; exact top-10 of the
    queries kept on the fly (against the float16-rounded vectors the index will hold)."""
    import faiss

    folder.mkdir(parents=True, exist_ok=True)
    q = clustered(nq, D, seed=2)
    emb = np.lib.format.open_memmap(folder / "embeddings.npy", mode="w+", dtype=np.float16,
                                    shape=(n, D))
    heap = faiss.ResultHeap(nq, 10, keep_max=True)
    t0 = time.perf_counter()
    for b, start in enumerate(range(0, n, block)):
        xb = clustered(min(block, n - start), D, seed=1000 + b).astype(np.float16)
        emb[start:start + len(xb)] = xb
        d, i = faiss.knn(q, xb.astype(np.float32), 10, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(d, i + start)
        say(f"  generated {start + len(xb):,} rows ({time.perf_counter() - t0:.0f} s)")
    heap.finalize()
    emb.flush()
    del emb
    return q, heap.I, time.perf_counter() - t0


def run_10m(folder: Path, n: int, nq: int, timed: int, build_threads: int, keep: bool,
            results: dict[str, Any]) -> None:
    threads(build_threads)
    q, truth, gen_s = gen_10m(folder, n, nq, 500_000)
    np.save(folder.parent / f"{folder.name}-queries.npy", q)
    np.save(folder.parent / f"{folder.name}-truth.npy", truth)
    x = np.load(folder / "embeddings.npy", mmap_mode="r")
    spec = IndexSpec(float_factory="auto")
    t0 = time.perf_counter()
    index = VectorIndex.build(x, spec)
    build = time.perf_counter() - t0
    index.save(folder)
    del index, x
    disk = {p.name: p.stat().st_size for p in folder.iterdir()}
    say(f"10M: data {gen_s:.0f} s, build {build:.0f} s ({build_threads} threads), files "
        + ", ".join(f"{k} {v / 1e6:,.0f} MB" for k, v in disk.items()))
    out = subprocess.run([sys.executable, __file__, "--section", "10m-query", "--data-dir",
                          str(folder), "--timed", str(timed)], check=True, capture_output=True,
                         text=True).stdout
    q_res = json.loads(out.strip().splitlines()[-1])
    results["10m"] = {"n": n, "family": family_for(n), "gen_s": gen_s, "build_s": build,
                      "build_threads": build_threads, "disk_bytes": disk} | q_res
    if not keep:
        shutil.rmtree(folder)


def query_10m(folder: Path, timed: int) -> None:
    """In a fresh process: load like the service, RSS, then timed single queries."""
    threads(1)
    before = rss_kb()
    t0 = time.perf_counter()
    index = VectorIndex.load(folder)
    load_s = time.perf_counter() - t0
    loaded = rss_kb()
    q = np.load(folder.parent / f"{folder.name}-queries.npy")
    truth = np.load(folder.parent / f"{folder.name}-truth.npy")
    res: dict[str, Any] = {"load_s": load_s, "rss_before_kb": before, "rss_loaded_kb": loaded}
    for rerank in (300,):
        for nprobe in (128, 256, 512):
            retune(index, {"ivf_nprobe": nprobe, "float_rerank": rerank})
            cpu, wall = time_queries(index, q, "float", timed)  # cold pages first
            _, rows = index.search(q, 10)
            rec = recall_at_k(rows, truth, 10)
            res.setdefault("sweep", []).append({"nprobe": nprobe, "rerank": rerank,
                                                "cpu_ms": cpu, "wall_p50_ms": wall,
                                                "recall_at_10": rec})
    res["rss_after_kb"] = rss_kb()
    print(json.dumps(res))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--section", choices=["1m", "10m", "10m-query"], required=True)
    p.add_argument("--n", type=int, default=0, help="vectors (default 1M / 10M)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--timed", type=int, default=300, help="single queries timed per point")
    p.add_argument("--build-threads", type=int, default=2)
    p.add_argument("--only", default="", help="1m: only families whose label starts so")
    p.add_argument("--data-dir", type=Path, default=Path("bench-10m"))
    p.add_argument("--keep-data", action="store_true")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    if args.section == "10m-query":
        query_10m(args.data_dir, args.timed)
        return 0
    results: dict[str, Any] = {"cpus": os.cpu_count(), "large_family": LARGE_FAMILY}
    if args.section == "1m":
        sweep_1m(args.n or 1_000_000, args.queries, args.timed, args.build_threads, args.only,
                 results)
    else:
        run_10m(args.data_dir, args.n or 10_000_000, args.queries, args.timed,
                args.build_threads, args.keep_data, results)
        say(json.dumps(results["10m"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
