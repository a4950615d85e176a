from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from ingest.deadletter import MemoryDeadLetterSink
from ingest.errors import ConfigError
from ingest.producer import MemorySink
from ingest.replay import Columns, Pacer, replay

CSV = """id,created_at,text,cashtags
3,2020-04-09 00:00:30+00:00,third by time $AAPL,$AAPL
1,2020-04-09 00:00:10+00:00,first by time &amp; more,
2,2020-04-09 00:00:20+00:00,second by time,$TSLA $MSFT
4,,no time at all,
5,2020-04-09 00:00:20+00:00,"same second as 2, later in the file",
6,2020-04-09 00:00:40+00:00,   ,
"""


@pytest.fixture
def csv_file(tmp_path):
    path = tmp_path / "tweets.csv"
    path.write_text(CSV)
    return path


def _run(path, *, dead_letters=None, **kw):
    sink = MemorySink()
    kw.setdefault("columns", Columns(id="id", ticker="cashtags"))
    stats = replay(path, sink=sink, source="tw", detect_lang=False, dead_letters=dead_letters or MemoryDeadLetterSink(),
                   **kw)
    return sink.documents, stats


def test_event_time_order_and_rejections(csv_file):
    docs, stats = _run(csv_file)
    assert [d.id for d in docs] == ["tw:1", "tw:2", "tw:5", "tw:3"]  # ties keep file order
    assert stats.rows == 6 and stats.published == 4
    assert stats.invalid == {"no_time": 1, "no_text": 1}  # row 4 has no time, row 6 a blank text
    assert docs[0].text == "first by time & more"
    assert docs[1].tickers == ["TSLA", "MSFT"]
    assert docs[3].tickers == ["AAPL"]
    assert docs[0].published_at == datetime(2020, 4, 9, 0, 0, 10, tzinfo=timezone.utc)
    assert docs[0].extra["published_at_raw"] == "2020-04-09 00:00:10+00:00"


def test_rejected_rows_become_dead_letters_with_the_raw_row(csv_file):
    dead = MemoryDeadLetterSink()
    docs, stats = _run(csv_file, dead_letters=dead)
    assert stats.dead_lettered == 2 and stats.dead_letter_failed == 0 and "dead-lettered 2" in stats.line()
    uri = csv_file.resolve().as_uri()
    row4 = "4,,no time at all,"  # the row as it is in the file (line 5: the header is line 1)
    row6 = "6,2020-04-09 00:00:40+00:00,   ,"
    got = [{k: v for k, v in env.items() if k != "at"} for env in dead.envelopes]
    assert got == [
        {"stage": "replay", "source": "tw", "reason": "no_time", "detail": "line 5: time: empty (column 'created_at')",
         "raw": row4, "raw_truncated": False, "raw_bytes": len(row4), "url": f"{uri}#line=5"},
        {"stage": "replay", "source": "tw", "reason": "no_text", "detail": "line 7: text: empty (column 'text')",
         "raw": row6, "raw_truncated": False, "raw_bytes": len(row6), "url": f"{uri}#line=7"},
    ]
    assert all(datetime.fromisoformat(env["at"]).tzinfo is not None for env in dead.envelopes)


def test_undeliverable_dead_letters_fail_the_run_after_the_documents(csv_file):
    from ingest.errors import PublishError

    dead = MemoryDeadLetterSink(fail_next=1_000)
    dead.sink.retries = 1
    sink = MemorySink()
    with pytest.raises(PublishError, match="2 dead letter"):
        replay(csv_file, sink=sink, source="tw", detect_lang=False, columns=Columns(id="id"), dead_letters=dead)
    assert len(sink.documents) == 4  # the good rows were still published


def test_missing_time_now_publishes_last(csv_file):
    docs, stats = _run(csv_file, missing_time="now")
    assert docs[-1].id == "tw:4" and docs[-1].extra["published_at_missing"] is True


def test_shift_to_now_keeps_gaps(csv_file):
    before = datetime.now(timezone.utc)
    docs, stats = _run(csv_file, shift_to_now=True)
    after = datetime.now(timezone.utc)
    assert before <= docs[-1].published_at <= after
    assert docs[-1].published_at - docs[0].published_at == timedelta(seconds=20)
    assert docs[0].extra["published_at_original"] == "2020-04-09T00:00:10+00:00"
    first, _ = _run(csv_file, shift_to_now=True, anchor="first")
    assert before <= first[0].published_at <= datetime.now(timezone.utc)


