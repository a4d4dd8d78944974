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


class MatchedImage(BaseModel):
    """The SKU's catalog image most similar to the recognised crop ("looks like this")."""

    row: int = Field(ge=0, description="row of the index version (line of its rows.jsonl)",
                     examples=[412])
    image: str = Field(description="URI of that catalog image",
                       examples=["gs://catalog/flora-400.jpg"])
    similarity: float = Field(description="cosine similarity of its embedding to the crop's",
                              examples=[0.83])


class Candidate(SkuMetadata):
    sku_id: str
    score: float = Field(ge=0.0, le=1.0, description="confidence in [0, 1]")
    source: Literal["classifier", "index", "both"] = Field(
        description="classifier: the SKU classifier; index: nearest catalog images; both: agreed"
    )
    labels: list[str] = Field(
        default_factory=list, description="the SKU's labels as key=value (what filter matches)",
        examples=[["brand=Flora", "size=400ml", "tag=vegan"]])
    matched_image: MatchedImage | None = Field(
        None, description="its catalog image nearest to the crop; null if the index has none")


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


class DetectedObject(BaseModel):
    """One product found in the photo, recognised on its own crop."""

    box: BoxUsed = Field(description="the crop it was recognised from (the localizer's box "
                         "grown by the crop margin, or by the context margin when the wider "
                         "view answered); send box.pixels back as roi to recognise only it")
    score: float | None = Field(None, description="the localizer's score of the box "
                                "(null for a roi or the whole photo)", examples=[0.91])
    category: CategoryPrediction | None
    sku: Candidate | None = Field(description="its best SKU, or null below min_score")
    candidates: list[Candidate] = Field(description="its own constrained top-k, best first")
    fewer_than_top_k: bool = Field(
        description="fewer than top_k candidates passed (a selective filter, a small catalog)")


class FilterApplied(BaseModel):
    expression: str = Field(examples=["brand=Flora AND (size=400ml OR size=250ml)"])
    skus_passing: int = Field(description="SKUs of the served index version whose labels pass")
    search_k: int = Field(description="neighbours searched in the index (deeper when few pass)")


class RecognizeResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    request_id: str
    status: Literal["recognized", "no_match"] = Field(
        description="no_match: no candidate reached min_score (candidates are still listed)"
    )
    sku: Candidate | None = Field(description="the best SKU, or null when status is no_match; "
                                  "the main object's (objects[0])")
    candidates: list[Candidate] = Field(description="the main object's candidates")
    category: CategoryPrediction | None
    box: BoxUsed
    objects: list[DetectedObject] = Field(
        default_factory=list, description="every object recognised, at most max_objects, the "
        "main one first (the same as sku, candidates, category and box)")
    fewer_than_top_k: bool = Field(False, description="the main object got fewer than top_k "
                                   "candidates (see objects[].fewer_than_top_k)")
    filter: FilterApplied | None = Field(None, description="the label filter applied, if any")
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
    position: int | None = Field(
        None, description="invalid_filter only: 0-based character offset of the problem in "
        "the filter", examples=[14])


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
