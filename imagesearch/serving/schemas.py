"""The HTTP request and response bodies (pydantic): what OpenAPI documents and every route validates."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# hard caps of the schema, whatever the settings say: they bound memory before any setting is read
MAX_TEXT = 100_000
MAX_DIM = 65_536
MAX_COUNT = 1_000_000


class SearchRequest(BaseModel):
    """A JSON query: a text, a catalog image id ("more like this"), or a raw embedding."""

    text: str | None = Field(
        default=None, max_length=MAX_TEXT, description="text query (at most service.max_text_chars)"
    )
    image_id: str | None = Field(default=None, max_length=128, description="catalog image to find more like")
    embedding: list[float] | None = Field(
        default=None, max_length=MAX_DIM, description="a vector in the model's space"
    )
    k: int = Field(default=10, ge=1, le=MAX_COUNT, description="results per page (at most service.max_k)")
    offset: int = Field(default=0, ge=0, le=MAX_COUNT, description="at most service.max_offset")
    diversity: float | None = Field(default=None, ge=0, le=1, description="MMR lambda; 1.0 = off")
    dedup: bool = True


class ResultOut(BaseModel):
    id: str
    score: float
    rank: int
    caption: str
    image_url: str
    thumbnail_url: str


class SearchResponse(BaseModel):
    query_id: str
    model_version: str
    results: list[ResultOut]
    timings_ms: dict[str, float]


class KnnRequest(BaseModel):
    """The body clip-retrieval's ClipClient posts; its safety/aesthetic/mclip options do not apply here."""

    model_config = ConfigDict(extra="ignore")
    text: str | None = Field(default=None, max_length=MAX_TEXT)
    image: str | None = Field(default=None, description="base64-encoded image bytes")
    image_url: str | None = Field(default=None, max_length=2048)
    embedding_input: list[float] | None = Field(default=None, max_length=MAX_DIM)
    modality: str = Field(default="image", max_length=16)
    num_images: int = Field(default=40, ge=1, le=MAX_COUNT)
    deduplicate: bool = True


class KnnResult(BaseModel):
    id: str
    similarity: float
    url: str
    caption: str


class ReloadRequest(BaseModel):
    index_dir: str | None = Field(
        default=None,
        max_length=4096,
        description="default: the index the service started with; only folders beside it or under "
        "the workspace's index directory",
    )


class ClickEvent(BaseModel):
    type: Literal["click"] = "click"
    query_id: str = Field(min_length=1, max_length=64)
    rank: int = Field(ge=1, le=MAX_COUNT)
