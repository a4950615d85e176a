"""Trend windows: figures equal an independent pandas computation over the rows fed; backfill folds late rows."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from pipeline import windows
from pipeline.sink import PostgresSink
from tests.pipeline.test_sink import T0, doc_row, engine, write  # noqa: F401 - engine is a fixture

WIDTHS = "1m,1h,1d"
FIGURES = ["n_docs", "n_negative", "n_neutral", "n_positive", "n_first_stories", "n_negative_first"]
SUMS = ["sum_score", "sum_p_negative", "mean_score", "mean_p_negative"]


def expected_windows(docs: dict[str, dict], widths: list[int]) -> pd.DataFrame:
    """The windows computed in pandas from the final state of each document (not the sink's SQL)."""
    records = []
    for row in docs.values():
        base_p = (row["p_negative"], row["p_positive"])
        base_sentiment = row["sentiment"]
        points = [("all", "*", base_p, base_sentiment), ("source", row["source"], base_p, base_sentiment),
                  ("topic", row["topic"], base_p, base_sentiment)]
        for entity in row["entities"]:
            if entity["p_negative"] is not None:
                points.append(("ticker", entity["entity"], (entity["p_negative"], entity["p_positive"]),
                               entity["sentiment"]))
            else:
                points.append(("ticker", entity["entity"], base_p, base_sentiment))
        epoch = int(row["published_at"].timestamp())
        for width in widths:
            start = epoch - epoch % width
            for dimension, key, (p_neg, p_pos), sentiment in points:
                first = row["novelty"] is not False
                records.append({
                    "dimension": dimension, "key": key, "width_seconds": width,
                    "window_start": pd.Timestamp(start, unit="s", tz="UTC"),
                    "n_docs": 1, "n_negative": int(sentiment == "negative"), "n_neutral": int(sentiment == "neutral"),
                    "n_positive": int(sentiment == "positive"), "n_first_stories": int(first),
                    "n_negative_first": int(first and sentiment == "negative"),
                    # float32 as stored (real), then summed in double precision
                    "sum_score": float(np.float32(p_pos)) - float(np.float32(p_neg)),
                    "sum_p_negative": float(np.float32(p_neg)),
                })
    frame = pd.DataFrame(records)
    out = frame.groupby(["dimension", "key", "width_seconds", "window_start"], as_index=False).sum()
    out["mean_score"] = out.sum_score / out.n_docs
    out["mean_p_negative"] = out.sum_p_negative / out.n_docs
    return out


def stored_windows(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql(sa.text("SELECT * FROM sentiment_windows"), conn)


def assert_same_windows(engine, final_docs: dict[str, dict], widths=(60, 3600, 86400)) -> None:
    expected = expected_windows(final_docs, list(widths))
    got = stored_windows(engine)
    key = ["dimension", "key", "width_seconds", "window_start"]
    merged = expected.merge(got, on=key, how="outer", suffixes=("_exp", "_got"), indicator=True)
    only = merged[merged["_merge"] != "both"]
    assert only.empty, f"windows only on one side:\n{only[key + ['_merge']].head(20)}"
    for column in FIGURES:
        assert (merged[f"{column}_exp"] == merged[f"{column}_got"]).all(), column
    for column in SUMS:
        assert np.allclose(merged[f"{column}_exp"], merged[f"{column}_got"], rtol=1e-9, atol=1e-9), column
    assert (got.window_end - got.window_start).dt.total_seconds().astype(int).equals(got.width_seconds)
    assert (got.model_version == "test-model@1").all()


def random_doc(rng: random.Random, doc_id: str, offset: int) -> dict:
    p = [rng.random() for _ in range(3)]
    total = sum(p)
    p = tuple(x / total for x in p)
    tickers = rng.sample(["TSLA", "AAPL", "NVDA", "BABA"], rng.randint(0, 2))
    entity_p = {t: (0.8, 0.1, 0.1) for t in tickers if rng.random() < 0.3}  # some entity-level sentiment
    when = T0 + timedelta(seconds=rng.randint(0, 2 * 86400))  # spans minutes, hours and two days
    return doc_row(doc_id, when, offset=offset, p=p, source=rng.choice(["rss-a", "rss-b", "api-c"]),
                   topic=rng.choice(["Earnings", "M&A", "Macro"]), novelty=rng.choice([True, False, None]),
                   tickers=tickers, entity_p=entity_p)


def test_window_figures_equal_an_independent_computation(engine):
    """Three batches of random documents, some re-sent with a new time, tickers and sentiment."""
    sink = PostgresSink(engine, query_name="q", widths=WIDTHS, lateness="3650d")
    rng = random.Random(7)
    final: dict[str, dict] = {}
    offset = 0
    for batch_id in range(3):
        rows = []
        for i in range(120):
            offset += 1
            if batch_id and i < 25:  # a re-send of an earlier document, changed
                doc_id = f"d{rng.randrange(batch_id * 120)}"
            else:
                doc_id = f"d{batch_id * 120 + i}"
            rows.append(random_doc(rng, doc_id, offset))
        report = write(sink, batch_id, rows)
        assert report.n_late == 0
        for row in rows:  # in-batch duplicates: the highest offset wins, as in the sink
            final[row["id"]] = row
    assert_same_windows(engine, final)
    # Break one stored window and backfill over everything: recomputed back to the same figures.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE sentiment_windows SET n_docs = n_docs + 5, sum_score = 99"))
        conn.execute(sa.text("INSERT INTO sentiment_windows (dimension, key, window_start, window_end, model_version, "
                             "n_docs) VALUES ('source', 'gone', :s, :e, 'test-model@1', 3)"),
                     {"s": T0, "e": T0 + timedelta(minutes=1)})
    written = windows.backfill(engine, since=T0 - timedelta(days=1), until=T0 + timedelta(days=3),
                               widths=windows.parse_widths(WIDTHS))
    assert written > 0
    assert_same_windows(engine, final)


def test_late_rows_are_left_to_backfill_which_folds_them(engine):
    sink = PostgresSink(engine, query_name="q", widths=WIDTHS, lateness="1d")
    on_time = doc_row("on-time", T0, offset=1, tickers=["TSLA"])
    write(sink, 0, [on_time])
    late = doc_row("late", T0 - timedelta(days=3, minutes=7), offset=2, tickers=["TSLA"], p=(0.9, 0.05, 0.05))
    later = doc_row("late-2", T0 - timedelta(days=3) + timedelta(hours=5), offset=3, tickers=["TSLA"])
    report = write(sink, 1, [late, later])
    assert report.n_late == 2
    assert_same_windows(engine, {"on-time": on_time})  # stored, scored, not folded
    # A one-hour range: the day window overlapping it is rebuilt from hours that must all be current,
    # so backfill widens the range to the whole day and folds "late-2" (five hours away) as well.
    since = T0 - timedelta(days=3, hours=1)
    written = windows.backfill(engine, since=since, until=since + timedelta(hours=1),
                               widths=windows.parse_widths(WIDTHS))
    assert written == 4 * (2 + 2 + 1)  # all / source / topic / ticker: two minutes, two hours, one day
    assert_same_windows(engine, {"on-time": on_time, "late": late, "late-2": later})


def test_parse_widths_and_durations():
    assert windows.parse_widths("1h, 1m,1d,1m") == [timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)]
    assert windows.parse_duration("90s") == timedelta(seconds=90)
    assert windows.parse_duration(timedelta(hours=2)) == timedelta(hours=2)
    for bad in ("", "1x", "1.5s", "0m", "-1m", "1m,abc"):  # 1.5s: widths are whole seconds
        with pytest.raises(ValueError):
            windows.parse_widths(bad)
    assert windows.plan(windows.parse_widths("1m,1h,1d")) == [(60, None), (3600, 60), (86400, 3600)]
    assert windows.plan(windows.parse_widths("7m,1h")) == [(420, None), (3600, None)]  # 7m does not tile an hour


def test_backfill_refuses_naive_or_empty_ranges(engine):
    widths = windows.parse_widths(WIDTHS)
    with pytest.raises(ValueError, match="timezone-aware"):
        windows.backfill(engine, since=datetime(2024, 1, 1), until=datetime(2024, 1, 2), widths=widths)
    with pytest.raises(ValueError, match="empty"):
        windows.backfill(engine, since=T0, until=T0, widths=widths)
    assert windows.backfill(engine, since=T0, until=T0 + timedelta(hours=1), widths=widths) == 0
    assert T0.tzinfo is timezone.utc
