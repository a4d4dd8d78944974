"""Prometheus metrics, one registry per app so that several apps (tests) never collide."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
)

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "sku_http_requests", "HTTP requests by route and status", ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "sku_http_request_seconds", "request latency by route", ["route"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.stage = Histogram(
            "sku_stage_seconds", "time per pipeline stage", ["stage"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.queue_depth = Gauge(
            "sku_queue_depth", "recognize requests admitted and not finished", registry=r
        )
        self.batch_size = Histogram(
            "sku_batch_size", "images per model call", buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=r,
        )
        self.recognitions = Counter(
            "sku_recognitions", "recognize outcomes", ["status"], registry=r
        )
        self.versions = Info("sku_loaded", "loaded model and index versions", registry=r)
        self.index_reloads = Counter(
            "sku_index_reloads", "index polls by result: loaded, unchanged, failed (the "
            "published version could not be loaded; the previous one is served)", ["result"],
            registry=r,
        )
        self.index_behind = Gauge(
            "sku_index_behind", "1 while the served index version is not the published one",
            registry=r,
        )
        self.retained = Counter(
            "sku_queries_retained", "query retention outcomes", ["result"], registry=r
        )
        self.feedback = Counter(
            "sku_feedback", "POST /feedback outcomes by kind", ["kind", "result"], registry=r
        )
        # agreement rate with the top-1 answer = yes / (yes + no), per kind
        self.feedback_agreement = Counter(
            "sku_feedback_agreement", "accepted feedback naming the answer's top-1 SKU",
            ["kind", "agrees"], registry=r,
        )

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            if stage != "total":
                self.stage.labels(stage).observe(ms / 1000.0)

    def set_versions(self, **versions: str | None) -> None:
        self.versions.info({k: v or "" for k, v in versions.items()})
