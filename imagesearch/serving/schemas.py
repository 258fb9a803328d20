"""The HTTP request and response bodies (pydantic): what OpenAPI documents and every route validates."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from imagesearch.index.metadata import Filters

# hard caps of the schema, whatever the settings say: they bound memory before any setting is read
MAX_TEXT = 100_000
MAX_DIM = 65_536
MAX_COUNT = 1_000_000


MAX_TERMS = 8
MAX_FILTER_VALUES = 64
Label = Annotated[str, Field(min_length=1, max_length=200)]


class TermIn(BaseModel):
    """One part of a combined query: exactly one of text, image_id, embedding, image (base64) or
    upload (the name of a file field of a multipart request), with a weight (negative: away from it)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(default=None, max_length=MAX_TEXT)
    image_id: str | None = Field(default=None, max_length=128)
    embedding: list[float] | None = Field(default=None, max_length=MAX_DIM)
    image: str | None = Field(default=None, description="base64-encoded image bytes")
    upload: str | None = Field(default=None, max_length=64, description="multipart file field name")
    weight: float = Field(default=1.0, ge=-100, le=100, allow_inf_nan=False)

    @model_validator(mode="after")
    def exactly_one_kind(self) -> TermIn:
        given = [name for name in TERM_KINDS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"a term needs exactly one of {', '.join(TERM_KINDS)} (got {given or 'none'})")
        if self.weight == 0:
            raise ValueError("a term's weight must not be 0")
        return self


TERM_KINDS = ("text", "image_id", "embedding", "image", "upload")


class FiltersIn(BaseModel):
    """Which images may be returned; applied inside the index search, so k results come back
    whenever k images pass."""

    model_config = ConfigDict(extra="forbid")
    category: list[Label] | Label | None = Field(default=None, description="any of these categories")
    tags: list[Label] | None = Field(default=None, max_length=MAX_FILTER_VALUES)
    tags_match: Literal["any", "all"] = "any"
    source: list[Label] | Label | None = Field(default=None, description="any of these sources")
    added_after: datetime | None = Field(default=None, description="catalogue time (the file's), inclusive")
    added_before: datetime | None = None
    min_width: int | None = Field(default=None, ge=1, le=1_000_000)
    min_height: int | None = Field(default=None, ge=1, le=1_000_000)

    @field_validator("category", "source")
    @classmethod
    def few_values(cls, value: list[str] | str | None) -> list[str] | str | None:
        if isinstance(value, list) and len(value) > MAX_FILTER_VALUES:
            raise ValueError(f"at most {MAX_FILTER_VALUES} values")
        return value

    def as_filters(self) -> Filters:
        return Filters(
            categories=_values(self.category),
            tags=tuple(self.tags or ()),
            all_tags=self.tags_match == "all",
            sources=_values(self.source),
            added_after_ns=_ns(self.added_after),
            added_before_ns=_ns(self.added_before),
            min_width=self.min_width,
            min_height=self.min_height,
        )


def _values(value: list[str] | str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _ns(moment: datetime | None) -> int | None:
    if moment is None:
        return None
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return int(aware.timestamp() * 1e9)


class SearchRequest(BaseModel):
    """A JSON query: `terms` (combined, weighted), or one of text / image_id ("more like this") /
    embedding; then filters, a score cut-off, the ranking mode, the order and the page."""

    text: str | None = Field(
        default=None, max_length=MAX_TEXT, description="text query (at most service.max_text_chars)"
    )
    image_id: str | None = Field(default=None, max_length=128, description="catalog image to find more like")
    embedding: list[float] | None = Field(
        default=None, max_length=MAX_DIM, description="a vector in the model's space"
    )
    terms: list[TermIn] | None = Field(
        default=None, min_length=1, max_length=MAX_TERMS, description="a combined query: weighted terms"
    )
    filters: FiltersIn | None = None
    min_score: float | None = Field(
        default=None, ge=-1, le=1, description="results scoring below (cosine) are cut off"
    )
    mode: Literal["vector", "keyword", "hybrid"] | None = Field(
        default=None, description="ranking: embedding, keywords (BM25), or both fused; default: service.mode"
    )
    sort: Literal["relevance", "date"] = Field(
        default="relevance", description="date: newest first among the results that pass the cut-off"
    )
    k: int = Field(default=10, ge=1, le=MAX_COUNT, description="results per page (at most service.max_k)")
    offset: int = Field(default=0, ge=0, le=MAX_COUNT, description="at most service.max_offset")
    diversity: float | None = Field(default=None, ge=0, le=1, description="MMR lambda; 1.0 = off")
    dedup: bool = True

    def all_terms(self) -> list[TermIn]:
        """The query as terms (a single text, image_id or embedding is one term of weight 1)."""
        single = {name: getattr(self, name) for name in ("text", "image_id", "embedding")}
        given = {name: value for name, value in single.items() if value is not None}
        if len(given) + bool(self.terms) > 1:
            raise ValueError("give terms, or exactly one of text, image_id or embedding")
        if self.terms:
            return list(self.terms)
        return [TermIn(**given)] if given else []


class ResultOut(BaseModel):
    id: str
    score: float
    rank: int
    caption: str
    image_url: str
    thumbnail_url: str
    category: str = ""
    tags: list[str] = []
    added: datetime | None = None
    explanation: dict | None = Field(
        default=None, description="each term's share of the score, matched keywords, the ranks fused"
    )


class SearchResponse(BaseModel):
    query_id: str
    model_version: str
    mode: str
    results: list[ResultOut]
    total: int = Field(description="results passing the filters and min_score among the candidates")
    total_is_lower_bound: bool = Field(description="true when more may pass than the candidates held")
    facets: dict[str, dict[str, int]] = Field(description="counts among those results, per field")
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
