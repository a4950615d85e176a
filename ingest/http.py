"""A polite HTTP client: robots.txt, per-host rate limit, conditional GET, retries, size limits.

One :class:`PoliteClient` is shared by all sources of a crawler (it is thread-safe), so the
rate limit and the robots cache are per host across sources, as the host sees them.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.robotparser
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from urllib.parse import urljoin, urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from ingest.errors import (
    FetchError,
    FetchTimeout,
    HTTPStatusError,
    ResponseTooLarge,
    RobotsDisallowed,
    TooManyRedirects,
)

log = logging.getLogger(__name__)

DEFAULT_USER_AGENT = "finpulse/0.1 (+https://github.com/finpulse)"
_RETRY_STATUS = {429, 500, 502, 503, 504}
_REDIRECT_STATUS = {301, 302, 303, 307, 308}


@dataclass
class HttpOptions:
    """Client behaviour; the YAML's ``http:`` section maps onto it."""

    user_agent: str = DEFAULT_USER_AGENT
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    total_timeout: float = 60.0  # whole request incl. body: a server dripping bytes must not hang us
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 5
    retries: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    rate_per_host: float = 1.0  # requests per second
    burst: int = 2
    host_rates: dict[str, float] = field(default_factory=dict)
    robots: bool = True
    robots_ttl: float = 24 * 3600.0


@dataclass(frozen=True)
class FetchResult:
    """A completed GET. ``not_modified`` means a 304: ``content`` is empty, keep what you had."""

    url: str  # final URL after redirects
    status: int
    content: bytes
    headers: httpx.Headers
    not_modified: bool = False

    @property
    def etag(self) -> str | None:
        return self.headers.get("etag")

    @property
    def last_modified(self) -> str | None:
        return self.headers.get("last-modified")

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def charset(self) -> str | None:
        for part in self.content_type.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                return value.strip("\"' ")
        return None


