"""Settings of the web service (env prefix ``SKU_SERVICE_``, ``.env`` supported)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.recognition import OnlineConfig
from service.settings import (
    ImageLimits,
    KeyPrefix,
    OnnxRuntimeSettings,
    RedisUrl,
    key_prefix_field,
    load_settings,
    redis_url_field,
)

PREFIX = "SKU_SERVICE_"
# max_objects is bounded by the localizer's own cap on detections after NMS
MAX_OBJECTS_LIMIT = 10
Margin = Annotated[float, Field(ge=0.0, le=1.0)]  # of a crop around a box, per side


def check_key(key: str) -> str:
    if len(key) < 8 or any(c.isspace() for c in key):
        raise ValueError("API keys must be at least 8 characters, without spaces")
    return key


class ClientTimeouts(BaseModel):
    """How long a client may take to send its request; past that it gets 408 and is closed,
    so slow clients cannot hold connections (or queue slots) for ever."""

    header_s: float = Field(10.0, gt=0.0, description="time to send the request line + headers")
    body_total_s: float = Field(30.0, gt=0.0, description="time to send the whole body")
    body_grace_s: float = Field(5.0, ge=0.0, description="time allowed before min rate applies")
    body_min_rate_bps: int = Field(
        8192, gt=0, description="after the grace time, the body must arrive at least this fast"
    )


class RedisTimeouts(BaseModel):
    """Socket timeouts of every Redis call of the service: a frozen Redis gives 503, not a hang."""

    connect_s: float = Field(1.0, gt=0.0)
    read_s: float = Field(0.5, gt=0.0, description="socket timeout of each command")


class ServiceSettings(BaseSettings):
    """Everything the service reads from its environment, validated at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore",
        env_nested_delimiter="__", protected_namespaces=(),
    )

    # where things are
    redis_url: RedisUrl = redis_url_field(PREFIX)
    key_prefix: KeyPrefix = key_prefix_field()
    model_dir: Path = Field(Path("artifacts/sicot"), description="SICoT artifact folder")
    localizer_dir: Path | None = Field(
        None, description="localizer artifact folder; unset = recognise the whole photo"
    )
    index_dir: Path = Field(Path("index"), description="index_builder's output folder")

    # API
    auth: Literal["required", "disabled"] = Field(
        "required", description="'disabled' must be set explicitly to run without API keys"
    )
    api_keys: list[str] = Field(default_factory=list, description="accepted API keys (JSON list)")
    api_keys_file: Path | None = Field(
        None, description="a file of keys, one per line: 'KEY [RATE_PER_S [BURST]]'; re-read "
        "when it changes (rotation without restart)",
    )
    api_key_header: str = "X-API-Key"
    rate_limit_per_s: float | None = Field(
        None, gt=0.0, description="default per-key request rate (token bucket held in Redis, "
        "shared by every worker and replica); unset = no limit",
    )
    rate_limit_burst: int = Field(20, ge=1, description="default per-key bucket size")
    docs_enabled: bool = Field(True, description="serve /docs, /redoc and /openapi.json")
    metrics_require_key: bool = Field(False, description="/metrics asks for an API key too")
    default_top_k: int = Field(5, ge=1, le=50)
    max_top_k: int = Field(50, ge=1, le=200)
    default_min_score: float = Field(0.0, ge=0.0, le=1.0)

    # limits and runtime
    limits: ImageLimits = Field(default_factory=ImageLimits)
    max_concurrency: int = Field(2, ge=1, description="requests computed at once (threads)")
    max_queue: int = Field(32, ge=0, description="requests waiting beyond that; more → 429")
    batching: bool = Field(False, description="micro-batch the recognizer model across requests")
    batch_max_size: int = Field(8, ge=1, le=256)
    batch_max_wait_ms: float = Field(2.0, ge=0.0, le=100.0)
    onnx: OnnxRuntimeSettings = Field(
        # one thread per session: requests run in parallel on max_concurrency threads, and
        # the localizer measured faster on 1 thread than 2 (docs/results/online-path.md)
        default_factory=lambda: OnnxRuntimeSettings(intra_op_threads=1)
    )
    faiss_threads: int = Field(1, ge=1, description="OpenMP threads of FAISS (1 query/request)")
    client_timeouts: ClientTimeouts = Field(default_factory=ClientTimeouts)
    redis_timeouts: RedisTimeouts = Field(default_factory=RedisTimeouts)
    index_poll_s: float = Field(2.0, gt=0.0, description="how often the published pointer is read")
    served_ttl_s: float = Field(
        60.0, gt=0.0, description="how long the served version is marked in Redis (gc keeps it)"
    )
    retry_after_s: int = Field(5, ge=1, description="Retry-After sent with 503")

    # online path
    localizer_margin: float | None = Field(
        None, ge=0.0, le=1.0, description="override of the crop margin around a localizer box; "
        "unset: the recognizer artifact's preprocess.crop_margin (what it was trained with)")
    extra_crop_margins: tuple[Margin, ...] = Field(
        (), max_length=4, description="test-time crops: each localizer box is also cropped "
        "with these margins and the model's outputs are averaged (JSON list, e.g. [0.3]); "
        "one model row per extra crop")
    context_margin: float | None = Field(
        OnlineConfig.context_margin, ge=0.0, le=10.0,
        description="context view: an object whose best candidate scores below "
        "context_below is recognized again from its box grown by this margin (a second "
        "model call for those objects only) and the surer view answers")
    context_below: float = Field(
        OnlineConfig.context_below, ge=0.0, le=1.0,
        description="best-candidate score under which the context view is tried; 0 = off")
    localizer_score_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="lowest detection score kept; unset = the artifact's")
    localizer_size_power: float | None = Field(
        None, ge=0.0, le=10.0,
        description="main-box rule's weight of box size; unset = the artifact's")
    localizer_flip: bool | None = Field(
        None, description="test-time flip of the localizer (the photo and its mirror in one "
        "batch, maps averaged); unset = the artifact's")
    search_k: int = Field(30, ge=1, le=1000, description="neighbours of the category vote")
    max_objects: int = Field(
        MAX_OBJECTS_LIMIT, ge=1, le=MAX_OBJECTS_LIMIT,
        description="most objects one request may ask for (max_objects)")
    filter_max_search_k: int = Field(
        2000, ge=1, le=100_000, description="deepest index search for a selective filter")

    # the learning loop (opt-in; README "Privacy: retained queries and feedback")
    retain_queries: bool = Field(False, description="keep each request's crop and answer")
    retain_full_photo: bool = Field(False, description="also keep the whole photo (JPEG)")
    retention_ttl_s: int = Field(7 * 86400, ge=60, description="how long a query is kept")
    retain_crop_side: int = Field(256, ge=32, le=2048, description="longest side of the crop")
    retain_photo_side: int = Field(1024, ge=64, le=8192, description="... of the whole photo")
    retain_shortlist: int = Field(
        50, ge=0, le=1000, description="the model's most likely SKUs kept with a retained "
        "query: the feedback gate counts a label among them as the model's vote")
    feedback_per_minute: int = Field(60, ge=1, description="POST /feedback per key per minute")
    feedback_stream_maxlen: int = Field(
        1_000_000, ge=1000, description="entries the feedback stream keeps (MAXLEN ~)")

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, v: list[str]) -> list[str]:
        for k in v:
            check_key(k)
        return v

    @model_validator(mode="after")
    def _check_top_k(self) -> ServiceSettings:
        if self.default_top_k > self.max_top_k:
            raise ValueError("default_top_k must not exceed max_top_k")
        if self.auth == "required" and not self.api_keys and self.api_keys_file is None:
            raise ValueError("no API keys: set SKU_SERVICE_API_KEYS (a JSON list) or "
                             "SKU_SERVICE_API_KEYS_FILE, or SKU_SERVICE_AUTH=disabled to run "
                             "without authentication on purpose")
        if self.served_ttl_s < 2 * self.index_poll_s:
            raise ValueError("served_ttl_s must be at least twice index_poll_s (it is renewed "
                             "at every poll)")
        return self


@lru_cache(maxsize=1)
def get_settings() -> ServiceSettings:
    """The process's settings (cached); tests replace it through ``create_app(settings)``."""
    return load_settings(ServiceSettings)
