"""The queries alerts run against the pipeline's tables (read only): windows and evidence documents.

One query per rule and window: the window's rows of that width and dimension (the time index),
each joined LATERALly to the sums over its own baseline windows, which is one range scan of
``sentiment_windows_scope_idx (width_seconds, dimension, key, window_start)`` per scope that
has documents in the window. Scopes without a row in the window cannot fire, so they are not
read at all.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alerts.config import Rule
from alerts.detectors import Window

_WINDOWS = """
SELECT c.key, c.{n_docs} AS n_docs, c.{n_neg} AS n_negative, c.mean_p_negative,
       coalesce(b.present, 0) AS base_present, coalesce(b.docs, 0) AS base_docs,
       coalesce(b.neg, 0) AS base_negative, coalesce(b.negsq, 0) AS base_negsq
FROM sentiment_windows c
LEFT JOIN LATERAL (
    SELECT count(*) AS present, sum(h.{n_docs}) AS docs, sum(h.{n_neg}) AS neg,
           sum(h.{n_neg}::float8 * h.{n_neg}) AS negsq
    FROM sentiment_windows h
    WHERE h.width_seconds = c.width_seconds AND h.dimension = c.dimension AND h.key = c.key
      AND h.window_start >= :base_start AND h.window_start < c.window_start
      AND h.model_version = c.model_version
) b ON true
WHERE c.width_seconds = :width AND c.dimension = :dimension AND c.window_start = :start
  AND c.model_version = :model_version {key_filter}
"""


def windows_sql(rule: Rule) -> str:
    first = rule.first_stories_only
    key_filter = "AND c.key = ANY(:keys)" if rule.scope.exact_keys is not None else ""
    return _WINDOWS.format(n_docs="n_first_stories" if first else "n_docs",
                           n_neg="n_negative_first" if first else "n_negative", key_filter=key_filter)


def window_params(rule: Rule, start: datetime, model_version: str) -> dict:
    params = {"width": rule.width, "dimension": rule.scope.dimension, "start": start,
              "base_start": start - timedelta(seconds=rule.width * rule.baseline_windows),
              "model_version": model_version}
    if rule.scope.exact_keys is not None:
        params["keys"] = rule.scope.exact_keys
    return params


def scope_windows(conn: Connection, rule: Rule, start: datetime, model_version: str) -> dict[str, Window]:
    """key -> Window for every scope of the rule with a row in the window starting at ``start``."""
    out = {}
    filter_here = rule.scope.exact_keys is None and rule.scope.keys != ["*"]
    for row in conn.execute(sa.text(windows_sql(rule)), window_params(rule, start, model_version)):
        if filter_here and not rule.scope.matches(row.key):
            continue
        out[row.key] = Window(n_docs=row.n_docs, n_negative=row.n_negative,
                              base_windows=rule.baseline_windows, base_docs=int(row.base_docs),
                              base_negative=int(row.base_negative), base_present=int(row.base_present),
                              base_sumsq_negative=float(row.base_negsq),
                              mean_p_negative=row.mean_p_negative)
    return out


def latest_model_version(conn: Connection) -> str | None:
    """The model version of the newest window (uses the time index)."""
    return conn.execute(sa.text(
        "SELECT model_version FROM sentiment_windows ORDER BY window_start DESC LIMIT 1")).scalar()


def latest_window_start(conn: Connection, width: int) -> datetime | None:
    return conn.execute(sa.text(
        "SELECT max(window_start) FROM sentiment_windows WHERE width_seconds = :w"), {"w": width}).scalar()


_SCOPE_FILTER = {
    "all": "",
    "ticker": ("AND (:key = ANY(d.tickers) OR EXISTS (SELECT 1 FROM document_entities e "
               "WHERE e.document_id = d.id AND e.entity = :key))"),
    "topic": "AND s.topic = :key",
    "source": "AND d.source = :key",
}


def top_documents(conn: Connection, rule: Rule, key: str, start: datetime, end: datetime,
                  model_version: str, limit: int = 5) -> list[dict]:
    """The negative documents that drove a window, first stories first, then by p_negative."""
    sql = f"""
        SELECT d.id, d.title, d.url, d.source, d.published_at, d.novelty, d.first_story_id,
               s.p_negative, s.topic
        FROM document_scores s JOIN documents d ON d.id = s.document_id
        WHERE s.published_at >= :start AND s.published_at < :end AND s.sentiment = 'negative'
          AND s.model_version = :mv {_SCOPE_FILTER[rule.scope.dimension]}
          {"AND d.novelty IS NOT FALSE" if rule.first_stories_only else ""}
        ORDER BY CASE WHEN d.novelty THEN 0 WHEN d.novelty IS NULL THEN 1 ELSE 2 END, s.p_negative DESC, d.id
        LIMIT :limit
    """
    rows = conn.execute(sa.text(sql), {"start": start, "end": end, "mv": model_version, "key": key, "limit": limit})
    return [{"id": r.id, "title": r.title, "url": r.url, "source": r.source,
             "published_at": r.published_at.isoformat(), "first_story": r.novelty,
             "first_story_id": r.first_story_id, "p_negative": round(float(r.p_negative), 4), "topic": r.topic}
            for r in rows]
