"""Micro-batching of model calls across concurrent requests.

Callers (worker threads) hand in one preprocessed image and block on a future; a single
dispatcher thread gathers up to ``max_batch`` images, waiting at most ``max_wait_ms`` after the
first, runs the model once and hands every caller its row.  A failing batch fails each of its
callers with the same exception, and the dispatcher keeps going.  On a 2-core CPU this rarely
pays (measured: batch 8 ≈ batch 1 in images/s), hence off by default; bench/recognize_load
measures both.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

RunFn = Callable[[np.ndarray], dict[str, np.ndarray]]


class MicroBatcher:
    def __init__(
        self,
        run: RunFn,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._run = run
        self._max_batch = max_batch
        self._max_wait = max_wait_ms / 1000.0
        self._on_batch = on_batch
        self._queue: queue.Queue[tuple[np.ndarray, Future[dict[str, np.ndarray]]] | None] = (
            queue.Queue()
        )
        self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
        self._thread.start()

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run one request's images ``(n, 3, S, S)`` (its objects) through the model, batched
        with other requests'; blocks until its batch is done."""
        if x.ndim != 4 or x.shape[0] < 1:
            raise ValueError(f"expected a batch of images (n,3,S,S), got {x.shape}")
        fut: Future[dict[str, np.ndarray]] = Future()
        self._queue.put((x, fut))
        return fut.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _gather(self) -> list[tuple[np.ndarray, Future[dict[str, np.ndarray]]]] | None:
        first = self._queue.get()
        if first is None:
            return None
        items = [first]
        deadline = time.monotonic() + self._max_wait
        while sum(x.shape[0] for x, _ in items) < self._max_batch:
            remaining = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=max(remaining, 0)) if remaining > 0 else (
                    self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)  # finish this batch, then stop
                break
            items.append(nxt)
        return items

    def _loop(self) -> None:
        while True:
            items = self._gather()
            if items is None:
                return
            # images of one batch must share a shape; split by shape if they do not
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, (x, _) in enumerate(items):
                by_shape.setdefault(tuple(x.shape[1:]), []).append(i)
            for idxs in by_shape.values():
                self._run_group([items[i] for i in idxs])

    def _run_group(self, group: list[tuple[np.ndarray, Future[dict[str, np.ndarray]]]]) -> None:
        try:
            batch = np.concatenate([x for x, _ in group], axis=0)
            outs = self._run(batch)
            if self._on_batch is not None:
                self._on_batch(batch.shape[0])
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
            for _, fut in group:
                fut.set_exception(exc)
            return
        start = 0
        for x, fut in group:
            end = start + x.shape[0]
            fut.set_result({k: v[start:end] for k, v in outs.items()})
            start = end
