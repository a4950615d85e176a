"""A small, known data set for the analysts' views, the dashboard and the report.

Times are relative to the hour of ``now`` (the views read ``now()``). What it holds:

- hourly windows for 8 days and daily windows for 30 days of five scopes: the market (``all``),
  tickers ACME and BOLT, topic ``earnings`` and source ``wire``; ACME's negative share jumps from
  10% to 60% in the last SURGE_HOURS hours (the mover), BOLT stays at 20%;
- minute windows of the market for the last 3 hours;
- documents: ACME's negative story (``TOP_TITLE``, evidence words, entity-level sentiment
  negative), BOLT's positive document that is negative towards BOLT, a few more, and one whose
  evidence is NULL;
- alert episodes: ACME firing (a delivered email, a webhook that failed once), BOLT resolved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

MODEL = "seed-model@1"
OLD_MODEL = "seed-model@0"
HOUR = 3600
DAY = 86400
SURGE_HOURS = 6
TOP_ID = "acme-recall"
TOP_TITLE = "ACME recalls its flagship widget after fire reports"
TOP_URL = "https://news.example/acme-recall"
BOLT_MIXED_ID = "bolt-mixed"
ACME_EPISODE = "ep-acme-1"
BOLT_EPISODE = "ep-bolt-1"
ACME_P_VALUE = 1.5e-7

# Per scope: (baseline docs, baseline negatives) per hour, and in the surge hours.
HOURLY = {
    ("all", "*"): ((100, 20), (110, 36)),
    ("ticker", "ACME"): ((20, 2), (30, 18)),
    ("ticker", "BOLT"): ((40, 8), (40, 8)),
    ("topic", "earnings"): ((30, 6), (30, 6)),
    ("source", "wire"): ((60, 12), (60, 12)),
}
DAILY = {scope: (base[0] * 24, base[1] * 24) for scope, (base, _) in HOURLY.items()}


@dataclass(frozen=True)
class Seeded:
    now: datetime
    hour: datetime  # start of the current hour
    acme_window: datetime  # start of the first ACME surge window (the episode starts there)


def hour_floor(t: datetime) -> datetime:
    ts = int(t.timestamp())
    return datetime.fromtimestamp(ts - ts % HOUR, timezone.utc)


def _window(dimension, key, start, width, n, neg, mv=MODEL) -> dict:
    pos = (n - neg) // 2
    score = (pos - neg) / n if n else None
    return {"dimension": dimension, "key": key, "start": start, "end": start + timedelta(seconds=width), "mv": mv,
            "n": n, "neg": neg, "neu": n - neg - pos, "pos": pos, "mean": score, "sum": (score or 0) * n,
            "mpn": neg / n if n else None}


def window_rows(now: datetime) -> list[dict]:
    hour = hour_floor(now)
    rows = []
    for (dimension, key), (base, surge) in HOURLY.items():
        for i in range(8 * 24):
            n, neg = surge if i < SURGE_HOURS else base
            rows.append(_window(dimension, key, hour - timedelta(hours=i), HOUR, n, neg))
    today = datetime.fromtimestamp(int(now.timestamp()) // DAY * DAY, timezone.utc)
    for (dimension, key), (n, neg) in DAILY.items():
        for i in range(30):
            rows.append(_window(dimension, key, today - timedelta(days=i), DAY, n, neg))
    for i in range(180):
        rows.append(_window("all", "*", now.replace(second=0, microsecond=0) - timedelta(minutes=i), 60, 2, 1))
    # An older model's window among the recent ones: JOIN latest_model_version must leave it out.
    rows.append(_window("all", "*", hour - timedelta(hours=2), HOUR, 999, 999, mv=OLD_MODEL))
    return rows


WINDOWS_SQL = """
INSERT INTO sentiment_windows (dimension, key, window_start, window_end, model_version, n_docs, n_negative,
    n_neutral, n_positive, mean_score, mean_p_negative, sum_score, sum_p_negative, n_first_stories, n_negative_first)
