"""Alert test fixtures: windows written straight into sentiment_windows, a real SMTP server
(aiosmtpd) and a real HTTP webhook receiver (ThreadingHTTPServer in a thread)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
from tests.conftest import free_port

SECRET = "whsec_" + base64.b64encode(b"finpulse-test-secret-0123456789ab").decode()
MODEL = "test-model@1"
HOUR = 3600


def hour_floor(t: datetime) -> datetime:
    ts = int(t.timestamp())
    return datetime.fromtimestamp(ts - ts % HOUR, timezone.utc)


def write_windows(engine, rows: list[dict]) -> None:
    """rows: dimension, key, start, n_docs, n_negative (+ optional n_first_stories, n_negative_first, width)."""
    with engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO sentiment_windows (dimension, key, window_start, window_end, model_version, n_docs,
                n_negative, n_neutral, n_positive, mean_score, mean_p_negative, sum_score, sum_p_negative,
                n_first_stories, n_negative_first)
            VALUES (:dimension, :key, :start, :end, :mv, :n_docs, :n_negative, :n_neutral, 0, 0, :mpn, 0, 0,
                    :n_first, :n_neg_first)
            ON CONFLICT (dimension, key, window_start, window_end, model_version) DO UPDATE
            SET n_docs = EXCLUDED.n_docs, n_negative = EXCLUDED.n_negative, n_neutral = EXCLUDED.n_neutral,
                n_first_stories = EXCLUDED.n_first_stories, n_negative_first = EXCLUDED.n_negative_first"""),
            [{"dimension": r["dimension"], "key": r["key"], "start": r["start"],
              "end": r["start"] + timedelta(seconds=r.get("width", HOUR)), "mv": r.get("mv", MODEL),
              "n_docs": r["n_docs"], "n_negative": r["n_negative"], "n_neutral": r["n_docs"] - r["n_negative"],
              "mpn": r["n_negative"] / r["n_docs"] if r["n_docs"] else None,
              "n_first": r.get("n_first_stories", r["n_docs"]), "n_neg_first": r.get("n_negative_first", r["n_negative"])}
             for r in rows])


def surge_series(end: datetime, *, key: str = "ACME", dimension: str = "ticker", hours: int = 48,
                 surge_at: tuple[int, ...] = (8, 7, 6), quiet=(40, 8), surge=(60, 40)) -> list[dict]:
    """Hourly windows ending at ``end`` (exclusive): quiet, except the windows ``surge_at`` hours
    before the last one (0 = last window), which are a negative surge."""
    last = end - timedelta(hours=1)
    rows = []
    for i in range(hours):
        start = last - timedelta(hours=i)
        n, k = surge if i in surge_at else quiet
        rows.append({"dimension": dimension, "key": key, "start": start, "n_docs": n, "n_negative": k})
    return rows


def add_documents(engine, *, key: str, start: datetime, n: int = 4, dimension: str = "ticker") -> list[str]:
    """Negative documents in the window for evidence: half near-duplicates, half first stories."""
    ids = []
    with engine.begin() as conn:
        for i in range(n):
            doc_id = f"{key}-{start:%H}-{i}"
            novelty = i % 2 == 1  # odd ones are first stories, with the lower p_negative
            conn.execute(sa.text("""
                INSERT INTO documents (id, schema_version, source, kind, url, title, text, published_at, fetched_at,
                                       tickers, novelty, first_story_id)
                VALUES (:id, 1, 'wire', 'news', :url, :title, 'text', :t, :t, :tickers, :novelty, :fs)"""),
                {"id": doc_id, "url": f"https://news.example/{doc_id}", "title": f"{key} slumps #{i}",
                 "t": start + timedelta(minutes=5 + i), "tickers": [key] if dimension == "ticker" else [],
                 "novelty": novelty, "fs": None if novelty else f"{key}-{start:%H}-1"})
            conn.execute(sa.text("""
                INSERT INTO document_scores (document_id, model_version, published_at, sentiment, p_negative,
                                             p_neutral, p_positive, topic, topic_confidence)
                VALUES (:id, :mv, :t, 'negative', :p, :rest, 0, 'earnings', 0.9)"""),
                {"id": doc_id, "mv": MODEL, "t": start + timedelta(minutes=5 + i),
                 "p": 0.7 + 0.05 * (1 - i % 2) + 0.01 * i, "rest": 1 - (0.7 + 0.05 * (1 - i % 2) + 0.01 * i)})
            if dimension == "ticker":
                conn.execute(sa.text("INSERT INTO document_entities (document_id, entity) VALUES (:id, :k)"),
                             {"id": doc_id, "k": key})
            ids.append(doc_id)
    return ids


