from __future__ import annotations

import pytest

from ingest.errors import FetchError, FetchTimeout, HTTPStatusError, ResponseTooLarge, RobotsDisallowed, TooManyRedirects
from ingest.http import DEFAULT_USER_AGENT, HttpOptions, PoliteClient, TokenBucket

from tests.ingest.httpfixture import hang, stream_bytes

FAST = dict(connect_timeout=2, read_timeout=0.5, total_timeout=5, max_bytes=1024 * 1024, max_redirects=3,
            retries=2, backoff_base=0.01, backoff_max=0.05, rate_per_host=1000, burst=100)


@pytest.fixture
def client():
    with PoliteClient(options=HttpOptions(**FAST)) as c:
        yield c


@pytest.fixture
def server(http_server):
    http_server.route("/robots.txt", (200, {}, "User-agent: *\nDisallow: /private/\n"))
    http_server.route("/ok", (200, {"Content-Type": "text/plain; charset=latin-1"}, b"hello"))
    return http_server


def test_user_agent_and_robots(server, client):
    result = client.get(server.url("/ok"))
    assert result.content == b"hello" and result.charset == "latin-1"
    assert server.hits("/ok")[0].headers["user-agent"] == DEFAULT_USER_AGENT
    with pytest.raises(RobotsDisallowed):
        client.get(server.url("/private/x"))
    assert server.hits("/private/x") == []  # never requested
    client.get(server.url("/ok"))
    assert len(server.hits("/robots.txt")) == 1  # cached per host


def test_missing_robots_allows_everything(http_server, client):
    http_server.route("/private/x", (200, {}, b"fine"))
    assert client.get(http_server.url("/private/x")).content == b"fine"


def test_robots_5xx_means_disallow(http_server, client):
    http_server.route("/robots.txt", (503, {}, b"down"))
    http_server.route("/x", (200, {}, b"x"))
    with pytest.raises(RobotsDisallowed):
        client.get(http_server.url("/x"))


def test_conditional_get(server, client):
    def handler(request):
        if request.headers.get("if-none-match") == '"abc"' or request.headers.get("if-modified-since"):
            return (304, {}, b"")
        return (200, {"ETag": '"abc"', "Last-Modified": "Wed, 01 May 2024 12:00:00 GMT"}, b"body")

    server.route("/feed", handler)
    first = client.get(server.url("/feed"))
    assert first.etag == '"abc"' and first.last_modified and not first.not_modified
    again = client.get(server.url("/feed"), etag=first.etag)
    assert again.not_modified and again.status == 304 and again.content == b""
    assert client.get(server.url("/feed"), last_modified=first.last_modified).not_modified


def test_retries_5xx_then_recovers(server, client):
    calls = {"n": 0}

    def handler(request):
        calls["n"] += 1
        return (503, {}, b"busy") if calls["n"] <= 2 else (200, {}, b"finally")

    server.route("/flaky", handler)
    assert client.get(server.url("/flaky")).content == b"finally"
    assert calls["n"] == 3


def test_gives_up_after_retries(server, client):
    server.route("/down", (500, {}, b"no"))
    with pytest.raises(HTTPStatusError) as err:
        client.get(server.url("/down"))
    assert err.value.status == 500 and err.value.reason == "http_500"
    assert len(server.hits("/down")) == 1 + FAST["retries"]


def test_4xx_is_not_retried(server, client):
    with pytest.raises(HTTPStatusError) as err:
        client.get(server.url("/nope"))
    assert err.value.status == 404
    assert len(server.hits("/nope")) == 1


def test_hanging_server_times_out(server, client):
    server.route("/hang", hang(3.0))
    with pytest.raises(FetchTimeout):
        client.get(server.url("/hang"))
    assert len(server.hits("/hang")) == 1 + FAST["retries"]


def test_redirects_followed_and_loops_stopped(server, client):
    server.route("/old", (301, {"Location": "/ok"}, b""))
    result = client.get(server.url("/old"))
    assert result.content == b"hello" and result.url.endswith("/ok")
    server.route("/a", (302, {"Location": "/b"}, b""))
    server.route("/b", (302, {"Location": "/a"}, b""))
    with pytest.raises(TooManyRedirects):
        client.get(server.url("/a"))
    server.route("/sneaky", (302, {"Location": "/private/y"}, b""))
    with pytest.raises(RobotsDisallowed):  # robots.txt is checked on every hop
        client.get(server.url("/sneaky"))


@pytest.mark.parametrize("declare", [True, False])
def test_oversized_response_aborted(server, client, declare):
    server.route("/big", stream_bytes(50 * 1024 * 1024, declare_length=declare))
    with pytest.raises(ResponseTooLarge):
        client.get(server.url("/big"))


def test_connection_refused_is_a_fetch_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with PoliteClient(options=HttpOptions(**dict(FAST, retries=1, robots=False))) as c:
        with pytest.raises(FetchError) as err:
            c.get(f"http://127.0.0.1:{port}/x")
    assert err.value.reason == "connect"


class FakeClock:
    """A clock that only moves when someone sleeps; every sleep is recorded."""

    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_token_bucket_waits_once_the_burst_is_spent():
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock, sleep=clock.sleep)
    assert [bucket.acquire() for _ in range(3)] == [0.0, 0.0, 0.0] and clock.slept == []  # the burst is free
    assert bucket.acquire() == pytest.approx(0.5)  # then one token per 1/rate seconds
    assert bucket.acquire() == pytest.approx(0.5)
    assert clock.slept == pytest.approx([0.5, 0.5])
    clock.now += 10  # idle time refills the bucket, up to the burst
    assert [bucket.acquire() for _ in range(3)] == [0.0, 0.0, 0.0] and len(clock.slept) == 2


def test_client_waits_between_requests_to_one_host_only(http_server):
    other = __import__("tests.ingest.httpfixture", fromlist=["serve"]).serve
    http_server.route("/x", (200, {}, b"x"))
    clock = FakeClock()
    options = HttpOptions(**dict(FAST, rate_per_host=0.25, burst=1, robots=False))
    with other() as second, PoliteClient(options=options, clock=clock, sleep=clock.sleep) as c:
        second.route("/y", (200, {}, b"y"))
        c.get(http_server.url("/x"))
        c.get(second.url("/y"))  # another host: its own bucket, no wait
        assert clock.slept == []
        c.get(http_server.url("/x"))
        assert clock.slept == pytest.approx([4.0])  # 1 / 0.25 req/s


def test_retry_waits_use_backoff_and_honour_retry_after(server):
    calls = {"n": 0}

    def handler(request):
        calls["n"] += 1
        return (429, {"Retry-After": "1"}, b"slow down") if calls["n"] == 1 else (200, {}, b"ok")

    server.route("/limited", handler)
    clock = FakeClock()
    with PoliteClient(options=HttpOptions(**dict(FAST, backoff_base=0.001)), clock=clock, sleep=clock.sleep) as c:
        assert c.get(server.url("/limited")).content == b"ok"
    # one retry wait: the server's Retry-After (1 s) capped at backoff_max (0.05 s); the jittered
    # backoff alone would be at most backoff_base (1 ms)
    assert clock.slept == pytest.approx([0.05])


def test_crawl_delay_lowers_the_host_rate(http_server, client):
    http_server.route("/robots.txt", (200, {}, "User-agent: *\nCrawl-delay: 4\n"))
    http_server.route("/x", (200, {}, b"x"))
    client.get(http_server.url("/x"))
    host = http_server.base.split("://")[1]
    assert client._bucket(host).rate == pytest.approx(0.25)
