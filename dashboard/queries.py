"""What the dashboard and the report read: queries over the analysts' views (sql/0004_analyst.sql).

Every function takes a connection of the read-only ``finpulse_analyst`` role and returns plain
dicts (one per row, times as timezone-aware UTC datetimes). Each query is an index range scan of
one scope or one time range (bench/bench_dashboard.py measures them on 1 M documents and 30 days
of windows).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

WIDTHS = {"1m": 60, "1h": 3600, "1d": 86400}
# How far back the trend of each width reaches by default (what retention keeps of it, or a year).
SPANS = {"1m": timedelta(hours=24), "1h": timedelta(days=30), "1d": timedelta(days=365)}
DIMENSIONS = ("all", "ticker", "topic", "source")

Row = dict[str, Any]


def _rows(conn: Connection, sql: str, **params) -> list[Row]:
    return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]


def latest_model(conn: Connection) -> str | None:
    """The model version of the newest window: pages show one model's windows and scores."""
    return conn.execute(sa.text("SELECT model_version FROM latest_model_version")).scalar()


def trend(conn: Connection, *, dimension: str, key: str, width: int, since: datetime, until: datetime,
          model_version: str) -> list[Row]:
    return _rows(conn, """
        SELECT window_start, window_end, n_docs, n_negative, negative_share, mean_score
        FROM sentiment_trend
        WHERE width_seconds = :w AND dimension = :d AND key = :k AND model_version = :mv
          AND window_start >= :since AND window_start < :until
        ORDER BY window_start""", w=width, d=dimension, k=key, mv=model_version, since=since, until=until)


def episodes(conn: Connection, *, since: datetime, until: datetime, dimension: str | None = None,
             key: str | None = None, status: str | None = None, limit: int = 200) -> list[Row]:
    """Alert episodes overlapping [since, until), newest first (optionally one scope or one status)."""
    return _rows(conn, """
        SELECT episode_id, rule, dimension, key, width_seconds, severity, status, starts_at, fired_at, ends_at,
               shaded_until, test, p_value, negative_share, baseline_share, n_docs, n_negative,
               evidence_documents, n_notifications, n_delivered, n_dead
        FROM alert_history
        WHERE starts_at < :until AND shaded_until > :since
          AND (CAST(:d AS text) IS NULL OR dimension = :d) AND (CAST(:k AS text) IS NULL OR key = :k)
          AND (CAST(:s AS text) IS NULL OR status = :s)
        ORDER BY starts_at DESC
        LIMIT :limit""", since=since, until=until, d=dimension, k=key, s=status, limit=limit)


def firing(conn: Connection) -> list[Row]:
    return _rows(conn, """
        SELECT episode_id, rule, dimension, key, severity, starts_at, fired_at, p_value, negative_share,
               baseline_share, n_delivered, n_notifications
        FROM alert_history WHERE status = 'firing' ORDER BY fired_at DESC, episode_id""")


def movers(conn: Connection, *, model_version: str, min_docs: int = 20, limit: int = 15) -> list[Row]:
    """The scopes (tickers, topics, sources) whose negative share rose most in the last 24 h over their week."""
    return _rows(conn, """
        SELECT dimension, key, docs_24h, negative_share_24h, negative_share_baseline_7d, negative_share_change
        FROM scope_leaderboard
        WHERE model_version = :mv AND dimension <> 'all' AND docs_24h >= :min_docs
          AND negative_share_change IS NOT NULL
        ORDER BY negative_share_change DESC, docs_24h DESC
        LIMIT :limit""", mv=model_version, min_docs=min_docs, limit=limit)


def top_scopes(conn: Connection, *, dimension: str, since: datetime, until: datetime, model_version: str,
               limit: int = 10) -> list[Row]:
    """The scopes of one dimension with the most documents in [since, until), from hourly windows."""
    return _rows(conn, """
        SELECT key, sum(n_docs)::bigint AS n_docs, sum(n_negative)::bigint AS n_negative,
               sum(n_negative)::float8 / nullif(sum(n_docs), 0) AS negative_share
        FROM sentiment_trend
        WHERE width_seconds = 3600 AND dimension = :d AND model_version = :mv
          AND window_start >= :since AND window_start < :until
        GROUP BY key
        ORDER BY n_docs DESC, key
        LIMIT :limit""", d=dimension, mv=model_version, since=since, until=until, limit=limit)


