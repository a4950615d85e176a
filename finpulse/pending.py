"""Documents waiting for a backfill: stored and scored by the stream but not folded into their windows.

The streaming sink (pipeline/sink.py) notes a document older than its watermark in ``windows_pending``
(per document and model version, scored ``ok`` only); a window recompute that covers it removes it
(an on-time re-send, or ``finpulse pipeline backfill`` over a range holding its event time), and so
does deleting the document. So the count is exact whatever was backfilled since, not a sum of
``pipeline_batches.n_late``. ``finpulse pipeline status`` and ``finpulse run`` print :func:`line`.
Shared here because ``finpulse run`` imports no component.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

_SQL = sa.text("SELECT count(DISTINCT document_id), min(published_at), max(published_at) FROM windows_pending")


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pending_backfill(conn) -> dict[str, Any]:
    """{"documents", "since", "until", "command"}: the documents waiting and the command that folds them in
    (``since``/``until``/``command`` None when none waits). The range is [earliest, latest + 1 s), whole seconds."""
    n, low, high = conn.execute(_SQL).one()
    if not n:
        return {"documents": 0, "since": None, "until": None, "command": None}
    since = _iso(low.replace(microsecond=0))
    until = _iso(high.replace(microsecond=0) + timedelta(seconds=1))
    return {"documents": int(n), "since": since, "until": until,
            "command": f"finpulse pipeline backfill --since {since} --until {until}"}


def line(pending: dict[str, Any]) -> str:
    """'3 document(s) wait for a backfill (...): finpulse pipeline backfill --since ... --until ...'."""
    if not pending.get("documents"):
        return "no document waits for a backfill"
    return (f"{pending['documents']:,} document(s) wait for a backfill (stored and scored, older than the watermark, "
            f"not in their windows; event times {pending['since']} .. {pending['until']}): {pending['command']}")
