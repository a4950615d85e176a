"""Exceptions of the ingest package.

Every failure the crawler can survive is an :class:`IngestError`; the crawler logs it with
the source name and a short ``reason`` (a stable label that doubles as a log/metric key) and
carries on with the next item or source.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base class. ``reason`` is a short, stable label such as ``"timeout"`` or ``"too_large"``."""

    reason = "error"

    def __init__(self, message: str, *, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConfigError(IngestError):
    """The sources YAML (or a CLI option) is invalid; raised before anything is crawled."""

    reason = "config"


class FetchError(IngestError):
    """An HTTP fetch failed for good (after retries where retrying makes sense)."""

    reason = "fetch"

    def __init__(self, message: str, *, url: str, reason: str | None = None):
        super().__init__(f"{message} ({url})", reason=reason)
        self.url = url


class RobotsDisallowed(FetchError):
    reason = "robots"


class ResponseTooLarge(FetchError):
    reason = "too_large"


class TooManyRedirects(FetchError):
    reason = "redirects"


class FetchTimeout(FetchError):
    reason = "timeout"


class HTTPStatusError(FetchError):
    reason = "http_status"

    def __init__(self, message: str, *, url: str, status: int):
        super().__init__(message, url=url, reason=f"http_{status}")
        self.status = status


class ParseError(IngestError):
    """A response could not be parsed (malformed XML/JSON, undecodable bytes...).

    ``raw`` (the response body) and ``url`` are set by the source that fetched it, so the
    crawler can keep the body as a dead letter.
    """

    reason = "parse"

    def __init__(self, message: str, *, reason: str | None = None, raw: bytes | str | None = None,
                 url: str | None = None):
        super().__init__(message, reason=reason)
        self.raw = raw
        self.url = url


class PublishError(IngestError):
    """Documents could not be delivered to Kafka even after retries; they stay unseen."""

    reason = "publish"


class BrokerUnavailable(PublishError):
    """No Kafka bootstrap server accepts a connection; the message names the address and the setting."""

    reason = "broker_unreachable"


class BrokerLoginRefused(BrokerUnavailable):
    """The brokers refused the SASL login (or their certificate is not trusted); the message names
    the address, the mechanism, the user and the settings to check."""

    reason = "broker_login_refused"
