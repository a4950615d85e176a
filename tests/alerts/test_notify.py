"""Payloads, templates, signatures and backoff, without a database."""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta, timezone

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
    window = {"statistic": 0.07056204003564565, "p_value": 1.2345e-6, "window_start": T.isoformat(),
              "window_end": (T + timedelta(hours=1)).isoformat(),
              "figures": {"n_docs": 64, "n_negative": 24, "share": 0.375, "baseline_share": 0.18534,
                          "lift": 0.07056204003564565}}
    return Episode(id="ep1", fingerprint="fp1", rule="ticker-share", dimension="ticker", key="ACME", width=3600,
                   severity="warning", status=status, pending_windows=2, starts_at=T, last_window=T, fired_at=T,
                   ends_at=T if status == "resolved" else None, last_eval=window, peak=window,
                   evidence={"window": window, "test": "binomial", "detector": "negative_share",
                             "documents": [{"title": "<script>alert(1)</script> ACME falls", "url": "https://x/1",
                                            "source": "wire", "p_negative": 0.9, "first_story": True,
                                            "published_at": T.isoformat()},
                                           {"title": None, "excerpt": "ACME guidance cut…", "url": None,
                                            "source": "benzinga", "p_negative": 0.987654321, "first_story": None,
                                            "published_at": T.isoformat()}]})


def test_alertmanager_shape_and_escaped_html():
    settings = Settings(alerts_external_url="https://finpulse.example/")
    items = [alert_json(None, _episode(), "firing", settings)]
    payload = build_message("msg_1", Receiver("mail", "email", to=("a@b",)), items, settings,
                            group_key='{}:{alertname="ticker-share"}', group_labels={"alertname": "ticker-share"})
    body = payload["webhook"]
    assert body["version"] == "4" and body["status"] == "firing" and body["receiver"] == "mail"
    assert body["commonLabels"]["alertname"] == "ticker-share"
    assert body["groupKey"] == '{}:{alertname="ticker-share"}' and body["groupLabels"] == {"alertname": "ticker-share"}
    alert = body["alerts"][0]
    assert alert["endsAt"] == "0001-01-01T00:00:00Z" and alert["startsAt"] == "2026-11-20T10:00:00Z"
    assert alert["generatorURL"] == "https://finpulse.example/alerts/ep1"
    assert "<script>" not in payload["html"] and "&lt;script&gt;" in payload["html"]
    assert "<script>alert(1)</script> ACME falls" in payload["text"]  # plain text stays as written
    # Figures rounded for people, the same in the summary, the text and the HTML part ...
    figures = "share 37.5% vs 18.5%, +7.1 points, p = 1.2e-6, 64 documents, 24 negative"
    assert alert["annotations"]["summary"] == f"Negative sentiment about ticker ACME: {figures}"
    assert "Fired on the window 2026-11-20 10:00 – 11:00 UTC; test: binomial" in payload["text"]
    assert f"Negative sentiment about ticker ACME: {figures}" in payload["text"]
    assert "<td>+7.1 points</td><td>p = 1.2e-6</td>" in payload["html"]
    assert "0.0705" not in payload["text"] + payload["html"]
    # ... a document without a title shows the start of its text, and no line is left empty for its link
    lines = payload["text"].splitlines()
    i = lines.index("  - [0.99] ACME guidance cut… — benzinga, 2026-11-20 10:00 UTC")
    assert lines[i - 2:i] == ["  - [0.90] <script>alert(1)</script> ACME falls — wire, 2026-11-20 10:00 UTC (first story)",
                              "    https://x/1"]
    assert lines[i + 1] == ""  # the alert's block ends; no empty line inside it
    assert "<li>[0.99] ACME guidance cut… — benzinga, 2026-11-20 10:00 UTC</li>" in payload["html"]
    # ... while machines get the exact numbers.
    assert alert["evidence"]["window"]["statistic"] == 0.07056204003564565
    assert alert["evidence"]["documents"][1]["p_negative"] == 0.987654321
    ep = _episode("resolved")
    ep.evidence["resolved_window"] = {**ep.evidence["window"], "p_value": 0.2, "statistic": -0.01,
                                      "figures": {"n_docs": 50, "n_negative": 9, "share": 0.18, "baseline_share": 0.18,
                                                  "lift": -0.01}}
    resolved = alert_json(None, ep, "resolved", settings)
    assert resolved["endsAt"] == "2026-11-20T10:00:00Z"
    text = build_message("msg_2", Receiver("mail", "email", to=("a@b",)), [resolved], settings, group_key="{}:{}",
                         group_labels={})["text"]
    assert ("Resolved on the window 2026-11-20 10:00 – 11:00 UTC: share 18.0% vs 18.0%, -1.0 points, p = 0.2, "
            "50 documents, 9 negative") in text


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


def test_backoff_is_exponential_capped_with_equal_jitter_between_half_and_the_whole_ceiling():
    settings = Settings(alerts_backoff_base_seconds=2, alerts_backoff_max_seconds=60)
    rng = random.Random(0)
    for attempt, ceiling in [(1, 2), (2, 4), (3, 8), (5, 32), (6, 60), (20, 60)]:
        delays = [backoff(attempt, settings, rng) for _ in range(2000)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), attempt
        # The whole band is used (equal jitter), not a narrower one, and evenly: mean 3/4 of the ceiling.
        assert min(delays) < ceiling * 0.51 and max(delays) > ceiling * 0.99, attempt
        assert sum(delays) / len(delays) == pytest.approx(0.75 * ceiling, rel=0.02), attempt
