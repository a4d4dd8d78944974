"""Soak: a long open-loop run at a fraction of measured capacity, good and bad uploads mixed.

Uses a demo run's artifacts (``sku-demo --no-serve --out DIR``), builds the index into a
private redis-server and starts ``sku-serve --workers N`` (the real server).  First measures
capacity (closed loop, ``--capacity-clients`` clients), then sends requests at ``--load`` of it
for ``--duration`` seconds: ``--bad`` of them hostile (random bytes, truncated JPEG, a tiny
image, text sent as an image, a nested roi), the rest real query photos.  Prints, per window,
the counts by status and p50/p99 of the good requests, then the unexpected answers (a 5xx, a
dropped connection, a good photo not answered 200, a bad one not answered its 4xx) and the RSS
of each worker at the start (after warm-up) and the end.

    python bench/soak.py --demo-dir demo-output --duration 600 --load 0.8
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from recognize_load import KEY, load, pct, start_service  # noqa: E402

from demo.run import build_index  # noqa: E402
from service.redis_server import PrivateRedisServer, free_port  # noqa: E402


def bad_inputs(photo: bytes, rng: random.Random) -> list[tuple[str, bytes, str, set[int]]]:
    """(name, body, query, accepted statuses) of the hostile uploads."""
    import io

    from PIL import Image

    tiny = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiny, format="PNG")
    return [
        ("random_bytes", rng.randbytes(4096), "", {415}),
        ("truncated_jpeg", photo[: len(photo) // 3], "", {400}),
        ("tiny_image", tiny.getvalue(), "", {400}),
        ("text_as_image", b"not an image\n" * 100, "", {415}),
        ("nested_roi", photo, "?roi=" + "%5B" * 3000, {422}),
    ]


def worker_rss_kb(parent: int) -> dict[int, int]:
    """RSS of the server's worker processes (its children), from /proc."""
    out: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == parent:
                status = (d / "status").read_text()
                out[int(d.name)] = int(next(x for x in status.splitlines()
                                            if x.startswith("VmRSS")).split()[1])
        except (OSError, StopIteration, ValueError, IndexError):
            continue
    return out


def soak(port: int, photos: list[bytes], bad: list[tuple[str, bytes, str, set[int]]],
         rate: float, seconds: float, bad_share: float, window_s: float, seed: int) -> dict:
    rng = random.Random(seed)
    local = threading.local()
    lock = threading.Lock()
    windows: list[dict] = []
    unexpected: Counter[str] = Counter()
    t_start = time.perf_counter()

    def window(t: float) -> dict:
        i = int((t - t_start) // window_s)
        with lock:
            while len(windows) <= i:
                windows.append({"statuses": Counter(), "good_ms": []})
            return windows[i]

    def one(body: bytes, query: str, ok: set[int], name: str) -> None:
        conn = getattr(local, "conn", None) or http.client.HTTPConnection("127.0.0.1", port,
                                                                          timeout=30)
        local.conn = conn
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/recognize" + query, body=body,
                         headers={"Content-Type": "image/jpeg", "X-API-Key": KEY})
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            status = 0
            conn.close()
            local.conn = None
        w = window(t0)
        with lock:
            w["statuses"][status] += 1
            if name == "good" and status == 200:
                w["good_ms"].append((time.perf_counter() - t0) * 1000.0)
            elif status not in ok and status != 429:  # 429 is load shedding, counted apart
                unexpected[f"{name}:{status}"] += 1

    with ThreadPoolExecutor(64) as pool:
        n = 0
        while (now := time.perf_counter()) - t_start < seconds:
            due = t_start + n / rate
            if due > now:
                time.sleep(due - now)
            if rng.random() < bad_share:
                name, body, query, ok = rng.choice(bad)
            else:
                name, body, query, ok = "good", rng.choice(photos), "", {200}
            pool.submit(one, body, query, ok, name)
            n += 1
    rows = [{"window": i, "statuses": dict(w["statuses"]), "p50_ms": pct(w["good_ms"], 50),
             "p99_ms": pct(w["good_ms"], 99)} for i, w in enumerate(windows)]
    return {"sent": n, "windows": rows, "unexpected": dict(unexpected)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--demo-dir", type=Path, default=REPO / "demo-output")
    p.add_argument("--duration", type=float, default=600.0)
    p.add_argument("--load", type=float, default=0.8, help="share of measured capacity")
    p.add_argument("--bad", type=float, default=0.2, help="share of hostile uploads")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--capacity-clients", type=int, default=8)
    p.add_argument("--window", type=float, default=60.0, help="seconds per reported window")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    demo = args.demo_dir.resolve()
    sicot = Path(json.loads((demo / "runs" / "sicot" / "report.json").read_text())["artifact"])
    localizer = demo / "runs" / "localizer" / "artifact"
    queries = demo / "catalog" / "queries"
    rows = [json.loads(x) for x in (queries / "manifest.jsonl").read_text().splitlines()]
    photos = [(queries / r["image"]).read_bytes() for r in rows[:64]]
    bad = bad_inputs(photos[0], random.Random(args.seed))
    with PrivateRedisServer() as redis:
        index_dir = demo / "bench-index"
        build_index(demo / "catalog", sicot, index_dir, redis.url)
        port = free_port()
        env = dict(os.environ, REDIS_URL=redis.url, SKU_SERVICE_MODEL_DIR=str(sicot),
                   SKU_SERVICE_LOCALIZER_DIR=str(localizer), SKU_SERVICE_INDEX_DIR=str(index_dir),
                   SKU_SERVICE_API_KEYS=json.dumps([KEY]), SKU_SERVICE_ONNX__INTRA_OP_THREADS="1")
        proc = start_service(env, port, args.workers)
        try:
            load(port, photos, 2, 5.0)  # warm-up
            cap = load(port, photos, args.capacity_clients, 20.0)["rps"]
            rate = cap * args.load
            print(f"capacity {cap:.1f} req/s (closed loop, {args.capacity_clients} clients); "
                  f"soak at {rate:.1f} req/s for {args.duration:.0f} s, {args.bad:.0%} hostile")
            rss_start = worker_rss_kb(proc.pid)
            res = soak(port, photos, bad, rate, args.duration, args.bad, args.window, args.seed)
            rss_end = worker_rss_kb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    for w in res["windows"]:
        print(f"t={w['window'] * args.window:5.0f}s  p50 {w['p50_ms']:7.1f}  p99 "
              f"{w['p99_ms']:7.1f} ms  statuses {dict(sorted(w['statuses'].items()))}")
    print(f"sent {res['sent']}; unexpected answers: {res['unexpected'] or 0}")
    for pid in sorted(rss_start):
        a, b = rss_start[pid], rss_end.get(pid, 0)
        print(f"worker {pid}: RSS {a / 1024:.0f} MB → {b / 1024:.0f} MB ({(b - a) / a:+.1%})")
    if args.json:
        args.json.write_text(json.dumps({"capacity_rps": cap, "rate_rps": rate, **res,
                                         "rss_kb": {"start": rss_start, "end": rss_end}},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
