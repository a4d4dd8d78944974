"""Closed-loop load on POST /recognize over loopback, against the raw models' ceiling.

Uses the artifacts of a demo run (``sku-demo --no-serve --out DIR`` or ``make demo``): builds
the index into a private redis-server, starts ``sku-serve`` as a subprocess (the real server:
uvicorn + uvloop + httptools), then for micro-batching off and on, at each concurrency, runs
``C`` clients that each send the next query photo as soon as the previous answer came back,
for ``--duration`` seconds.  Prints requests/s, p50/p95/p99 latency and errors, and the
throughput of the raw ONNX models alone (localizer + SICoT, batch 1, preprocessed input) in
the same run, with the ratio of the service to it.

    python bench/recognize_load.py --demo-dir demo-output --duration 30

``--mode objects`` instead measures, in one run on one service (batching off), what each extra
object costs: ``max_objects`` 1, 3 and 5 (``--max-objects``), then ``max_objects=1`` with a
selective ``filter`` (the catalog label of the fewest SKUs), at each concurrency; then the
same points in-process (the service's Recognizer, stage medians, points interleaved).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from demo.run import build_index  # noqa: E402
from service.artifact import load_artifact  # noqa: E402
from service.imageio import decode_image  # noqa: E402
from service.label_filter import labels_of  # noqa: E402
from service.preprocess import preprocess  # noqa: E402
from service.redis_server import PrivateRedisServer, free_port  # noqa: E402
from service.settings import OnnxRuntimeSettings  # noqa: E402

KEY = "bench-key-0123456789"


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def raw_ceiling(sicot: Path, localizer: Path | None, photos: list[bytes], seconds: float,
                threads: int) -> dict[str, float]:
    """Images/s of the models alone on preprocessed inputs (no decode, HTTP or Redis), and
    with decode + preprocessing, one stream at batch 1."""
    rt = OnnxRuntimeSettings(intra_op_threads=threads)
    s_art = load_artifact(sicot, rt)
    l_art = load_artifact(localizer, rt) if localizer else None
    imgs = [decode_image(p) for p in photos[:16]]
    xs = [preprocess(im, s_art.preprocess)[None] for im in imgs]
    ls = [preprocess(im, l_art.preprocess)[None] for im in imgs] if l_art else []
    out: dict[str, float] = {}
    for name, with_decode in (("models_only", False), ("decode_preprocess_models", True)):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            i = n % len(imgs)
            if with_decode:
                im = decode_image(photos[i])
                if l_art:
                    l_art.model.run(preprocess(im, l_art.preprocess)[None])
                s_art.model.run(preprocess(im, s_art.preprocess)[None])
            else:
                if l_art:
                    l_art.model.run(ls[i])
                s_art.model.run(xs[i])
            n += 1
        out[name] = n / (time.perf_counter() - t0)
    return out


def load(port: int, photos: list[bytes], concurrency: int, seconds: float,
         path: str = "/recognize") -> dict[str, float]:
    lat: list[float] = []
    objects: list[int] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client(worker: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        i = worker
        mine: list[float] = []
        found: list[int] = []
        while time.perf_counter() < stop:
            body = photos[i % len(photos)]
            i += concurrency
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body,
                             headers={"Content-Type": "image/jpeg", "X-API-Key": KEY})
                resp = conn.getresponse()
                answer = resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            if ok:
                mine.append((time.perf_counter() - t0) * 1000.0)
                found.append(len(json.loads(answer).get("objects", [None])))
            else:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            lat.extend(mine)
            objects.extend(found)

    t0 = time.perf_counter()
    workers = [threading.Thread(target=client, args=(w,)) for w in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": len(lat), "rps": len(lat) / wall,
            "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99),
            "mean_ms": statistics.fmean(lat) if lat else float("nan"), "errors": errors[0],
            "objects_mean": statistics.fmean(objects) if objects else float("nan")}


def start_service(env: dict[str, str], port: int, workers: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "service.api.server", "--port", str(port),
                             "--workers", str(workers), "--log-level", "warning"], env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("service did not become ready")


def selective_label(catalog: Path) -> str:
    """The label of the fewest SKUs (ties: the first in order) that the grammar can name."""
    skus: dict[str, set[str]] = {}
    for line in (catalog / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        for label in labels_of(row.get("tags", [])):
            skus.setdefault(label, set()).add(row["sku_id"])
    usable = sorted(lab for lab in skus if " " not in lab)
    return min(usable, key=lambda lab: len(skus[lab]))


def objects_sweep(port: int, photos: list[bytes], args: argparse.Namespace, duration: float,
                  label: str) -> list[dict[str, object]]:
    """p50/p99 and req/s for each max_objects, then max_objects=1 under a selective filter."""
    points = [(f"max_objects={n}", f"/recognize?max_objects={n}") for n in args.max_objects]
    points.append((f"max_objects=1 filter={label}",
                   "/recognize?max_objects=1&filter=" + urllib.parse.quote(label)))
    out: list[dict[str, object]] = []
    for c in (int(x) for x in args.concurrency.split(",")):
        for name, path in points:
            r: dict[str, object] = {"point": name, **load(port, photos, c, duration, path)}
            out.append(r)
            print(f"{name:<34} c={c:<3} {r['rps']:7.1f} req/s  p50 {r['p50_ms']:6.1f}  "
                  f"p99 {r['p99_ms']:6.1f} ms  objects/answer {r['objects_mean']:.2f}  "
                  f"errors {r['errors']}")
    return out


def inprocess_sweep(sicot: Path, localizer: Path | None, index_dir: Path, redis_url: str,
                    photos: list[bytes], max_objects: list[int], label: str,
                    rounds: int) -> dict[str, dict[str, float]]:
    """The service's Recognizer on the published version, in-process, one thread: median ms
    per stage for each point, the points interleaved round by round so that load from other
    processes falls on all of them alike."""
    from service.binary_index import configure_faiss
    from service.label_filter import parse_filter
    from service.recognition import RecognizeOptions
    from service.recognizer import Recognizer
    from service.redis_server import connect
    from service.snapshot import load_snapshot
    from service.store import SkuStore

    configure_faiss().omp_set_num_threads(1)  # as the service does (one query per request)
    rt = OnnxRuntimeSettings(intra_op_threads=1)
    rec = Recognizer(load_artifact(sicot, rt), load_artifact(localizer, rt) if localizer else None)
    store = SkuStore(connect(redis_url))
    version = store.current_version()
    assert version is not None
    snap = load_snapshot(store, index_dir, version)
    imgs = [decode_image(p) for p in photos[:16]]
    points = {f"max_objects={n}": RecognizeOptions(max_objects=n) for n in max_objects}
    points[f"max_objects=1 filter={label}"] = RecognizeOptions(filter=parse_filter(label))
    stages: dict[str, dict[str, list[float]]] = {name: {} for name in points}
    for _ in range(rounds):
        for name, opts in points.items():
            for img in imgs:
                res = rec.recognize(img, snap, store, opts)
                for stage, ms in {**res.timings_ms, "objects": len(res.objects)}.items():
                    stages[name].setdefault(stage, []).append(ms)
    return {name: {k: round(statistics.median(v) if k != "objects" else statistics.fmean(v), 3)
                   for k, v in by.items()} for name, by in stages.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo-dir", type=Path, default=REPO / "demo-output")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per point (≤ 60)")
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--no-localizer", action="store_true")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--mode", choices=("batching", "objects"), default="batching",
                   help="batching: micro-batching off/on; objects: max_objects and a filter")
    p.add_argument("--max-objects", type=int, nargs="+", default=[1, 3, 5],
                   help="objects mode: the max_objects values, in one run")
    p.add_argument("--rounds", type=int, default=10,
                   help="objects mode: interleaved in-process rounds over 16 photos")
    args = p.parse_args(argv)
    demo = args.demo_dir.resolve()
    sicot = Path(json.loads((demo / "runs" / "sicot" / "report.json").read_text())["artifact"])
    localizer = None if args.no_localizer else demo / "runs" / "localizer" / "artifact"
    queries = demo / "catalog" / "queries"
    rows = [json.loads(x) for x in (queries / "manifest.jsonl").read_text().splitlines()]
    photos = [(queries / r["image"]).read_bytes() for r in rows[:64]]
    duration = min(args.duration, 60.0)
    results: dict[str, object] = {"duration_s": duration, "workers": args.workers,
                                  "threads": args.threads, "localizer": bool(localizer)}
    ceiling = raw_ceiling(sicot, localizer, photos, min(duration, 15.0), args.threads)
    results["ceiling_per_stream"] = ceiling
    print(f"raw models, one stream: {ceiling['models_only']:.1f} img/s models only, "
          f"{ceiling['decode_preprocess_models']:.1f} img/s with decode + preprocess")
    with PrivateRedisServer() as redis:
        index_dir = demo / "bench-index"
        build_index(demo / "catalog", sicot, index_dir, redis.url)
        for batching in (False, True) if args.mode == "batching" else (False,):
            port = free_port()
            env = dict(os.environ, REDIS_URL=redis.url, SKU_SERVICE_MODEL_DIR=str(sicot),
                       SKU_SERVICE_INDEX_DIR=str(index_dir), SKU_SERVICE_API_KEYS=json.dumps([KEY]),
                       SKU_SERVICE_BATCHING=str(batching).lower(),
                       SKU_SERVICE_ONNX__INTRA_OP_THREADS=str(args.threads),
                       SKU_SERVICE_MAX_QUEUE="64")
            if localizer:
                env["SKU_SERVICE_LOCALIZER_DIR"] = str(localizer)
            proc = start_service(env, port, args.workers)
            try:
                load(port, photos, 2, 3.0)  # warm-up
                if args.mode == "objects":
                    label = selective_label(demo / "catalog" / "catalog")
                    results["selective_filter"] = label
                    results["objects"] = objects_sweep(port, photos, args, duration, label)
                    proc.terminate()  # the in-process points run alone
                    proc.wait(timeout=15)
                    results["objects_in_process"] = inprocess_sweep(
                        sicot, localizer, index_dir, redis.url, photos, args.max_objects, label,
                        args.rounds)
                    for name, med in results["objects_in_process"].items():
                        print(f"in-process {name:<34} median " + "  ".join(
                            f"{k} {v:.1f}" for k, v in med.items()))
                    continue
                rows_out = []
                for c in (int(x) for x in args.concurrency.split(",")):
                    r = load(port, photos, c, duration)
                    r["ratio_to_ceiling"] = r["rps"] / ceiling["decode_preprocess_models"]
                    rows_out.append(r)
                    print(f"batching={'on ' if batching else 'off'} c={c:<3} "
                          f"{r['rps']:7.1f} req/s  p50 {r['p50_ms']:6.1f}  p95 {r['p95_ms']:6.1f}"
                          f"  p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}  "
                          f"ratio to one-stream ceiling {r['ratio_to_ceiling']:.2f}")
                results[f"batching_{'on' if batching else 'off'}"] = rows_out
            finally:
                proc.terminate()
                proc.wait(timeout=15)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