RULES = """
rules:
  - name: ticker-share
    scope: {{dimension: ticker, keys: ["*"]}}
    width: 1h
    detector: negative_share
    params: {{alpha: 0.001, min_lift: 0.15, resolve_alpha: 0.05, resolve_lift: 0.05, min_docs: 20, min_baseline_docs: 50}}
    baseline_windows: 24
    for_windows: 2
    repeat_interval: 1d
    severity: warning
    routes: [{routes}]
  - name: market-share
    scope: {{dimension: all}}
    width: 1h
    detector: negative_share
    params: {{alpha: 0.001, min_lift: 0.15, min_docs: 20, min_baseline_docs: 50}}
    baseline_windows: 24
    for_windows: 2
    repeat_interval: 1d
    severity: critical
    routes: [{routes}]
receivers:
  mail: {{type: email, to: [desk@example.com]}}
  hook: {{type: webhook, url: "http://127.0.0.1:{port}/hook", secret_env: ALERTS_TEST_SECRET, timeout: {timeout}}}
inhibit:
  - source_matchers: ['alertname="market-share"']
    target_matchers: ['dimension="ticker"']
    equal: [width]
"""


def write_rules(path: Path, *, port: int, routes: str = "mail, hook", timeout: float = 2) -> Path:
    path.write_text(RULES.format(port=port, routes=routes, timeout=timeout))
    return path


# --- a real HTTP receiver ---------------------------------------------------------------------

@dataclass
class Received:
    id: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class HookReceiver:
    """A webhook receiver on 127.0.0.1:port. ``status`` is what it answers; ``delay`` how long it
    waits first; ``started`` is set when a request arrives (before the delay)."""

    port: int
    status: int = 200
    delay: float = 0.0
    drip: int = 0  # answer with this many body bytes, one every 0.5 s
    requests: list[Received] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "HookReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.started.set()
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.requests.append(Received(self.headers.get("webhook-id", ""),
                                                      {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.status)
                if receiver.drip:
                    # A slow but live answer: one byte every 0.5 s, each within any read timeout.
                    self.send_header("content-length", str(receiver.drip))
                    self.end_headers()
                    for _ in range(receiver.drip):
                        self.wfile.write(b".")
                        self.wfile.flush()
                        time.sleep(0.5)
                    return
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def unique(self) -> dict[str, Received]:
        """What an idempotent receiver keeps: the first request per webhook-id."""
        out: dict[str, Received] = {}
        with self.lock:
            for r in self.requests:
                out.setdefault(r.id, r)
        return out


@pytest.fixture
def hook():
    receiver = HookReceiver(free_port()).start()
    yield receiver
    receiver.stop()


# --- a real SMTP server -----------------------------------------------------------------------

@dataclass
class MailBox:
    port: int
    password: str | None = None  # set: the server requires AUTH (login "alerts")
    messages: list = field(default_factory=list)
    controller: object = None

    def start(self) -> "MailBox":
        from email import message_from_bytes, policy

        from aiosmtpd.controller import Controller

        box = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                box.messages.append(message_from_bytes(envelope.original_content or envelope.content, policy=policy.default))
                return "250 OK"

        kwargs = {}
        if self.password is not None:
            from aiosmtpd.smtp import AuthResult

            def authenticator(server, session, envelope, mechanism, auth_data):
                ok = auth_data.login == b"alerts" and auth_data.password == self.password.encode()
                return AuthResult(success=ok)

            kwargs = {"authenticator": authenticator, "auth_require_tls": False, "auth_required": True}
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def mailbox():
    box = MailBox(free_port()).start()
    yield box
    box.stop()


@pytest.fixture
def alert_settings(fresh_db, mailbox, monkeypatch):
    """Settings for a fresh database, the test SMTP server, short retries."""
    monkeypatch.setenv("ALERTS_TEST_SECRET", SECRET)
    return fresh_db.model_copy(update={
        "alerts_smtp_host": "127.0.0.1", "alerts_smtp_port": mailbox.port, "alerts_smtp_starttls": False,
        "alerts_settle_seconds": 0.0, "alerts_catchup_windows": 24, "alerts_interval_seconds": 1.0,
        "alerts_delivery_interval_seconds": 0.5, "alerts_backoff_base_seconds": 0.2,
        "alerts_backoff_max_seconds": 0.5, "alerts_delivery_timeout_seconds": 2.0,
    })


def service_env(settings, **extra) -> dict[str, str]:
    """Environment for a service subprocess mirroring ``settings``."""
    env = {**os.environ,
           "FINPULSE_DATABASE_URL": settings.database_url.get_secret_value(),
           "FINPULSE_ALERTS_SMTP_HOST": settings.alerts_smtp_host or "",
           "FINPULSE_ALERTS_SMTP_PORT": str(settings.alerts_smtp_port),
           "FINPULSE_ALERTS_SMTP_STARTTLS": "false",
           "FINPULSE_ALERTS_SETTLE_SECONDS": "0",
           "FINPULSE_ALERTS_INTERVAL_SECONDS": "1",
           "FINPULSE_ALERTS_DELIVERY_INTERVAL_SECONDS": "0.5",
           "FINPULSE_ALERTS_BACKOFF_BASE_SECONDS": "0.2",
           "FINPULSE_ALERTS_BACKOFF_MAX_SECONDS": "0.5",
           "FINPULSE_ALERTS_DELIVERY_TIMEOUT_SECONDS": "2",
           "FINPULSE_ALERTS_METRICS_PORT": "0",  # a test that scrapes sets its own free port
           "ALERTS_TEST_SECRET": SECRET,
           "PYTHONUNBUFFERED": "1"}
    env.update(extra)
    return env


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