class TokenBucket:
    """Classic token bucket; :meth:`acquire` blocks until a token is available.

    ``clock`` and ``sleep`` are injectable so a test can see the waits without timing anything.
    """

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.rate = max(rate, 1e-6)
        self.capacity = max(1, burst)
        self.clock, self.sleep = clock, sleep
        self.tokens = float(self.capacity)
        self.updated = clock()
        self.lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token; return the seconds waited."""
        waited = 0.0
        while True:
            with self.lock:
                now = self.clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return waited
                delay = (1 - self.tokens) / self.rate
            self.sleep(delay)
            waited += delay


class PoliteClient:
    """httpx wrapper. Every method raises a :class:`~ingest.errors.FetchError` subclass on failure."""

    def __init__(self, *, options: HttpOptions | None = None, transport: httpx.BaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.options = options or HttpOptions()
        self.clock, self.sleep = clock, sleep  # rate-limit and retry waits go through these (tests record them)
        o = self.options
        self._client = httpx.Client(
            headers={"User-Agent": o.user_agent, "Accept-Encoding": "gzip, deflate"},
            timeout=httpx.Timeout(o.read_timeout, connect=o.connect_timeout),
            follow_redirects=False,  # followed by hand, so every hop is checked against robots.txt
            transport=transport,
        )
        self._buckets: dict[str, TokenBucket] = {}
        self._robots: dict[str, tuple[float, urllib.robotparser.RobotFileParser | None, bool]] = {}
        self._lock = threading.Lock()
        self._robots_locks: dict[str, threading.Lock] = {}

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PoliteClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- politeness -----------------------------------------------------------------------
    def set_host_rate(self, host: str, rate: float) -> None:
        with self._lock:
            self._buckets[host] = TokenBucket(rate, self.options.burst, clock=self.clock, sleep=self.sleep)

    def _bucket(self, host: str) -> TokenBucket:
        with self._lock:
            bucket = self._buckets.get(host)
            if bucket is None:
                rate = self.options.host_rates.get(host, self.options.rate_per_host)
                bucket = self._buckets[host] = TokenBucket(rate, self.options.burst, clock=self.clock,
                                                           sleep=self.sleep)
            return bucket

    def allowed(self, url: str) -> bool:
        """robots.txt verdict for our User-Agent (fetched once per host and cached)."""
        if not self.options.robots:
            return True
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            host_lock = self._robots_locks.setdefault(origin, threading.Lock())
        with host_lock:  # one robots.txt fetch per host even with concurrent sources
            cached = self._robots.get(origin)
            if cached is None or time.monotonic() - cached[0] > self.options.robots_ttl:
                cached = self._fetch_robots(origin)
                self._robots[origin] = cached
        _, parser, allow_all = cached
        if parser is None:
            return allow_all
        return parser.can_fetch(self.options.user_agent, url)

    def _fetch_robots(self, origin: str):
        robots_url = origin + "/robots.txt"
        try:
            result = self._get(robots_url, headers={}, check_robots=False, raise_status=False)
        except FetchError as exc:
            # RFC 9309: unreachable robots.txt means "assume complete disallow" for now; the
            # entry is cached only briefly so we try again soon.
            log.warning("robots.txt unreachable for %s (%s): not crawling it for now", origin, exc)
            return (time.monotonic() - self.options.robots_ttl + 300, None, False)
        if 400 <= result.status < 500:
            return (time.monotonic(), None, True)  # RFC 9309: 4xx = no rules
        if result.status >= 500:
            return (time.monotonic() - self.options.robots_ttl + 300, None, False)
        parser = urllib.robotparser.RobotFileParser(robots_url)
        parser.parse(result.content.decode("utf-8", errors="replace").splitlines())
        delay = parser.crawl_delay(self.options.user_agent)
        if delay:
            # Crawl-delay is not in RFC 9309 but sites that set it mean it: never go faster.
            host = urlsplit(origin).netloc.lower()
            rate = 1.0 / max(float(delay), 1e-3)
            if rate < self._bucket(host).rate:
                self.set_host_rate(host, rate)
                log.info("%s asks for Crawl-delay %ss: rate limited to %.3f req/s", host, delay, rate)
        return (time.monotonic(), parser, True)

    # -- fetching -------------------------------------------------------------------------
    def get(
        self,
        url: str,
        *,
        etag: str | None = None,
        last_modified: str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> FetchResult:
        """GET with robots, rate limit, retries, redirects and size limit; conditional if validators given."""
        request_headers = dict(headers or {})
        if etag:
            request_headers["If-None-Match"] = etag
        if last_modified:
            request_headers["If-Modified-Since"] = last_modified
        if params:
            url = str(httpx.URL(url).copy_merge_params(params))
        return self._get(url, headers=request_headers, check_robots=True, raise_status=True)

    def _get(self, url: str, *, headers: dict[str, str], check_robots: bool, raise_status: bool) -> FetchResult:
        """One GET (redirects followed), retried by tenacity on timeouts, connection errors, 429 and 5xx.

        Waits: exponential backoff with full jitter, U(0, min(backoff_max, backoff_base * 2^n)),
        which spreads the retries of many clients apart; a server's Retry-After wins when it asks
        for longer (up to backoff_max).
        """
        o = self.options
        jitter = wait_random_exponential(multiplier=o.backoff_base, max=o.backoff_max)

        def wait(state: RetryCallState) -> float:
            delay = jitter(state)
            retry_after = getattr(state.outcome.exception(), "retry_after", None)
            return max(delay, min(retry_after, o.backoff_max)) if retry_after is not None else delay

        def attempt() -> FetchResult:
            result = self._follow(url, headers=headers, check_robots=check_robots)
            if result.status in _RETRY_STATUS:
                raise _RetryableStatus(result)
            return result

        retrying = Retrying(
            stop=stop_after_attempt(o.retries + 1),
            wait=wait,
            retry=retry_if_exception_type((FetchTimeout, _Transient, _RetryableStatus)),
            sleep=self.sleep,
            before_sleep=lambda state: log.info("retrying %s in %.2fs (attempt %d/%d): %s", url,
                                                state.next_action.sleep if state.next_action else 0.0,
                                                state.attempt_number, o.retries, state.outcome.exception()),
            reraise=True,
        )
        try:
            result = retrying(attempt)
        except _RetryableStatus as exc:  # still 429/5xx after the last retry
            result = exc.result
        except _Transient as exc:
            raise FetchError(str(exc), url=url, reason=exc.reason) from exc
        if raise_status and result.status >= 400:
            raise HTTPStatusError(f"HTTP {result.status}", url=result.url, status=result.status)
        return result

    def _follow(self, url: str, *, headers: dict[str, str], check_robots: bool) -> FetchResult:
        current = url
        for _ in range(self.options.max_redirects + 1):
            if check_robots and not self.allowed(current):
                raise RobotsDisallowed("disallowed by robots.txt", url=current)
            result, location = self._once(current, headers)
            if location is None:
                return result
            current = urljoin(current, location)
            if urlsplit(current).scheme not in ("http", "https"):
                raise FetchError(f"redirect to non-http URL {current[:100]!r}", url=url, reason="redirects")
        raise TooManyRedirects(f"more than {self.options.max_redirects} redirects", url=url)

    def _once(self, url: str, headers: dict[str, str]) -> tuple[FetchResult, str | None]:
        o = self.options
        host = urlsplit(url).netloc.lower()
        self._bucket(host).acquire()
        deadline = time.monotonic() + o.total_timeout  # real time: the network does not use our clock
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                if response.status_code in _REDIRECT_STATUS and response.headers.get("location"):
                    return FetchResult(url, response.status_code, b"", response.headers), response.headers["location"]
                if response.status_code == 304:
                    return FetchResult(url, 304, b"", response.headers, not_modified=True), None
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > o.max_bytes:
                    raise ResponseTooLarge(f"Content-Length {declared} over the {o.max_bytes} byte limit", url=url)
                chunks = []
                size = 0
                # Enforced while streaming: a server may lie about or omit Content-Length.
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > o.max_bytes:
                        raise ResponseTooLarge(f"body over the {o.max_bytes} byte limit", url=url)
                    if time.monotonic() > deadline:
                        raise FetchTimeout(f"body not received within {o.total_timeout}s", url=url)
                    chunks.append(chunk)
                return FetchResult(str(response.url), response.status_code, b"".join(chunks), response.headers), None
        except httpx.TimeoutException as exc:
            raise FetchTimeout(f"timed out ({type(exc).__name__})", url=url) from exc
        except httpx.DecodingError as exc:
            raise FetchError(f"undecodable response body ({exc})", url=url, reason="decoding") from exc
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            if isinstance(exc, (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError)):
                raise _Transient(f"{type(exc).__name__}: {exc}", reason="connect") from exc
            raise FetchError(f"{type(exc).__name__}: {exc}", url=url, reason="transport") from exc


class _RetryableStatus(Exception):
    """A 429/5xx response worth retrying (internal); carries the response and its Retry-After."""

    def __init__(self, result: FetchResult):
        super().__init__(f"HTTP {result.status}")
        self.result = result
        self.retry_after = _retry_after(result.headers)


class _Transient(Exception):
    """A connection-level failure worth retrying (internal)."""

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.reason = reason
        self.retry_after = None


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