_DOCUMENT_COLUMNS = """d.id, d.published_at, d.source, d.url, d.title, left(d.text, 300) AS text_start,
       d.text_pruned_at, d.sentiment, d.p_negative, d.score, d.topic, d.evidence, d.entities"""


def documents(conn: Connection, *, dimension: str, key: str, model_version: str, since: datetime | None = None,
              until: datetime | None = None, most_negative: bool = False, limit: int = 20) -> list[Row]:
    """A scope's documents, newest first (or its negative ones, most negative first), with scores, topic,
    evidence and entities; for a ticker also the sentiment towards it (``towards``, ``towards_p_negative``)."""
    t = "m" if dimension == "ticker" else "d"  # ticker: the sentiment towards it orders and filters
    order = f"{t}.p_negative DESC, {t}.published_at DESC" if most_negative else f"{t}.published_at DESC"
    window = f"AND {t}.published_at >= :since AND {t}.published_at < :until" if since is not None else ""
    if most_negative:
        window += f" AND {t}.sentiment = 'negative'"
    params = dict(mv=model_version, key=key, since=since, until=until, limit=limit)
    if dimension == "ticker":
        return _rows(conn, f"""
            SELECT {_DOCUMENT_COLUMNS}, m.sentiment AS towards, m.p_negative AS towards_p_negative, m.entity_level
            FROM ticker_mentions m
            JOIN document_detail d ON d.id = m.document_id AND d.model_version = m.model_version
            WHERE m.ticker = :key AND m.model_version = :mv {window}
            ORDER BY {order}
            LIMIT :limit""", **params)
    where = {"all": "true", "topic": "d.topic = :key", "source": "d.source = :key"}[dimension]
    return _rows(conn, f"""
        SELECT {_DOCUMENT_COLUMNS}, NULL AS towards, NULL AS towards_p_negative, NULL AS entity_level
        FROM document_detail d
        WHERE d.model_version = :mv AND {where} {window}
        ORDER BY {order}
        LIMIT :limit""", **params)


def towards(conn: Connection, *, ticker: str, model_version: str, since: datetime) -> list[Row]:
    """A ticker's daily windows since ``since``: documents by the sentiment towards it (the entity head's
    where it scored the link, else the document's: what ticker windows count). From windows, not from
    the mentions, so a ticker with a million mentions costs the same 7 rows."""
    return _rows(conn, """
        SELECT window_start, n_docs, n_negative, n_neutral, n_positive
        FROM sentiment_trend
        WHERE width_seconds = 86400 AND dimension = 'ticker' AND key = :t AND model_version = :mv
          AND window_start >= :since
        ORDER BY window_start""", t=ticker, mv=model_version, since=since)


def episode_events(conn: Connection, episode_id: str) -> list[Row]:
    return _rows(conn, """
        SELECT event_id, event, window_start, at, p_value, negative_share, detail
        FROM alert_history_events WHERE episode_id = :e ORDER BY event_id""", e=episode_id)


def episode_deliveries(conn: Connection, episode_id: str) -> list[Row]:
    return _rows(conn, """
        SELECT receiver, notified_status, seq, message_id, channel, message_state, attempts, sent_at, last_error,
               attempt, ok, response_code, error, duration_ms, attempted_at
        FROM alert_history_deliveries WHERE episode_id = :e ORDER BY receiver, seq, attempt NULLS LAST""",
        e=episode_id)


def evidence_words(evidence: Any, limit: int = 6) -> list[str]:
    """The words of a document_scores.evidence list ([{"word", "weight"}], strongest first); [] when NULL."""
    if not isinstance(evidence, list):
        return []
    return [str(item["word"]) for item in evidence[:limit] if isinstance(item, dict) and "word" in item]
