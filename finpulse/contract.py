"""The document contract: the JSON message on the documents topic.

Producers (crawlers, replay) and consumers (the pipeline) validate with the same
:func:`validate_document`, so a message the pipeline rejects is one a producer could
never have published. Evolve the contract by adding a new ``schema_version`` and
keeping old versions readable.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1
MAX_TEXT_CHARS = 1_000_000
_TICKER = re.compile(r"^[A-Z0-9][A-Z0-9.\-]{0,14}$")
_LANG = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
_URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)


class ContractError(ValueError):
    """A message that does not satisfy the contract. ``problems`` holds (field, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{field}: {reason}" for field, reason in problems))


class Document(BaseModel):
    """One news story or comment, as published to Kafka (schema_version 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    schema_version: Literal[1] = SCHEMA_VERSION
    id: str = Field(min_length=1, max_length=512, description="Stable id: same story, same id, always.")
    source: str = Field(min_length=1, max_length=200, description="Configured source name, e.g. 'reuters-rss'.")
    kind: Literal["news", "comment"]
    url: str | None = Field(None, max_length=4096)
    title: str | None = Field(None, max_length=10_000)
    text: str = Field("", max_length=MAX_TEXT_CHARS)
    author: str | None = Field(None, max_length=500)
    published_at: AwareDatetime
    fetched_at: AwareDatetime
    lang: str | None = Field(None, description="ISO 639-1/3 code, e.g. 'en'.")
    tickers: list[str] = Field(default_factory=list, max_length=200)
    parent_id: str | None = Field(None, max_length=512, description="Id of the story or comment replied to.")
    # JsonValue is checked in pydantic's core: no json.dumps round trip on the hot path.
    extra: dict[str, JsonValue] = Field(default_factory=dict)

    @field_validator("id", "source")
    @classmethod
    def _no_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        if any(ch in value for ch in "\r\n\t\x00"):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not _URL.match(value):
            raise ValueError(f"must be an absolute http(s) URL (got {value[:80]!r})")
        return value

    @field_validator("published_at", "fetched_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.astimezone(timezone.utc)

    @field_validator("lang")
    @classmethod
    def _lang(cls, value: str | None) -> str | None:
        if value is not None and not _LANG.match(value):
            raise ValueError(f"must be an ISO 639 language code such as 'en' (got {value[:20]!r})")
        return value

    @field_validator("tickers")
    @classmethod
    def _tickers(cls, value: list[str]) -> list[str]:
        seen: dict[str, None] = {}
        for raw in value:
            ticker = raw.strip().lstrip("$").upper()
            if not _TICKER.match(ticker):
                raise ValueError(f"{raw[:20]!r} is not a ticker symbol (letters, digits, '.' or '-', at most 15)")
            seen[ticker] = None
        return list(seen)

    @model_validator(mode="after")
    def _has_content(self) -> Document:
        if not self.text.strip() and not (self.title or "").strip():
            raise ValueError("a document needs a non-empty text or title")
        if self.parent_id is not None and self.parent_id == self.id:
            raise ValueError("parent_id must differ from id")
        return self

    def to_json(self) -> bytes:
        """The wire form: compact UTF-8 JSON, datetimes as ISO 8601 with offset."""
        return self.model_dump_json().encode("utf-8")

    @property
    def content(self) -> str:
        """The text a model scores: title and body joined."""
        return "\n".join(part for part in (self.title, self.text) if part and part.strip())


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "document"
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            reason = "unknown field (not in schema_version 1)"
        elif err["type"] == "timezone_aware":
            reason = f"must be timezone-aware, e.g. 2024-05-01T12:00:00Z (got {err.get('input')!r})"
        elif err["type"] == "literal_error" and field == "schema_version":
            reason = f"unsupported schema_version {err.get('input')!r}; this build reads {SCHEMA_VERSION}"
        problems.append((field, reason))
    return problems


def validate_document(message: bytes | str | dict[str, Any]) -> Document:
    """Parse and validate one message; raise :class:`ContractError` saying which field is wrong and why."""
    if isinstance(message, (bytes, bytearray)):
        try:
            message = message.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ContractError([("document", f"not UTF-8 ({exc.reason} at byte {exc.start})")]) from None
    if isinstance(message, str):
        try:
            message = json.loads(message)
        except json.JSONDecodeError as exc:
            raise ContractError([("document", f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})")]) from None
    if not isinstance(message, dict):
        raise ContractError([("document", f"must be a JSON object, got {type(message).__name__}")])
    try:
        return Document.model_validate(message)
    except ValidationError as exc:
        raise ContractError(_problems(exc)) from None
