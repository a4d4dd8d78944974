"""What the service holds while it runs (Triton-style lifecycle: initialize once, execute per
request, finalize at shutdown): models, Redis, the followed index, the bounded worker pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import redis

from service.api.auth import ApiKeys
from service.api.metrics import Metrics
from service.api.settings import ServiceSettings
from service.artifact import ArtifactError, load_artifact
from service.batching import MicroBatcher
from service.binary_index import configure_faiss
from service.fusion import FUSION_WEIGHT
from service.localize import LocalizerConfig
from service.recognition import IndexSnapshot, OnlineConfig
from service.recognizer import Recognizer
from service.redis_server import PrivateRedisServer, RedisUnavailable, connect, redact_url
from service.snapshot import IndexFollower
from service.store import SkuStore

# what clients are told; the address and the driver's error go to the log only
REDIS_DOWN = "the SKU store (Redis) is not answering"
AUTH_OFF = "authentication is disabled (SKU_SERVICE_AUTH=disabled): anyone can call the API"

log = logging.getLogger(__name__)


@dataclass
class ServiceState:
    settings: ServiceSettings
    metrics: Metrics
    recognizer: Recognizer | None = None
    store: SkuStore | None = None
    follower: IndexFollower | None = None
    executor: ThreadPoolExecutor | None = None
    batcher: MicroBatcher | None = None
    redis_server: PrivateRedisServer | None = None
    redis_client: redis.Redis | None = None
    problems: dict[str, str] = field(default_factory=dict)
    api_keys: ApiKeys | None = None
    inflight: int = 0
    _poll_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle
    def initialize(self) -> None:
        """Load models and connect Redis; a failure is recorded (→ /readyz false, 503)
        rather than raised, so /healthz and /metrics keep answering."""
        s = self.settings
        self.api_keys = ApiKeys(s)
        if not self.api_keys.enabled:
            log.warning(AUTH_OFF)
        self.executor = ThreadPoolExecutor(s.max_concurrency, thread_name_prefix="recognize")
        # one query per request: FAISS's OpenMP team only adds spin-waits next to ONNX Runtime
        # (an exact search over 3k rows took 144 ms with default threads, 1.4 ms with one)
        configure_faiss().omp_set_num_threads(s.faiss_threads)
        self._load_models()
        self._connect_redis()
        if self.store is not None and self.recognizer is not None:
            self.follower = IndexFollower(
                self.store, s.index_dir,
                expected_model_version=self.recognizer.sicot.config.model_version,
                on_change=lambda snap: self._publish_versions(),
                served_ttl_s=s.served_ttl_s,
            )
            self.refresh_index()
        self._publish_versions()

    def _load_models(self) -> None:
        s = self.settings
        try:
            sicot = load_artifact(s.model_dir, s.onnx)
            localizer = load_artifact(s.localizer_dir, s.onnx) if s.localizer_dir else None
        except (ArtifactError, OSError) as exc:
            self.problems["models"] = "the models could not be loaded (see the log)"
            log.error("models not loaded: %s", exc)
            return
        run: Callable[[np.ndarray], dict[str, np.ndarray]]
        if s.batching:
            self.batcher = MicroBatcher(
                sicot.model.run, max_batch=s.batch_max_size, max_wait_ms=s.batch_max_wait_ms,
                on_batch=lambda n: self.metrics.batch_size.observe(n),
            )
            run = self.batcher
        else:
            def run_counted(x: np.ndarray) -> dict[str, np.ndarray]:
                self.metrics.batch_size.observe(x.shape[0])
                return sicot.model.run(x)

            run = run_counted
        loc_cfg = LocalizerConfig.from_model_cfg(
            localizer.config.model if localizer else {},
            score_threshold=s.localizer_score_threshold,
            size_power=s.localizer_size_power, flip=s.localizer_flip,
        )
        online = OnlineConfig(
            margin=s.localizer_margin, extra_margins=s.extra_crop_margins,
            context_margin=s.context_margin, context_below=s.context_below,
            search_k=s.search_k, localizer=loc_cfg,
            filter_max_search_k=s.filter_max_search_k,
            # the shortlist only serves retained queries: no per-request top-N otherwise
            shortlist=s.retain_shortlist if s.retain_queries else 0,
            fusion_weight=float(sicot.config.evaluation.get("fusion_weight", FUSION_WEIGHT)),
        )
        self.recognizer = Recognizer(sicot, localizer, online, run_sicot=run)
        log.info("models loaded: %s%s", sicot.config.model_version,
                 f", localizer {localizer.config.model_version}" if localizer else "")

    def _connect_redis(self) -> None:
        s = self.settings
        try:
            url = s.redis_url
            if not url:
                log.warning("REDIS_URL is not set: starting a private, empty redis-server "
                            "(fine for a demo; production sets REDIS_URL)")
                self.redis_server = PrivateRedisServer().start()
                url = self.redis_server.url
            t = s.redis_timeouts
            self.redis_client = connect(url, timeout_s=t.read_s, connect_timeout_s=t.connect_s)
        except RedisUnavailable as exc:
            self.problems["redis"] = REDIS_DOWN
            log.error("redis unavailable: %s", exc)
            return
        self.store = SkuStore(self.redis_client, s.key_prefix)
        log.info("redis: %s", redact_url(url))

    def refresh_index(self) -> None:
        if self.follower is None:
            return
        try:
            changed = self.follower.refresh()
        except Exception as exc:  # noqa: BLE001 - Redis down: keep serving what we have
            self.problems["redis"] = REDIS_DOWN
            log.warning("cannot read the index pointer: %s", exc)
            return
        self.problems.pop("redis", None)
        behind = self.follower.behind
        self.metrics.index_reloads.labels(
            "loaded" if changed else "failed" if behind and self.follower.last_error
            else "unchanged").inc()
        self.metrics.index_behind.set(1 if behind else 0)
        self._publish_versions()  # the published version may have moved without a load

    async def poll_index(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.index_poll_s)
            await loop.run_in_executor(None, self.refresh_index)

    def start_polling(self) -> None:
        self._poll_task = asyncio.get_running_loop().create_task(self.poll_index())

    async def finalize(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        if self.batcher is not None:
            self.batcher.close()
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
        if self.redis_client is not None:
            self.redis_client.close()
        if self.redis_server is not None:
            self.redis_server.stop()

    # ------------------------------------------------------------------ status
    @property
    def snapshot(self) -> IndexSnapshot | None:
        return self.follower.snapshot if self.follower is not None else None

    def readiness(self) -> tuple[dict[str, bool], dict[str, str]]:
        checks = {
            "models": self.recognizer is not None,
            "index": self.snapshot is not None,
            "redis": False,
        }
        detail = dict(self.problems)
        if self.settings.auth == "disabled":
            detail["auth"] = AUTH_OFF
            log.warning(AUTH_OFF)
        if self.redis_client is not None:
            try:
                checks["redis"] = bool(self.redis_client.ping())
            except Exception as exc:  # noqa: BLE001
                detail["redis"] = REDIS_DOWN  # where it is stays in the log, not the answer
                log.warning("readiness: redis ping failed: %s", exc)
        if not checks["index"] and self.follower is not None and self.follower.last_error:
            detail["index"] = self.follower.last_error
        elif self.follower is not None and self.follower.behind:
            # still ready: it answers from the version it has, like before the publish
            detail["index"] = self.follower.behind
        return checks, detail

    def _publish_versions(self) -> None:
        r = self.recognizer
        snap = self.snapshot
        self.metrics.set_versions(
            model_version=r.sicot.config.model_version if r else None,
            localizer_version=r.localizer.config.model_version if r and r.localizer else None,
            index_version=snap.version if snap else None,
            published_index_version=self.follower.published if self.follower else None,
        )
