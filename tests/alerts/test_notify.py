"""Payloads, templates, signatures and backoff, without a database."""

from __future__ import annotations

import random
import re
from datetime import datetime, timezone

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from alerts.config import Receiver
from alerts.delivery import backoff
from alerts.lifecycle import Episode
from alerts.notify import alert_json, build_message, sign
from finpulse.settings import Settings
from tests.alerts.conftest import SECRET

README = (__import__("pathlib").Path(__file__).resolve().parents[2] / "README.md").read_text()
T = datetime(2026, 11, 20, 10, tzinfo=timezone.utc)


def _episode(status="firing"):
    window = {"statistic": 0.3, "p_value": 1e-7, "window_start": T.isoformat(), "window_end": T.isoformat(),
              "figures": {"n_docs": 60, "n_negative": 40, "share": 0.667, "baseline_share": 0.2}}
    return Episode(id="ep1", fingerprint="fp1", rule="ticker-share", dimension="ticker", key="ACME", width=3600,
                   severity="warning", status=status, pending_windows=2, starts_at=T, last_window=T, fired_at=T,
                   ends_at=T if status == "resolved" else None, last_eval=window, peak=window,
                   evidence={"window": window, "test": "binomial",
                             "documents": [{"title": "<script>alert(1)</script> ACME falls", "url": "https://x/1",
                                            "source": "wire", "p_negative": 0.9, "first_story": True}]})


def test_alertmanager_shape_and_escaped_html():
    settings = Settings(alerts_external_url="https://finpulse.example/")
    items = [alert_json(None, _episode(), "firing", settings)]
    payload = build_message("msg_1", Receiver("mail", "email", to=("a@b",)), items, settings)
    body = payload["webhook"]
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "mail"
    assert body["commonLabels"]["alertname"] == "ticker-share"
    alert = body["alerts"][0]
    assert alert["endsAt"] == "0001-01-01T00:00:00Z" and alert["startsAt"] == "2026-11-20T10:00:00Z"
    assert alert["generatorURL"] == "https://finpulse.example/alerts/ep1"
    assert "<script>" not in payload["html"] and "&lt;script&gt;" in payload["html"]
    assert "<script>alert(1)</script> ACME falls" in payload["text"]  # plain text stays as written
    assert "67%" in alert["annotations"]["summary"] and "20%" in alert["annotations"]["summary"]
    resolved = alert_json(None, _episode("resolved"), "resolved", settings)
    assert resolved["endsAt"] == "2026-11-20T10:00:00Z"


def test_signature_round_trip_with_the_reference_library():
    body = '{"a":1}'
    headers = sign(SECRET, "msg_1", body)
    assert re.fullmatch(r"v1,[A-Za-z0-9+/=]+", headers["webhook-signature"])
    assert Webhook(SECRET).verify(body, headers) == {"a": 1}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify('{"a":2}', headers)


def test_readme_receiver_snippet_runs():
    snippet = README.split("A receiver checks a webhook", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(snippet, namespace)  # noqa: S102 - our own documentation
    body = '{"alerts":[{"status":"firing","labels":{"alertname":"r","key":"ACME"},"evidence":{"window":{"p_value":1e-6}}}]}'
    headers = {k.title(): v for k, v in sign(SECRET, "msg_9", body).items()}  # any header case
    seen: set[str] = set()
    namespace["handle"](body.encode(), headers, SECRET, seen)
    assert seen == {"msg_9"}
    namespace["handle"](body.encode(), headers, SECRET, seen)  # a retry: ignored
    with pytest.raises(PermissionError):
        namespace["handle"](body.replace("ACME", "EVIL").encode(), headers, SECRET, seen)


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    settings = Settings(alerts_backoff_base_seconds=2, alerts_backoff_max_seconds=60)
    rng = random.Random(0)
    for attempt, ceiling in [(1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (20, 60)]:
        delays = [backoff(attempt, settings, rng) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered
