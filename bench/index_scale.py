"""Index at scale (issue 13): a 1M-vector parameter sweep and a 10M-vector memory-mapped build.

    .venv/bin/python bench/index_scale.py --section 1m [--only PREFIX]
    .venv/bin/python bench/index_scale.py --section 10m --timed 200 --data-dir /work/tmp-10m/v
    .venv/bin/python bench/index_scale.py --section tiled --artifact ART --manifest M [...]

Data: the hard clustered vectors of ``bench/index_build.py`` (``clustered``: 100 categories,
each a 64-dim patch, L2-normalised, 256-d); queries are held out (another seed); ground truth
is exact inner-product search.  Builds use ``--build-threads`` FAISS threads; every query is
timed alone (batch 1) with ONE thread, as the service does per request (CPU time of the
thread and wall time: the development machine's cores are shared).

* 1m: each family is built once with ``VectorIndex.build`` (the builder's code) and swept
  over its search knobs (efSearch, nprobe, re-rank depth) without rebuilding.
* 10m: vectors are drawn in 1M blocks (two threads) straight into a float16 ``embeddings.npy``
  memory map, the exact top-10 of 200 queries kept on the fly; a fresh process builds the
  large family of ``service.index_families`` (``--spec`` JSON overrides fields) from the map
  and saves the version folder; another loads it the way the service does (memory-mapped
  vectors), drops the file's cached pages for a first cold pass, then sweeps ``--sweep``
  (nprobe:rerank) and reports RSS, CPU/wall ms per query and recall@10.  ``--keep-data``
  keeps (and reuses) the 5.5 GB folder; it is deleted by default.
* tiled: a trained artifact's embeddings of catalog images, tiled to 1M rows with noise, and
  the ``auto`` family for that size (a sanity row on real embeddings).
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
    ("IVF4096_HNSW32,PQ64x4fs + re-rank, add efSearch 64",
     {"float_factory": "IVF4096_HNSW32,PQ64x4fs", "train_sample": 160_000,
      "ivf_add_ef_search": 64, "binary": {"kind": "none"}},
     "float", [{"ivf_nprobe": p, "float_rerank": r} for p in (128, 256, 512) for r in (300,)]),
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


def clustered_block(n: int, seed: int, workers: int) -> np.ndarray:
    """``clustered(n)`` drawn as ``workers`` parts in threads (NumPy's generator, its
    element-wise loops and BLAS release the GIL): the same distribution, ~2× the rate on two
    cores.  Part j of block ``seed`` uses seed ``seed * 16 + j``."""
    from concurrent.futures import ThreadPoolExecutor

    cuts = np.linspace(0, n, workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as ex:
        parts = list(ex.map(lambda j: clustered(int(cuts[j + 1] - cuts[j]), D, seed=seed * 16 + j),
                            range(workers)))
    return np.concatenate(parts)


def gen_10m(folder: Path, n: int, nq: int, block: int, workers: int) -> dict[str, Any]:
    """float16 vectors into ``folder/embeddings.npy`` (an ``np.lib.format.open_memmap``) block
    by block; the exact top-10 of the ``nq`` queries kept on the fly with a FAISS result heap
    (brute force against the float16-rounded vectors the index will hold)."""
    import faiss

    folder.mkdir(parents=True, exist_ok=True)
    q = clustered(nq, D, seed=2)
    emb = np.lib.format.open_memmap(folder / "embeddings.npy", mode="w+", dtype=np.float16,
                                    shape=(n, D))
    heap = faiss.ResultHeap(nq, 10, keep_max=True)
    t0, c0 = time.perf_counter(), time.process_time()
    gen_cpu = 0.0
    for b, start in enumerate(range(0, n, block)):
        g0 = time.process_time()
        xb = clustered_block(min(block, n - start), 1000 + b, workers).astype(np.float16)
        emb[start:start + len(xb)] = xb
        gen_cpu += time.process_time() - g0
        d, i = faiss.knn(q, xb.astype(np.float32), 10, metric=faiss.METRIC_INNER_PRODUCT)
        heap.add_result(d, i + start)
        say(f"  generated {start + len(xb):,} rows ({time.perf_counter() - t0:.0f} s)")
    heap.finalize()
    emb.flush()
    del emb
    np.save(folder / "bench-queries.npy", q)
    np.save(folder / "bench-truth.npy", heap.I)
    return {"gen_wall_s": time.perf_counter() - t0, "gen_cpu_s": time.process_time() - c0,
            "gen_cpu_s_without_truth": gen_cpu}


def spec_for(n: int, override: dict[str, Any]) -> IndexSpec:
    """The ``auto`` family for ``n`` rows (service.index_families) with ``override`` on top."""
    fields = family_for(n) | override
    return IndexSpec(**fields)


def run_10m(folder: Path, n: int, nq: int, timed: int, build_threads: int, keep: bool,
            override: dict[str, Any], sweep: str, results: dict[str, Any]) -> None:
    threads(build_threads)
    if (folder / "embeddings.npy").exists() and keep:
        say(f"reusing {folder / 'embeddings.npy'}")
        gen: dict[str, Any] = {}
    else:
        gen = gen_10m(folder, n, nq, 1_000_000, build_threads)
    for name in ("float.faiss", "index_spec.json"):
        (folder / name).unlink(missing_ok=True)
    build = json.loads(_child(["--section", "10m-build", "--data-dir", str(folder),
                               "--build-threads", str(build_threads), "--spec",
                               json.dumps(override)]))
    disk = {p.name: p.stat().st_size for p in folder.iterdir()
            if not p.name.startswith("bench-")}
    say(f"10M: data {gen.get('gen_wall_s', 0):.0f} s, build {build['build_wall_s']:.0f} s "
        f"({build_threads} threads), files "
        + ", ".join(f"{k} {v / 1e6:,.0f} MB" for k, v in disk.items()))
    q_res = json.loads(_child(["--section", "10m-query", "--data-dir", str(folder), "--timed",
                               str(timed), "--sweep", sweep]))
    results["10m"] = {"n": n, "queries": nq, "build_threads": build_threads,
                      "disk_bytes": disk} | gen | build | q_res
    if not keep:
        shutil.rmtree(folder)


def _child(args: list[str]) -> str:
    """Run a section in a fresh process (its own peak RSS); its last stdout line is JSON."""
    out = subprocess.run([sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    return out.strip().splitlines()[-1]


def build_10m(folder: Path, build_threads: int, override: dict[str, Any]) -> None:
    """In a fresh process: build the family from the memory-mapped file and save it."""
    threads(build_threads)
    x = np.load(folder / "embeddings.npy", mmap_mode="r")
    spec = spec_for(len(x), override)
    say(f"building {spec.float_factory} ({spec.ivf_training}, train sample "
        f"{spec.train_sample:,}) over {len(x):,} rows")
    t0, c0 = time.perf_counter(), time.process_time()
    index = VectorIndex.build(x, spec)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    index.save(folder)
    print(json.dumps({"spec": json.loads(index.spec.model_dump_json()), "build_wall_s": wall,
                      "build_cpu_s": cpu, "build_rss_kb": rss_kb()}))


def _drop_cached_pages(path: Path) -> None:
    """Ask the kernel to drop this file's clean cached pages (only this file's): the first
    pass then re-ranks from disk, as a replica would right after a version switch."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_fraction(path: Path) -> float | None:
    """Fraction of ``path``'s pages in the page cache (util-linux ``fincore``; None without)."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES",
                              str(path)], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return int(out.split()[0]) / path.stat().st_size


def query_10m(folder: Path, timed: int, sweep: str) -> None:
    """In a fresh process: load like the service (``VectorIndex.load``: index in RAM, vectors
    memory-mapped), a first pass with the file's pages dropped (cold), then the sweep warm.
    ``sweep`` = ``nprobe:rerank,...``; the first point is also the cold one."""
    threads(1)
    points = [tuple(int(v) for v in p.split(":")) for p in sweep.split(",")]
    cached = {"before_drop": cached_fraction(folder / "embeddings.npy")}
    _drop_cached_pages(folder / "embeddings.npy")
    cached["after_drop"] = cached_fraction(folder / "embeddings.npy")
    before = rss_kb()
    t0 = time.perf_counter()
    index = VectorIndex.load(folder)
    load_s = time.perf_counter() - t0
    loaded = rss_kb()
    q = np.load(folder / "bench-queries.npy")
    truth = np.load(folder / "bench-truth.npy")
    res: dict[str, Any] = {"load_s": load_s, "rss_before_kb": before, "rss_loaded_kb": loaded,
                           "float_index_bytes": (folder / "float.faiss").stat().st_size}
    nprobe, rerank = points[0]
    retune(index, {"ivf_nprobe": nprobe, "float_rerank": rerank})
    cpu, wall = time_queries(index, q, "float", timed)
    cached["after_cold_pass"] = cached_fraction(folder / "embeddings.npy")
    res["cold"] = {"nprobe": nprobe, "rerank": rerank, "cpu_ms": cpu, "wall_p50_ms": wall,
                   "cached_fraction": cached}
    for nprobe, rerank in points:
        retune(index, {"ivf_nprobe": nprobe, "float_rerank": rerank})
        _, rows = index.search(q, 10)  # also warms the pages these queries touch
        rec = recall_at_k(rows, truth, 10)
        cpu, wall = time_queries(index, q, "float", timed)
        res.setdefault("sweep", []).append({"nprobe": nprobe, "rerank": rerank, "cpu_ms": cpu,
                                            "wall_p50_ms": wall, "recall_at_10": rec})
        print(json.dumps(res["sweep"][-1]), file=sys.stderr, flush=True)
    res["rss_after_kb"] = rss_kb()
    print(json.dumps(res))


def tiled(artifact: Path, manifests: list[Path], n: int, nq: int, timed: int,
          build_threads: int, noise: float, sweep: str, results: dict[str, Any]) -> None:
    """Sanity row on real embeddings: the catalog images of ``manifests`` embedded by a trained
    ``artifact`` (the builder's ``embed_items``), tiled to ``n`` rows with Gaussian noise
    (norm ``noise`` in expectation) and renormalised; queries are other noisy copies (another
    seed); ground truth is exact search.  The ``auto`` family for ``n`` rows is built."""
    from service.artifact import load_artifact
    from service.catalog import read_catalog
    from service.embed import embed_items

    threads(build_threads)
    items = [it for m in manifests for it in read_catalog(m).items]
    t0 = time.perf_counter()
    base = embed_items(items, load_artifact(artifact), progress=False).embeddings
    embed_s = time.perf_counter() - t0
    m, d = base.shape
    rng = np.random.default_rng(0)

    def noisy(rows: np.ndarray) -> np.ndarray:
        x = base[rows] + (noise / np.sqrt(d)) * rng.standard_normal((len(rows), d),
                                                                  dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    x = np.concatenate([noisy(np.arange(s, min(n, s + 100_000)) % m)
                        for s in range(0, n, 100_000)])
    q_orig = rng.integers(0, m, nq)
    q = noisy(q_orig)
    cos_copy = float(np.mean(np.sum(x[:m] * base, axis=1)))
    off = base @ base.T
    nearest_other = float(np.mean(np.sort(off, axis=1)[:, -2]))
    _, truth = exact_search(x, q, 10)

    def same_original(rows: np.ndarray) -> float:
        """Mean fraction of the top-10 rows that are copies of the query's own original (row r
        is a copy of r % m): what the service would call the right catalog image."""
        return float(np.mean((rows % m) == q_orig[:, None]))

    exact_same = same_original(truth)
    say(f"### {m:,} catalog embeddings ({d}-d) of {artifact.name}, tiled to {n:,} rows with "
        f"noise {noise} (cosine copy↔original {cos_copy:.3f}; nearest other original "
        f"{nearest_other:.3f} on average); embedding {embed_s:.1f} s; exact search: "
        f"{exact_same:.3f} of the top-10 are copies of the query's original\n")
    spec = IndexSpec(float_factory="auto")
    t0, c0 = time.perf_counter(), time.process_time()
    index = VectorIndex.build(x, spec)
    build, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    mb = index_mb(index, "float")
    say(f"family {index.spec.float_factory} (auto for {n:,} rows): build {build:.0f} s wall, "
        f"{build_cpu:.0f} s CPU, {mb:,.0f} MB\n")
    say("| knobs | CPU ms/query | wall ms p50 | recall@10 | top-10 copies of the original |")
    say("|---|---:|---:|---:|---:|")
    threads(1)
    out: dict[str, Any] = {"artifact": str(artifact), "manifests": [str(m) for m in manifests],
                           "base_rows": m, "dim": d, "n": n, "noise": noise,
                           "cos_copy": cos_copy, "nearest_other": nearest_other,
                           "exact_same_original_at_10": exact_same,
                           "spec": json.loads(index.spec.model_dump_json()),
                           "build_s": build, "build_cpu_s": build_cpu, "index_mb": mb}
    for point in sweep.split(","):
        nprobe, rerank = (int(v) for v in point.split(":"))
        retune(index, {"ivf_nprobe": nprobe, "float_rerank": rerank})
        _, rows = index.search(q, 10)
        rec = recall_at_k(rows, truth, 10)
        cpu, wall = time_queries(index, q, "float", timed)
        same = same_original(rows)
        say(f"| nprobe {nprobe}, rerank {rerank} | {cpu:.2f} | {wall:.2f} | {rec:.3f} | "
            f"{same:.3f} |")
        out.setdefault("sweep", []).append({"nprobe": nprobe, "rerank": rerank, "cpu_ms": cpu,
                                            "wall_p50_ms": wall, "recall_at_10": rec,
                                            "same_original_at_10": same})
    results["tiled"] = out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--section", choices=["1m", "10m", "10m-build", "10m-query", "tiled"],
                   required=True)
    p.add_argument("--n", type=int, default=0, help="vectors (default 1M / 10M)")
    p.add_argument("--queries", type=int, default=0,
                   help="held-out queries (default 1,000 for 1m, 200 for 10m)")
    p.add_argument("--timed", type=int, default=300, help="single queries timed per point")
    p.add_argument("--build-threads", type=int, default=2)
    p.add_argument("--only", default="", help="1m: only families whose label starts so")
    p.add_argument("--data-dir", type=Path, default=Path("bench-10m"))
    p.add_argument("--keep-data", action="store_true",
                   help="10m: keep (and reuse if present) the data folder")
    p.add_argument("--spec", default="{}", help="10m: JSON IndexSpec fields over the auto family")
    p.add_argument("--sweep", default="64:300,128:300,256:300,512:300,256:1000",
                   help="10m: nprobe:rerank points (the first is also timed cold)")
    p.add_argument("--artifact", type=Path, help="tiled: a trained artifact folder")
    p.add_argument("--manifest", type=Path, action="append", default=[],
                   help="tiled: catalog manifest(s) whose images are embedded (repeatable)")
    p.add_argument("--noise", type=float, default=0.2, help="tiled: noise norm per copy")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    if args.section == "10m-query":
        query_10m(args.data_dir, args.timed, args.sweep)
        return 0
    if args.section == "10m-build":
        build_10m(args.data_dir, args.build_threads, json.loads(args.spec))
        return 0
    results: dict[str, Any] = {"cpus": os.cpu_count(), "large_family": LARGE_FAMILY}
    if args.section == "tiled":
        if args.artifact is None or not args.manifest:
            p.error("--section tiled needs --artifact and --manifest")
        tiled(args.artifact, args.manifest, args.n or 1_000_000, args.queries or 1000,
              args.timed, args.build_threads, args.noise,
              args.sweep if args.sweep != p.get_default("sweep") else "256:300,512:300,1024:300",
              results)
    elif args.section == "1m":
        sweep_1m(args.n or 1_000_000, args.queries or 1000, args.timed, args.build_threads, args.only,
                 results)
    else:
        run_10m(args.data_dir, args.n or 10_000_000, args.queries or 200, args.timed,
                args.build_threads, args.keep_data, json.loads(args.spec), args.sweep, results)
        say(json.dumps(results["10m"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
