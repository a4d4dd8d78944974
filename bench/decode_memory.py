"""Memory of decoding large uploads: peak and retained RSS of one process.

Decodes a legal but large PNG (a flat 39 kB file of ``--side``² pixels, under the pixel limit)
``--rounds`` times on ``--threads`` threads at once, as the service's compute threads do, with
the service's draft size.  Prints the RSS before, the peak while decoding, and what stays after,
for each variant: the plain full-size decode (what the service did before issue 10), the reduced
decode, and the reduced decode followed by ``malloc_trim``.  Each variant runs in a fresh
process so that one's heap does not flatter the next.

    python bench/decode_memory.py --side 4900 --threads 2
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_variant(variant: str, side: int, threads: int, rounds: int) -> dict[str, float]:
    from PIL import Image

    from service import imageio
    from service.settings import ImageLimits

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buf, format="PNG", optimize=True)
    data = buf.getvalue()
    limits = ImageLimits(max_pixels=side * side)
    if variant == "full":  # the decode as it was: full size, no trim
        imageio._reduce = lambda img, target: img  # type: ignore[assignment]
    if variant != "reduced+trim":
        imageio.release_freed_memory = lambda: None  # type: ignore[assignment]
    peak = [rss_mb()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    before = rss_mb()
    sampler = threading.Thread(target=sample)
    sampler.start()
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(rounds):
            list(pool.map(lambda _: imageio.decode_image(data, limits, draft_size=512),
                          range(threads)))
    stop.set()
    sampler.join()
    time.sleep(0.2)
    return {"file_kb": len(data) / 1024, "before_mb": before, "peak_mb": peak[0],
            "after_mb": rss_mb()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--side", type=int, default=4900, help="pixels a side (4900² = 24 Mpx)")
    p.add_argument("--threads", type=int, default=2, help="decodes at once (max_concurrency)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.variant:
        sys.stdout.write(json.dumps(run_variant(args.variant, args.side, args.threads,
                                                args.rounds)) + "\n")
        return 0
    print(f"{args.side}x{args.side} PNG ({args.side ** 2 / 1e6:.1f} Mpx), {args.threads} "
          f"decodes at once, {args.rounds} rounds")
    for variant in ("full", "reduced", "reduced+trim"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--side",
                              str(args.side), "--threads", str(args.threads), "--rounds",
                              str(args.rounds)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout)
        print(f"{variant:<13} file {r['file_kb']:.0f} kB  RSS before {r['before_mb']:.0f} MB  "
              f"peak +{r['peak_mb'] - r['before_mb']:.0f} MB  "
              f"kept +{r['after_mb'] - r['before_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