def test_ids_are_stable_without_an_id_column(csv_file):
    cols = Columns(ticker="cashtags")
    a, _ = _run(csv_file, columns=cols)
    b, _ = _run(csv_file, columns=cols, shift_to_now=True)
    assert [d.id for d in a] == [d.id for d in b]
    assert len({d.id for d in a}) == len(a)


def test_jsonl_with_dotted_paths_and_bad_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [
        json.dumps({"meta": {"ts": 1714564800}, "body": {"text": "hello $NVDA"}, "id": "x"}),
        "{not json",
        json.dumps({"meta": {"ts": "2024-05-01T11:00:00Z"}, "body": {"text": "earlier"}, "id": "y"}),
        json.dumps([1, 2]),
    ]
    path.write_text("\n".join(lines) + "\n")
    dead = MemoryDeadLetterSink()
    docs, stats = _run(path, columns=Columns(text="body.text", time="meta.ts", id="id"), dead_letters=dead)
    assert [d.id for d in docs] == ["tw:y", "tw:x"]
    assert docs[1].tickers == ["NVDA"]
    assert stats.invalid == {"malformed_row": 2}
    # the malformed lines verbatim, not re-encoded
    assert [(e["reason"], e["detail"], e["raw"]) for e in dead.envelopes] == [
        ("malformed_row", "line 2: malformed JSON (Expecting property name enclosed in double quotes)", "{not json"),
        ("malformed_row", "line 4: not an object", "[1, 2]"),
    ]


def test_time_column_guess_and_missing_text_column(csv_file, tmp_path):
    _, stats = _run(csv_file)
    assert stats.time_column == "created_at"
    with pytest.raises(ConfigError):
        _run(csv_file, columns=Columns(text="body"))


def test_pacer_schedules():
    t0 = datetime(2020, 1, 1, tzinfo=timezone.utc)
    slept = []
    clock = iter([100.0, 100.0, 100.0, 100.0]).__next__
    pacer = Pacer(rate=4, clock=clock, sleep=slept.append)
    assert [pacer.due(i, t0) for i in range(3)] == [0.0, 0.25, 0.5]
    pacer.wait(0, t0)
    pacer.wait(2, t0)
    assert slept == [0.5]
    speed = Pacer(speedup=10, first_event=t0)
    assert speed.due(7, t0 + timedelta(seconds=30)) == 3.0
    assert Pacer().wait(5, t0) == 0.0
    with pytest.raises(ConfigError):
        Pacer(rate=1, speedup=2)


def test_shared_surge_file_with_empty_times(shared_data):
    path = shared_data / "replay" / "surge_stock_tweets.csv"
    docs, stats = _run(path, columns=Columns(time="created_at_from_snowflake", ticker="ticker", url="url"))
    assert stats.rows == 500
    assert stats.invalid["no_time"] == stats.rows - stats.published - sum(
        v for k, v in stats.invalid.items() if k != "no_time"
    )
    assert stats.invalid["no_time"] >= 1
    assert all(a.published_at <= b.published_at for a, b in zip(docs, docs[1:]))


def test_worker_processes_give_the_same_stream(csv_file, tmp_path):
    # 5,000 rows: several 2,000-row chunks, so the in-order reassembly is exercised.
    big = tmp_path / "big.csv"
    lines = ["id,created_at,text"]
    for i in range(5_000):
        lines.append(f"{i},2020-04-09 00:{(i * 7919) % 60:02d}:{i % 60:02d}+00:00,tweet {i} about $T{i % 50:02d}X")
    lines.append("9999,2020-04-09 00:00:00+00:00,\"" + "x" * 1_000_001 + "\"")  # over the contract's text limit
    big.write_text("\n".join(lines) + "\n")
    one, stats_one = _run(big, columns=Columns(id="id"))
    two, stats_two = _run(big, columns=Columns(id="id"), workers=2)
    assert [d.id for d in two] == [d.id for d in one]

    def wire(doc):  # the published JSON, minus the per-run fetch time
        return {k: v for k, v in json.loads(doc.to_json()).items() if k != "fetched_at"}

    assert [wire(d) for d in two] == [wire(d) for d in one]
    assert stats_two.invalid == stats_one.invalid == {"contract:text": 1}
    assert stats_two.published == stats_one.published == 5_000

    dead = MemoryDeadLetterSink()  # a contract failure built in a worker process keeps its raw row
    _run(big, columns=Columns(id="id"), workers=2, dead_letters=dead)
    [env] = dead.envelopes
    assert env["reason"] == "contract" and env["detail"].startswith("line 5002: text: String should have at most")
    assert env["raw_bytes"] > 1_000_001 and env["raw_truncated"] is True
    assert env["raw"].startswith('9999,2020-04-09 00:00:00+00:00,"xxxx')
