"""Settings of the search service: where it listens, what a request may ask and carry, how it ranks."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

MIN_ADMIN_TOKEN_CHARS = 16


class ServiceSettings(BaseModel):
    """The search service: where it listens, request limits and the default query path."""

    host: str = Field(default="127.0.0.1", description="loopback by default; set 0.0.0.0 deliberately")
    port: int = Field(default=8000, ge=1, le=65535)
    max_upload_bytes: int = Field(
        default=10 * 1024 * 1024, gt=0, description="image uploads above are refused"
    )
    max_text_chars: int = Field(default=1000, gt=0)
    max_k: int = Field(default=100, ge=1, description="most results per page")
    max_offset: int = Field(default=1000, ge=0)
    candidates: int = Field(default=100, ge=1, description="ANN candidates re-scored exactly and re-ranked")
    max_batch: int = Field(
        default=32, ge=1, description="queries waiting together are encoded and searched as one batch"
    )
    answer_timeout_s: float = Field(
        default=60.0, gt=0, description="a query still waiting for the worker after this answers 503"
    )
    dedup_threshold: float = Field(
        default=0.97, gt=0, le=1, description="cosine above which results collapse"
    )
    near_duplicate_table_rows: int = Field(
        default=20_000,
        ge=0,
        description="an exact index of up to this many rows has its near-duplicate pairs found at load "
        "(seconds; grows with the square of the rows) instead of compared per page; 0 = never",
    )
    diversity: float = Field(default=0.85, ge=0, le=1, description="MMR lambda; 1.0 = relevance order only")
    mode: Literal["vector", "keyword", "hybrid"] = Field(
        default="hybrid",
        description="ranking when a query names none: the embedding, keywords (BM25) or both fused (RRF); "
        "the default is the evaluation's best mode out of domain (README: Search features)",
    )
    thumbnail_side: int = Field(default=256, ge=16)
    text_cache_size: int = Field(
        default=4096, ge=0, description="text query vectors kept per served model (LRU); 0 = off"
    )
    warm_up: bool = Field(
        default=True, description="run a text and an image query through every stage before serving"
    )
    reload_poll_seconds: float = Field(
        default=10.0,
        ge=0,
        description="check the index folder this often and swap in a rebuilt index + its model; 0 = off",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description=f"bearer token for /admin routes (at least {MIN_ADMIN_TOKEN_CHARS} characters); unset = "
        "admin routes refuse everyone",
    )
    max_upload_pixels: int = Field(
        default=40_000_000, gt=0, description="uploads whose header declares more pixels are refused (413)"
    )
    max_concurrent_decodes: int = Field(
        default=2, ge=1, description="uploads decoded at once (each may hold a few full-size copies)"
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        gt=0,
        description="any request body above is refused while it streams in (base64 images need ~4/3 "
        "of max_upload_bytes)",
    )
    max_json_depth: int = Field(default=32, ge=2, description="deeper JSON bodies are refused (400)")
    limit_concurrency: int = Field(
        default=64, ge=1, description="connections served at once; beyond, the server answers 503"
    )
    access_log: bool = Field(
        default=False,
        description="uvicorn's line per request: formatting and writing it took ~10% of the event "
        "loop's busy time in a one-client text benchmark; /metrics counts requests either way",
    )
    allowed_hosts: list[str] = Field(
        default=["127.0.0.1", "localhost", "::1"],
        description="Host headers served (a DNS-rebinding page sends its own name); add your hostname "
        "when binding beyond loopback, or '*' for any",
    )

    @field_validator("admin_token")
    @classmethod
    def _token_long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value().strip()) < MIN_ADMIN_TOKEN_CHARS:
            raise ValueError(
                f"IMAGESEARCH_SERVICE__ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_CHARS} characters "
                "(an empty or short token would open the admin routes); unset it to disable them"
            )
        return token
