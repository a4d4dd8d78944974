"""Request options and response bodies of the public API (they become the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SkuMetadata(BaseModel):
    """What the index says about a SKU (written by index_builder)."""

    title: str = ""
    tags: list[str] = Field(default_factory=list)
    category: str = ""
    image: str = Field("", description="URI of the SKU's catalog image")
    thumbnail_url: str | None = Field(
        None, description="path of a small JPEG served by this API, when the index holds one"
    )


class Candidate(SkuMetadata):
    sku_id: str
    score: float = Field(ge=0.0, le=1.0, description="confidence in [0, 1]")
    source: Literal["classifier", "index", "both"] = Field(
        description="classifier: the SKU classifier; index: nearest catalog images; both: agreed"
    )


class CategoryScore(BaseModel):
    name: str
    model: float = Field(description="category head probability")
    search: float = Field(description="similarity-weighted vote of the nearest catalog images")
    fused: float = Field(description="weighted average of the two")


class CategoryPrediction(CategoryScore):
    top: list[CategoryScore] = Field(default_factory=list, description="best categories first")
    constrained_to: list[str] = Field(
        default_factory=list, description="categories the SKU candidates were restricted to"
    )


class BoxUsed(BaseModel):
    pixels: tuple[float, float, float, float] = Field(description="x0, y0, x1, y1 in pixels")
    normalized: tuple[float, float, float, float] = Field(description="the same, divided by size")
    source: Literal["localizer", "roi", "full_image"]
    score: float | None = Field(None, description="localizer score of the box")


class ImageSize(BaseModel):
    width: int
    height: int


class RecognizeResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    request_id: str
    status: Literal["recognized", "no_match"] = Field(
        description="no_match: no candidate reached min_score (candidates are still listed)"
    )
    sku: Candidate | None = Field(description="the best SKU, or null when status is no_match")
    candidates: list[Candidate]
    category: CategoryPrediction | None
    box: BoxUsed
    image_size: ImageSize
    model_version: str
    localizer_version: str | None
    index_version: str
    index_built_at: str
    timings_ms: dict[str, float] = Field(description="time spent in each stage, and total")
    retained: bool = Field(False, description="the crop and answer were kept (opt-in) for "
                           "POST /feedback and DELETE /queries/{request_id}")


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable reason, e.g. undecodable_image")
    message: str
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    ready: bool
    checks: dict[str, bool]
    model_version: str | None = None
    localizer_version: str | None = None
    index_version: str | None = None
    published_index_version: str | None = Field(
        None, description="the version Redis points at; differs from index_version while a "
        "newly published version loads, or when it could not be loaded (see detail.index)")
    detail: dict[str, str] = Field(default_factory=dict)
