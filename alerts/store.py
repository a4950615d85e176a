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
from alerts.formatting import excerpt

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


# Evidence documents are picked by the measure their window counted (pipeline/windows.py
# _FROM_DOCUMENTS, which alerts cannot import): a ticker window counts each linked document's
# document_entities row of this model version, else its bare link (model_version ''), one per
# document; that row's own sentiment and p_negative when it has them, else the document's.
# Topic, source and market windows count the document's own scores.
_ENTITY = """
    JOIN LATERAL (
        SELECT e.sentiment, e.p_negative FROM document_entities e
        WHERE e.document_id = d.id AND e.entity = :key AND e.model_version IN ('', :mv)
        ORDER BY e.model_version DESC LIMIT 1
    ) e ON true
"""
_MEASURE = {
    "ticker": ("coalesce(e.sentiment, s.sentiment)",
               "CASE WHEN e.p_negative IS NOT NULL THEN e.p_negative ELSE s.p_negative END",
               "CASE WHEN e.sentiment IS NOT NULL THEN 'entity' ELSE 'document' END"),
}
_DOCUMENT_MEASURE = ("s.sentiment", "s.p_negative", "'document'")
_SCOPE_FILTER = {"all": "", "ticker": "", "topic": "AND s.topic = :key", "source": "AND d.source = :key"}
MEASURES = {
    "entity": "the sentiment towards the ticker (document_entities, the entity head's score)",
    "document": "the document's sentiment",
}


def documents_measure(dimension: str) -> str:
    """How a window of ``dimension`` counts documents (said in the evidence)."""
    if dimension == "ticker":
        return f"{MEASURES['entity']} where scored, else {MEASURES['document']}"
    return MEASURES["document"]


def top_documents(conn: Connection, rule: Rule, key: str, start: datetime, end: datetime,
                  model_version: str, limit: int = 5) -> list[dict]:
    """The documents that counted as negative in the window, first stories first, then by p_negative."""
    sentiment, p_negative, measure = _MEASURE.get(rule.scope.dimension, _DOCUMENT_MEASURE)
    sql = f"""
        SELECT * FROM (
            SELECT d.id, d.title, d.text, d.url, d.source, d.published_at, d.novelty, d.first_story_id, s.topic,
                   {sentiment} AS sentiment, ({p_negative})::float8 AS p_negative, {measure} AS measure
            FROM document_scores s JOIN documents d ON d.id = s.document_id
            {_ENTITY if rule.scope.dimension == "ticker" else ""}
            WHERE s.published_at >= :start AND s.published_at < :end AND s.model_version = :mv
              {_SCOPE_FILTER[rule.scope.dimension]}
              {"AND d.novelty IS NOT FALSE" if rule.first_stories_only else ""}
        ) x
        WHERE x.sentiment = 'negative'
        ORDER BY CASE WHEN x.novelty THEN 0 WHEN x.novelty IS NULL THEN 1 ELSE 2 END, x.p_negative DESC, x.id
        LIMIT :limit
    """
    rows = conn.execute(sa.text(sql), {"start": start, "end": end, "mv": model_version, "key": key, "limit": limit})
    return [{"id": r.id, "title": r.title or None, "excerpt": excerpt(r.text), "url": r.url, "source": r.source,
             "published_at": r.published_at.isoformat(), "first_story": r.novelty,
             "first_story_id": r.first_story_id, "p_negative": float(r.p_negative), "measure": r.measure,
             "topic": r.topic}
            for r in rows]


def trend(conn: Connection, rule: Rule, key: str, last_start: datetime, model_version: str,
          n: int) -> list[tuple[datetime, int, int]]:
    """(window start, documents, negative) for the scope's ``n`` windows of the rule's width up to
    ``last_start``, as the rule counts them; a window without a row has no documents."""
    docs, neg = ("n_first_stories", "n_negative_first") if rule.first_stories_only else ("n_docs", "n_negative")
    first = last_start - timedelta(seconds=rule.width * (n - 1))
    rows = conn.execute(sa.text(f"""
        SELECT window_start, {docs} AS n_docs, {neg} AS n_negative FROM sentiment_windows
        WHERE width_seconds = :w AND dimension = :d AND key = :k AND model_version = :mv
          AND window_start >= :first AND window_start <= :last"""),
        {"w": rule.width, "d": rule.scope.dimension, "k": key, "mv": model_version, "first": first,
         "last": last_start})
    found = {r.window_start: (int(r.n_docs), int(r.n_negative)) for r in rows}
    return [(t, *found.get(t, (0, 0)))
            for t in (first + timedelta(seconds=rule.width * i) for i in range(n))]
