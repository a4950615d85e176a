"""The sources YAML: crawler-wide HTTP/dedup options and a list of sources.

Secrets never live in the file: any string may reference an environment variable as
``${ENV:NAME}`` (or ``${ENV:NAME:-default}``), resolved at load time; a missing variable is a
:class:`~ingest.errors.ConfigError`. Header values are kept as ``SecretStr`` so they are masked
in reprs and logs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from finpulse import yamlconf
from ingest.errors import ConfigError
from ingest.http import DEFAULT_USER_AGENT, HttpOptions
from ingest.normalize import resolve_timezone


def _where(problem: yamlconf.Problem) -> str:
    """``line 12: sources[0].timezone`` (the field in Python's index notation, as this file's users know it)."""
    text = ""
    for part in problem.loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    text = text or "(top level)"
    return f"line {problem.line}: {text}" if problem.line else text


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpConfig(_Model):
    user_agent: str = DEFAULT_USER_AGENT
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(20.0, gt=0)
    total_timeout: float = Field(60.0, gt=0)
    max_bytes: int = Field(10 * 1024 * 1024, gt=0)
    max_redirects: int = Field(5, ge=0)
    retries: int = Field(3, ge=0)
    backoff_base: float = Field(1.0, ge=0)
    backoff_max: float = Field(60.0, ge=0)
    rate_per_host: float = Field(1.0, gt=0, description="Requests per second per host.")
    burst: int = Field(2, ge=1)
    host_rates: dict[str, float] = Field(default_factory=dict)
    robots: bool = True

    def options(self) -> HttpOptions:
        return HttpOptions(**self.model_dump())


class DedupConfig(_Model):
    threshold: float = Field(1 / 3, gt=0, le=1, description="Overlap of story terms for a reworded copy.")
    num_perm: int = Field(128, ge=16)
    min_words: int = Field(6, ge=1, description="Texts with fewer story terms are never reworded copies.")
    window_days: float = Field(7.0, gt=0)
    max_items: int = Field(50_000, ge=1)
    content_dedup_min_chars: int = Field(
        40, ge=1, description="News shorter than this (normalised) is never an exact content duplicate."
    )


class _SourceBase(_Model):
    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    kind: Literal["news", "comment"]
    url: str
    interval: float = Field(300.0, gt=0, description="Seconds between polls.")
    timezone: str = Field("UTC", description="Timezone of naive timestamps from this source.")
    tickers: list[str] = Field(default_factory=list, description="Added to every document's tickers.")
    lang: str | None = Field(None, description="Fixed language; unset = detect.")
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    rate_limit: float | None = Field(None, gt=0, description="Requests/s for this source's host.")
    enabled: bool = True

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            resolve_timezone(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None  # a ValueError, so pydantic reports it with the others
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http(s) URL")
        return value

    def header_values(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self.headers.items()}


class RssConfig(_SourceBase):
    type: Literal["rss", "atom", "feed"]
    fetch_articles: bool = Field(True, description="Fetch each linked article and extract its main text.")
    max_items: int = Field(100, ge=1, description="Entries read per poll.")


class JsonMapping(_Model):
    """Dotted paths into the API's JSON; ``items`` into the page, the rest into one item."""

    items: str = ""
    id: str | None = "id"
    text: str = "text"
    title: str | None = None
    author: str | None = None
    time: str | None = None
    parent_id: str | None = None
    tickers: str | None = None
    url: str | None = None


class Pagination(_Model):
    type: Literal["none", "cursor", "page"] = "none"
    cursor_path: str | None = Field(None, description="Path of the next cursor in the page, e.g. meta.next.")
    cursor_param: str = "cursor"
    page_param: str = "page"
    start_page: int = 1
    max_pages: int = Field(5, ge=1)


class JsonApiConfig(_SourceBase):
    type: Literal["json"]
    params: dict[str, str] = Field(default_factory=dict)
    mapping: JsonMapping = Field(default_factory=JsonMapping)
    pagination: Pagination = Field(default_factory=Pagination)


SourceConfig = Annotated[RssConfig | JsonApiConfig, Field(discriminator="type")]


class CrawlerConfig(_Model):
    http: HttpConfig = Field(default_factory=HttpConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    workers: int = Field(4, ge=1, description="Sources polled concurrently.")
    sources: list[SourceConfig] = Field(min_length=1)

    @field_validator("sources")
    @classmethod
    def _unique(cls, value: list) -> list:
        names = [s.name for s in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate source names: {', '.join(dupes)}")
        return value


def parse_config(data: Any, *, document: yamlconf.Document | None = None) -> CrawlerConfig:
    """Validate the sources config; a ConfigError lists every problem, each with its YAML line when known."""
    document = document or yamlconf.from_data(data)
    if not isinstance(document.data, dict):
        raise ConfigError("the sources file must be a mapping with a 'sources' list")
    config, problems = document.validate(CrawlerConfig)
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise ConfigError(f"invalid sources config ({count}):\n  " + "\n  ".join(
            f"{_where(p)}: {p.message}" for p in problems))
    return config


def load_config(path: Path | str) -> CrawlerConfig:
    try:
        document = yamlconf.read(path)
    except yamlconf.SourceError as exc:
        if exc.message.startswith("cannot read"):
            raise ConfigError(f"cannot read {path}: {exc.message.removeprefix('cannot read: ')}") from None
        raise ConfigError(f"{path} is not valid YAML: line {exc.line}: {exc.message}") from None
    try:
        return parse_config(document.data, document=document)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