VALUES (:dimension, :key, :start, :end, :mv, :n, :neg, :neu, :pos, :mean, :mpn, :sum, :neg, :n, :neg)
"""


def _documents(now: datetime) -> list[dict]:
    at = hour_floor(now) - timedelta(hours=1) + timedelta(minutes=5)
    return [
        {"id": TOP_ID, "title": TOP_TITLE, "url": TOP_URL, "t": at, "tickers": ["ACME"], "topic": "product",
         "sentiment": "negative", "p": (0.93, 0.05, 0.02), "entity": ("ACME", "negative", (0.9, 0.07, 0.03)),
         "text": "ACME Corp recalls 2 million widgets after reports of fires; shares fall 12% premarket.",
         "evidence": [{"word": "recalls", "weight": 0.41}, {"word": "fires", "weight": 0.33},
                      {"word": "fall", "weight": 0.2}]},
        {"id": "acme-probe", "title": "Regulator opens probe into ACME widgets", "url": "https://news.example/acme-probe",
         "t": at + timedelta(minutes=3), "tickers": ["ACME"], "topic": "legal", "sentiment": "negative",
         "p": (0.81, 0.15, 0.04), "entity": ("ACME", "negative", (0.78, 0.18, 0.04)), "text": "A probe opens.",
         "evidence": None},
        {"id": "acme-fans", "title": "ACME fans queue for new phone", "url": "https://news.example/acme-fans",
         "t": at - timedelta(hours=2), "tickers": ["ACME"], "topic": "product", "sentiment": "positive",
         "p": (0.05, 0.15, 0.8), "entity": ("ACME", None, None), "text": "Queues around the block.",
         "evidence": [{"word": "queue", "weight": 0.2}]},
        {"id": BOLT_MIXED_ID, "title": "BOLT loses contract to ACME rival, market cheers", "url": "https://news.example/bolt",
         "t": at - timedelta(minutes=30), "tickers": ["BOLT"], "topic": "earnings", "sentiment": "positive",
         "p": (0.1, 0.2, 0.7), "entity": ("BOLT", "negative", (0.72, 0.2, 0.08)), "text": "The market cheers.",
         "evidence": [{"word": "cheers", "weight": 0.5}]},
        {"id": "wire-macro", "title": "Markets steady ahead of rate decision", "url": "https://news.example/macro",
         "t": at - timedelta(hours=5), "tickers": [], "topic": "macro", "sentiment": "neutral",
         "p": (0.1, 0.8, 0.1), "entity": None, "text": "Steady.", "evidence": None},
    ]


def _alerts(hour: datetime) -> tuple[list[dict], list[dict], list[dict], list[dict], list[dict]]:
    acme_start = hour - timedelta(hours=SURGE_HOURS - 1)
    acme_fired = acme_start + timedelta(hours=2)
    acme_window = {"fire": True, "hold": True, "statistic": 0.5, "p_value": ACME_P_VALUE, "reason": "",
                   "figures": {"n_docs": 30, "n_negative": 18, "share": 0.6, "baseline_share": 0.1},
                   "window_start": (acme_fired - timedelta(hours=1)).isoformat(), "window_end": acme_fired.isoformat()}
    acme_evidence = {"test": "one-sided exact binomial", "detector": "negative_share", "window": acme_window,
                     "documents": [{"id": TOP_ID, "title": TOP_TITLE, "url": TOP_URL, "source": "wire",
                                    "p_negative": 0.93}]}
    bolt_start = hour - timedelta(days=3)
    bolt_window = {**acme_window, "p_value": 2e-4, "figures": {"n_docs": 40, "n_negative": 20, "share": 0.5,
                                                               "baseline_share": 0.2}}
    alerts = [
        {"id": ACME_EPISODE, "fp": "fp-acme", "rule": "ticker-negative-share", "dimension": "ticker", "key": "ACME",
         "severity": "warning", "status": "firing", "starts": acme_start, "fired": acme_fired, "ends": None,
         "last": hour - timedelta(hours=1), "evidence": acme_evidence, "peak": acme_window},
        {"id": BOLT_EPISODE, "fp": "fp-bolt", "rule": "ticker-negative-share", "dimension": "ticker", "key": "BOLT",
         "severity": "warning", "status": "resolved", "starts": bolt_start, "fired": bolt_start + timedelta(hours=2),
         "ends": bolt_start + timedelta(hours=5), "last": bolt_start + timedelta(hours=4),
         "evidence": {"test": "one-sided exact binomial", "detector": "negative_share", "window": bolt_window,
                      "documents": []}, "peak": bolt_window},
    ]
    events = [
        {"a": ACME_EPISODE, "event": "pending", "w": acme_start, "detail": acme_window},
        {"a": ACME_EPISODE, "event": "firing", "w": acme_fired - timedelta(hours=1), "detail": acme_window},
        {"a": ACME_EPISODE, "event": "notified", "w": None, "detail": {"receivers": ["mail", "hook"]}},
        {"a": BOLT_EPISODE, "event": "firing", "w": bolt_start, "detail": bolt_window},
        {"a": BOLT_EPISODE, "event": "resolved", "w": bolt_start + timedelta(hours=4), "detail": bolt_window},
    ]
    outbox = [
        {"id": "msg-acme-mail", "receiver": "mail", "channel": "email", "state": "sent", "attempts": 1, "sent": hour},
        {"id": "msg-acme-hook", "receiver": "hook", "channel": "webhook", "state": "pending", "attempts": 1, "sent": None},
    ]
    notifications = [
        {"a": ACME_EPISODE, "receiver": "mail", "o": "msg-acme-mail", "at": acme_fired},
        {"a": ACME_EPISODE, "receiver": "hook", "o": "msg-acme-hook", "at": acme_fired},
    ]
    deliveries = [
        {"o": "msg-acme-mail", "attempt": 1, "ok": True, "code": 250, "error": None},
        {"o": "msg-acme-hook", "attempt": 1, "ok": False, "code": None, "error": "connection refused"},
    ]
    return alerts, events, outbox, notifications, deliveries


def seed(engine, now: datetime | None = None) -> Seeded:
    """Write the data set into the database of ``engine`` (the owner's, not the analyst's)."""
    now = now or datetime.now(timezone.utc)
    hour = hour_floor(now)
    docs = _documents(now)
    alerts, events, outbox, notifications, deliveries = _alerts(hour)
    with engine.begin() as conn:
        conn.execute(sa.text(WINDOWS_SQL), window_rows(now))
        for d in docs:
            conn.execute(sa.text("""
                INSERT INTO documents (id, schema_version, source, kind, url, title, text, published_at, fetched_at,
                                       tickers, novelty)
                VALUES (:id, 1, 'wire', 'news', :url, :title, :text, :t, :t, :tickers, true)"""), d)
            neg, neu, pos = d["p"]
            conn.execute(sa.text("""
                INSERT INTO document_scores (document_id, model_version, published_at, sentiment, p_negative,
                                             p_neutral, p_positive, topic, topic_confidence, evidence)
                VALUES (:id, :mv, :t, :s, :neg, :neu, :pos, :topic, 0.8, CAST(:ev AS jsonb))"""),
                {"id": d["id"], "mv": MODEL, "t": d["t"], "s": d["sentiment"], "neg": neg, "neu": neu, "pos": pos,
                 "topic": d["topic"], "ev": None if d["evidence"] is None else json.dumps(d["evidence"])})
            if d["entity"] is not None:
                entity, sentiment, probs = d["entity"]
                # The rule-found link (model version '') and, where the entity head scored it, its row.
                conn.execute(sa.text("INSERT INTO document_entities (document_id, entity, linked_by, mention) "
                                     "VALUES (:id, :e, 'cashtag', :e)"), {"id": d["id"], "e": entity})
                if sentiment is not None:
                    conn.execute(sa.text("""
                        INSERT INTO document_entities (document_id, entity, model_version, sentiment, confidence,
                                                       linked_by, mention, p_negative, p_neutral, p_positive)
                        VALUES (:id, :e, :mv, :s, :c, 'cashtag', :e, :neg, :neu, :pos)"""),
                        {"id": d["id"], "e": entity, "mv": MODEL, "s": sentiment, "c": max(probs),
                         "neg": probs[0], "neu": probs[1], "pos": probs[2]})
        for a in alerts:
            conn.execute(sa.text("""
                INSERT INTO alerts (id, fingerprint, rule, dimension, key, width_seconds, severity, status,
                                    starts_at, fired_at, ends_at, last_window, last_eval, peak, evidence)
                VALUES (:id, :fp, :rule, :dimension, :key, 3600, :severity, :status, :starts, :fired, :ends, :last,
                        CAST(:peak AS jsonb), CAST(:peak AS jsonb), CAST(:evidence AS jsonb))"""),
                {**a, "peak": json.dumps(a["peak"]), "evidence": json.dumps(a["evidence"])})
        for e in events:
            conn.execute(sa.text("INSERT INTO alert_events (alert_id, event, window_start, detail) "
                                 "VALUES (:a, :event, :w, CAST(:detail AS jsonb))"), {**e, "detail": json.dumps(e["detail"])})
        for o in outbox:
            conn.execute(sa.text("""
                INSERT INTO alert_outbox (id, receiver, channel, status, group_key, payload, state, attempts, sent_at)
                VALUES (:id, :receiver, :channel, 'firing', 'g', '{}'::jsonb, :state, :attempts, :sent)"""), o)
        for n in notifications:
            conn.execute(sa.text("INSERT INTO alert_notifications (alert_id, receiver, status, seq, outbox_id, at_window) "
                                 "VALUES (:a, :receiver, 'firing', 0, :o, :at)"), n)
        for d in deliveries:
            conn.execute(sa.text("INSERT INTO alert_deliveries (outbox_id, attempt, ok, response_code, error, duration_ms) "
                                 "VALUES (:o, :attempt, :ok, :code, :error, 12)"), d)
    return Seeded(now=now, hour=hour, acme_window=hour - timedelta(hours=SURGE_HOURS - 1))
