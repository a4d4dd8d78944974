"""Benchmark of the index builder (issue 4): Redis write paths, embedding, FAISS indexes.

    .venv/bin/python bench/index_build.py                      # everything (slow: 1M FAISS)
    .venv/bin/python bench/index_build.py --sections redis --skus 100000
    .venv/bin/python bench/index_build.py --sections faiss --faiss-sizes 100000

Sections:
* redis: SKU hashes written into a private redis-server (no persistence) by mass insertion
  (RESP → ``redis-cli --pipe``, the builder's default), redis-py pipelines, and one command
  per key (on a subset, extrapolated); ``redis-benchmark -P 16 -t hset`` on the same server
  as the ceiling.
* embed: images/s of the builder's embedding stage (decode + crop + preprocess threads,
  ONNX Runtime) for an EfficientNet-Lite0 SICoT export at 224 px and the tiny CNN at 64 px.
* faiss: float (Flat, HNSW32, IVF) and binary (ITQ 256 bit + float re-rank; flat, HNSW,
  IVF) at each size: build time, index bytes, query latency at batch 1 and 64, recall@10
  against exact search, on clustered vectors (not uniform noise, so recall means something).
Prints a markdown report; ``--json`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index_builder.redis_writer import encode_hsets, write_records  # noqa: E402
from service.redis_server import PrivateRedisServer, connect  # noqa: E402
from service.store import KeySchema, SkuRecord  # noqa: E402
from service.vector_index import (  # noqa: E402
    BinarySpec,
    IndexSpec,
    VectorIndex,
    exact_search,
    recall_at_k,
)

OUT: list[str] = []
RESULTS: dict[str, Any] = {}


def say(line: str = "") -> None:
    print(line, flush=True)
    OUT.append(line)


def synthetic_skus(n: int) -> list[SkuRecord]:
    rng = np.random.default_rng(0)
    words = ["green", "tea", "organic", "500 ml", "bottle", "pack of 6", "chocolate", "dark",
             "shampoo", "herbal", "family size", "低糖", "饮料", "original", "limited"]
    out = []
    for i in range(n):
        title = " ".join(rng.choice(words, 6)) + f" #{i}"
        img = f"https://cdn.example.com/catalog/{i % 997:03d}/{i:08d}.jpg"
        out.append(SkuRecord(f"SKU{i:08d}", title, ("brand=acme", f"size={i % 7}", "promo"),
                             f"category-{i % 40}", i % 5000 if i % 3 else -1, img, (img,)))
    return out


def _mem(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


def bench_redis(n: int, one_by_one: int) -> None:
    say(f"### Redis: {n:,} synthetic SKU hashes (7 fields, ~{_avg_bytes(n):,} B of values)")
    recs = synthetic_skus(n)
    keys = KeySchema("bench")
    t0 = time.perf_counter()
    nbytes = sum(len(c) for c in encode_hsets(keys, "v1", recs))
    gen = time.perf_counter() - t0
    rows = [("RESP generation only (Python)", n / gen, f"{nbytes / 1e6:.0f} MB of RESP")]
    with PrivateRedisServer() as server:
        client = connect(server.url, timeout_s=30)
        base = _mem(client)
        for method in ("mass", "pipeline"):
            client.flushall()
            st = write_records(client, server.url, keys, "v1", recs, method=method,
                               progress=False)
            assert client.dbsize() == n, client.dbsize()
            label = ("mass insertion: RESP → redis-cli --pipe (streamed)" if method == "mass"
                     else "redis-py + hiredis pipelines of 1,000")
            rows.append((label, st.rate, f"{st.seconds:.2f} s"))
        used = _mem(client) - base
        sample = [keys.sku("v1", r.sku_id) for r in recs[:: max(1, n // 1000)]]
        per_key = float(np.mean([client.memory_usage(k, samples=0) for k in sample]))
        client.flushall()
        sub = recs[:one_by_one]
        t0 = time.perf_counter()
        for r in sub:
            client.hset(keys.sku("v1", r.sku_id), mapping=r.to_hash())  # type: ignore[arg-type]
        dt = time.perf_counter() - t0
        rows.append((f"one HSET per round trip ({one_by_one:,} SKUs, extrapolated)",
                     one_by_one / dt, f"~{n * dt / one_by_one:.1f} s for {n:,}"))
        client.flushall()
        rows.append(("redis-benchmark -P 16 -t hset (1 field per HSET; ceiling)",
                     _redis_benchmark(server.port), "same server"))
        client.close()
    mass = rows[1][1]
    say("| method | SKUs/s | vs mass insertion | note |")
    say("|---|---:|---:|---|")
    for label, rate, note in rows:
        say(f"| {label} | {rate:,.0f} | {rate / mass:.2f}× | {note} |")
    say(f"\nRedis memory for {n:,} SKUs: {used / 1e6:.0f} MB ({used / n:.0f} B/SKU by INFO "
        f"used_memory; MEMORY USAGE of a SKU hash: {per_key:.0f} B on average).")
    RESULTS["redis"] = {r[0]: r[1] for r in rows} | {"used_memory_bytes": used,
                                                     "memory_usage_per_key": per_key}


def _avg_bytes(n: int) -> int:
    sample = synthetic_skus(min(n, 1000))
    return int(np.mean([sum(len(str(v)) for v in r.to_hash().values()) for r in sample]))


def _redis_benchmark(port: int) -> float:
    out = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-P", "16",
                          "-t", "hset", "-n", "1000000", "--csv"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells and cells[0] == "HSET":
            return float(cells[1])
    raise RuntimeError(f"unexpected redis-benchmark output: {out}")


def _export(kind: str, folder: Path) -> Path:
    """A SICoT export of the given backbone with an untrained head (throughput only)."""
    from service.artifact import LabelMap
    from training.export import export_artifact
    from training.models.sicot import SICoTConfig, SICoTModel

    lite = kind == "efficientnet_lite0"
    model = SICoTModel(SICoTConfig(backbone=kind, pretrained=lite, embed_dim=256,
                                   num_classes=1000, num_categories=10, text_encoder=None))
    pre = model.default_preprocess if lite else model.default_preprocess.model_copy(
        update={"input_size": 64})
    labels = LabelMap(sku_ids=[f"S{i}" for i in range(1000)],
                      categories=[f"c{i}" for i in range(10)],
                      sku_category=[i % 10 for i in range(1000)], train_counts=[1] * 1000)
    return export_artifact(model, out_dir=folder, name=kind, labels=labels, preprocess=pre,
                           model_config=model.cfg.model_dump())


def _photos(folder: Path, n: int) -> list[Any]:
    from PIL import Image, ImageDraw

    from service.catalog import CatalogItem

    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        img = Image.new("RGB", (640, 480), tuple(int(v) for v in rng.integers(150, 256, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(6):
            x, y = (int(v) for v in rng.integers(0, 560, 2))
            d.rectangle([x, y % 400, x + 80, y % 400 + 80],
                        fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        path = folder / f"{i:05d}.jpg"
        img.save(path, quality=90)
        items.append(CatalogItem(str(path), f"S{i}", source=f"bench:{i}"))
    return items


def bench_embed(n: int) -> None:
    from service.artifact import load_artifact
    from service.embed import check_rows, embed_items
    from service.settings import ImageLimits

    say(f"### Embedding stage: {n} catalog photos (640×480 JPEG), batch 32, 2 decode threads")
    with tempfile.TemporaryDirectory() as tmp:
        items = _photos(Path(tmp), n)
        t0 = time.perf_counter()
        check_rows(items, ImageLimits(), 2, progress=False)
        decode = n / (time.perf_counter() - t0)
        say("| model | images/s | note |")
        say("|---|---:|---|")
        say(f"| (decode + crop only, no model) | {decode:,.0f} | `--dry-run` path |")
        RESULTS["embed"] = {"decode_only": decode}
        for kind in ("efficientnet_lite0", "tiny_cnn"):
            art = load_artifact(_export(kind, Path(tmp) / "art"))
            size = art.config.preprocess.input_size
            embed_items(items[:32], art, progress=False)  # warm-up
            t0 = time.perf_counter()
            res = embed_items(items, art, batch_size=32, workers=2, progress=False)
            rate = len(res.ok) / (time.perf_counter() - t0)
            say(f"| SICoT {kind} @ {size} px (ONNX Runtime, CPU) | {rate:,.1f} | "
                f"{1e3 / rate:.1f} ms/image |")
            RESULTS["embed"][kind] = rate


def clustered(n: int, d: int, seed: int, clusters: int = 100, latent: int = 64,
              scale: float = 0.5, noise: float = 0.3) -> np.ndarray:
    """Product-like embeddings: 100 'categories', each a 64-dim patch around its centre, plus
    isotropic noise; L2-normalised (mean cosine of the 1st / 10th true neighbour ~0.47 / 0.36
    at 100k).  Chosen so that the methods differ: easier data gives every index ~1.0.  The
    structure is fixed; ``seed`` draws the points."""
    shape = np.random.default_rng(7)
    centres = shape.standard_normal((clusters, d)).astype(np.float32)
    bases = (shape.standard_normal((clusters, latent, d)) * scale).astype(np.float32)
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, clusters, n)
    x = centres[lab]
    x += noise * rng.standard_normal((n, d), dtype=np.float32)
    for c in range(clusters):
        idx = np.flatnonzero(lab == c)
        x[idx] += rng.standard_normal((len(idx), latent), dtype=np.float32) @ bases[c]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _latency(index: VectorIndex, q: np.ndarray, mode: str, single: int) -> tuple[float, float]:
    times = []
    for i in range(single):
        t0 = time.perf_counter()
        index.search(q[i:i + 1], 10, mode=mode)  # type: ignore[arg-type]
        times.append(time.perf_counter() - t0)
    batches = []
    for s in range(0, min(len(q), 640), 64):
        t0 = time.perf_counter()
        index.search(q[s:s + 64], 10, mode=mode)  # type: ignore[arg-type]
        batches.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, statistics.median(batches) * 1e3


def _index_bytes(index: VectorIndex, mode: str) -> int:
    import faiss

    if mode == "binary":
        return int(faiss.serialize_index_binary(index.binary_index).nbytes)
    return int(faiss.serialize_index(index.float_index).nbytes)


def bench_faiss(n: int, d: int, nq: int, hnsw_float_max: int, only: str = "") -> None:
    say(f"### FAISS at {n:,} × {d}-d clustered vectors, {nq} held-out queries, k = 10")
    t0 = time.perf_counter()
    x, q = clustered(n, d, seed=1), clustered(nq, d, seed=2)
    _, truth = exact_search(x, q, 10)
    say(f"(data {time.perf_counter() - t0:.1f} s; exact ground truth included)\n")
    configs = [("Flat (exact)", "Flat", None), ("HNSW32 (efSearch 128)", "HNSW32", None),
               ("IVF1024,Flat (nprobe 16)", "IVF1024,Flat", None),
               ("binary ITQ-256 flat + re-rank 100", "Flat", "flat"),
               ("binary ITQ-256 HNSW32 + re-rank 100", "Flat", "hnsw"),
               ("binary ITQ-256 IVF1024 (nprobe 16) + re-rank 100", "Flat", "ivf")]
    say("| index | build s | index MB | batch 1 ms/query | batch 64 ms/batch | recall@10 |")
    say("|---|---:|---:|---:|---:|---:|")
    res: dict[str, Any] = {}
    for label, factory, binary in configs:
        if only and only not in label:
            continue
        if factory == "HNSW32" and n > hnsw_float_max:
            say(f"| {label} | skipped | | | | |")
            continue
        spec = IndexSpec(float_factory=factory,
                         binary=BinarySpec(kind=binary or "none", nlist=1024))
        if binary:  # the float part is not what is measured: build it without cost
            spec = spec.model_copy(update={"float_factory": "Flat"})
        t0 = time.perf_counter()
        index = VectorIndex.build(x, spec)
        build = time.perf_counter() - t0
        mode = "binary" if binary else "float"
        single = 20 if (factory == "Flat" and not binary and n >= 1_000_000) else 100
        lat1, lat64 = _latency(index, q, mode, single)
        _, rows = index.search(q, 10, mode=mode)  # type: ignore[arg-type]
        rec = recall_at_k(rows, truth, 10)
        mb = _index_bytes(index, mode) / 1e6
        say(f"| {label} | {build:.1f} | {mb:,.0f} | {lat1:.2f} | {lat64:.1f} | {rec:.3f} |")
        res[label] = {"build_s": build, "mb": mb, "batch1_ms": lat1, "batch64_ms": lat64,
                      "recall_at_10": rec}
        del index
    say(f"\nBinary rows re-rank with the float vectors (embeddings.npy, memory-mapped: "
        f"{n * d * 4 / 1e6:,.0f} MB on disk, only candidates' rows are read).")
    RESULTS[f"faiss_{n}"] = res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--sections", default="redis,embed,faiss")
    p.add_argument("--skus", type=int, default=100_000)
    p.add_argument("--one-by-one", type=int, default=10_000)
    p.add_argument("--embed-images", type=int, default=256)
    p.add_argument("--faiss-sizes", default="100000,1000000")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--hnsw-float-max", type=int, default=200_000,
                   help="skip the float HNSW build above this size (~8 min at 1M here)")
    p.add_argument("--only", default="", help="FAISS: only configurations whose label has this")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    sections = set(args.sections.split(","))
    say(f"Machine: {os.cpu_count()} CPUs; python {sys.version.split()[0]}\n")
    if "redis" in sections:
        bench_redis(args.skus, args.one_by_one)
        say()
    if "embed" in sections:
        bench_embed(args.embed_images)
        say()
    if "faiss" in sections:
        for n in (int(s) for s in args.faiss_sizes.split(",")):
            bench_faiss(n, args.dim, args.queries, args.hnsw_float_max, args.only)
            say()
    if args.json:
        args.json.write_text(json.dumps(RESULTS, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
