"""Replay never loses or changes a row silently: every row read is published, dead-lettered or skipped."""

from __future__ import annotations

import base64
import gzip
import json

import pytest

from ingest.deadletter import MemoryDeadLetterSink
from ingest.errors import ConfigError
from ingest.producer import MemorySink
from ingest.replay import Columns, ReplayStats, check_file, replay

HEADER = b"id,created_at,text\n"


def _row(i: int, text: str = "") -> bytes:
    return f"{i},2020-04-09 00:00:{i:02d}+00:00,{text or f'tweet number {i} about $ACME'}\n".encode()


def _run(path, **kw):
    sink, dead = MemorySink(), MemoryDeadLetterSink()
    kw.setdefault("columns", Columns(id="id"))
    stats = replay(path, sink=sink, source="tw", detect_lang=False, dead_letters=dead, **kw)
    assert stats.balanced, stats.line()
    return sink.documents, dead.envelopes, stats


def test_unclosed_quote_swallows_no_following_rows(tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes(HEADER + _row(1) + b'2,2020-04-09 00:00:02+00:00,"an unclosed quote\n' + _row(3) + _row(4)
                     + _row(5))
    docs, dead, stats = _run(path)
    assert sorted(d.id for d in docs) == ["tw:1", "tw:3", "tw:4", "tw:5"]
    [letter] = dead
    assert letter["reason"] == "unclosed_quote" and letter["detail"].startswith("line 3: unclosed quote")
    assert letter["raw"] == '2,2020-04-09 00:00:02+00:00,"an unclosed quote' and letter["url"].endswith("#line=3")
    assert stats.rows == 5 and stats.published == 4 and stats.dead_lettered == 1


def test_unclosed_quote_closed_by_a_later_row_is_caught_too(tmp_path):
    # The stray quote is closed by the quote of row 4: the reader would make rows 2-4 one field.
    path = tmp_path / "q.csv"
    path.write_bytes(HEADER + _row(1) + b'2,2020-04-09 00:00:02+00:00,"stray\n' + _row(3)
                     + b'4,2020-04-09 00:00:04+00:00,"quoted, properly"\n' + _row(5))
    docs, dead, stats = _run(path)
    assert sorted(d.id for d in docs) == ["tw:1", "tw:3", "tw:4", "tw:5"]
    assert [(e["reason"], e["url"].rsplit("#", 1)[1]) for e in dead] == [("unclosed_quote", "line=3")]
    assert next(d for d in docs if d.id == "tw:4").text == "quoted, properly"


@pytest.mark.parametrize("closing", [
    b'4,2020-04-09 00:00:04+00:00,text ",surplus\n',  # the stray field closes here: 4 fields, not 3
    b'4,2020-04-09 00:00:04+00:00,text "\n',  # closes at the end of the line: 3 fields by coincidence
])
def test_a_stray_quote_closed_later_with_a_valid_ending_is_caught(tmp_path, closing):
    path = tmp_path / "q.csv"
    path.write_bytes(HEADER + _row(1) + b'2,2020-04-09 00:00:02+00:00,"stray\n' + _row(3) + closing + _row(5))
    docs, dead, stats = _run(path)
    assert [e["reason"] for e in dead][0] == "unclosed_quote" and dead[0]["url"].endswith("#line=3")
    assert {"tw:1", "tw:3", "tw:5"} <= {d.id for d in docs}  # the swallowed rows are read on their own
    assert stats.rows == stats.published + len(dead)


def test_a_quoted_multi_line_field_is_still_one_row(tmp_path):
    path = tmp_path / "m.csv"
    # A continuation line that is no row (wrong field count, or no time where the time goes) is text.
    path.write_bytes(HEADER + b'1,2020-04-09 00:00:01+00:00,"two\nlines, with, commas\nand $AAPL, $TSLA"\n' + _row(2))
    docs, dead, _ = _run(path)
    assert [d.text for d in docs] == ["two lines, with, commas and $AAPL, $TSLA", "tweet number 2 about $ACME"]
    assert dead == []


def test_invalid_utf8_is_dead_lettered_by_default_with_the_exact_bytes(tmp_path):
    bad = b"3,2020-04-09 00:00:03+00:00,Caf\xe9 ouvert \xff today about stocks\n"
    path = tmp_path / "enc.csv"
    path.write_bytes(HEADER + _row(1) + _row(2) + bad)
    docs, dead, stats = _run(path)
    assert [d.id for d in docs] == ["tw:1", "tw:2"]
    assert not any("\ufffd" in d.text for d in docs)
    [letter] = dead
    assert letter["reason"] == "bad_encoding" and letter["detail"].startswith("line 4: invalid UTF-8")
    assert base64.b64decode(letter["raw_base64"]) == bad.rstrip(b"\n")  # the bytes as they were
    assert stats.line().startswith("rows read 3 = published 2 + dead-lettered 1 (bad_encoding=1)")


def test_invalid_utf8_repair_publishes_flagged(tmp_path):
    path = tmp_path / "enc.csv"
    path.write_bytes(HEADER + _row(1) + b"2,2020-04-09 00:00:02+00:00,Caf\xe9 ouvert today\n")
    docs, dead, stats = _run(path, encoding_errors="repair")
    assert dead == [] and stats.repaired == 1
    by_id = {d.id: d for d in docs}
    assert by_id["tw:2"].text == "Caf\ufffd ouvert today" and by_id["tw:2"].extra["encoding_repaired"] is True
    assert "encoding_repaired" not in by_id["tw:1"].extra


@pytest.mark.parametrize("line, reason", [(b"2,2020-04-09 00:00:02+00:00,text,surplus\n", "extra_fields"),
                                          (b"2,2020-04-09 00:00:02+00:00\n", "missing_fields")])
def test_rows_with_the_wrong_number_of_fields_are_dead_lettered(tmp_path, line, reason):
    path = tmp_path / "f.csv"
    path.write_bytes(HEADER + _row(1) + line + _row(3))
    docs, dead, _ = _run(path)
    assert [d.id for d in docs] == ["tw:1", "tw:3"]
    assert [(e["reason"], e["detail"].split(":")[0], e["raw"]) for e in dead] == [
        (reason, "line 3", line.decode().rstrip("\n"))]


def every_kind_of_bad_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_bytes(
        HEADER
        + _row(1)
        + b'2,2020-04-09 00:00:02+00:00,"never closed\n'       # unclosed_quote (line 3)
        + b"3,2020-04-09 00:00:03+00:00,bad \xff byte\n"         # bad_encoding (line 4)
        + b"4,2020-04-09 00:00:04+00:00,one,too,many\n"          # extra_fields (line 5)
        + b"5,2020-04-09 00:00:05+00:00\n"                       # missing_fields (line 6)
        + b"6,,no time here\n"                                   # no_time (line 7)
        + b"7,yesterday-ish,unparseable time\n"                  # bad_time (line 8)
        + b"8,2020-04-09 00:00:08+00:00,   \n"                   # no_text (line 9)
        + b"\n"                                                  # a blank line is not a row
        + b"9,2020-04-09 00:00:09+00:00,\"" + b"x" * 1_000_001 + b"\"\n"  # contract: text too long (line 11)
        + _row(10)
    )
    return path


def test_the_account_of_a_file_with_every_kind_of_bad_row(tmp_path):
    docs, dead, stats = _run(every_kind_of_bad_row(tmp_path))
    assert [d.id for d in docs] == ["tw:1", "tw:10"]
    assert sorted((e["reason"], e["url"].rsplit("=", 1)[1]) for e in dead) == [
        ("bad_encoding", "4"), ("bad_time", "8"), ("contract", "11"), ("extra_fields", "5"),
        ("missing_fields", "6"), ("no_text", "9"), ("no_time", "7"), ("unclosed_quote", "3")]
    assert stats.line().split(";")[0] == (
        "rows read 10 = published 2 + dead-lettered 8 (bad_encoding=1, bad_time=1, contract:text=1, "
        "extra_fields=1, missing_fields=1, no_text=1, no_time=1, unclosed_quote=1) + skipped 0 (none)")


def test_gzipped_csv_and_jsonl_replay_like_the_plain_files(tmp_path):
    plain = HEADER + _row(2) + _row(1)
    (tmp_path / "t.csv.gz").write_bytes(gzip.compress(plain))
    (tmp_path / "t.csv").write_bytes(plain)
    lines = [json.dumps({"id": i, "created_at": f"2020-04-09T00:00:0{i}Z", "text": f"row {i} text"}) for i in (2, 1)]
    (tmp_path / "t.jsonl.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    gz, _, _ = _run(tmp_path / "t.csv.gz")
    assert [d.id for d in gz] == [d.id for d in _run(tmp_path / "t.csv")[0]] == ["tw:1", "tw:2"]
    js, _, _ = _run(tmp_path / "t.jsonl.gz")
    assert [d.text for d in js] == ["row 1 text", "row 2 text"]


@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", b"", "the file is empty"),
    ("blank.csv", b"\n \n", "the file is empty"),
    ("header.csv", HEADER, "a header but no data rows"),
    ("wrong.csv", b"id,created_at,body\n1,2020-01-01,hello\n", "text column 'text' is not in the header"),
    ("binary.csv", b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)), "binary data"),
    ("latin.csv", b"\xff\xfei\x00d\x00\n", "binary data"),
    ("empty.jsonl", b"", "the file is empty"),
    ("nojson.jsonl", b"not json\n", "no line is a JSON object"),
    ("wrong.jsonl", b'{"body": "x", "created_at": "2020-01-01"}\n', "text field 'text' is in none"),
])
def test_unusable_files_are_refused_in_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as err:
        check_file(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    sink = MemorySink()
    with pytest.raises(ConfigError):
        replay(path, sink=sink, source="x", dead_letters=MemoryDeadLetterSink())
    assert sink.documents == []


class _Crash(Exception):
    pass


class _CrashingSink(MemorySink):
    """Acks like MemorySink, then raises ``error`` at send number ``at``: ``_Crash`` acts like kill -9
    (nothing after it runs), ``KeyboardInterrupt`` like Ctrl-C."""

    def __init__(self, at: int, error: type[BaseException] = _Crash):
        super().__init__()
        self.at = at
        self.error = error

    def send(self, doc, payload=None):
        if len(self.documents) + 1 == self.at:
            raise self.error
        super().send(doc, payload)


def _big_file(tmp_path):
    """3,000 rows with ids 0..2999, then one row without a time."""
    path = tmp_path / "big.csv"
    path.write_bytes(HEADER + b"".join(_row(i % 60, f"tweet {i}").replace(f"{i % 60},".encode(), f"{i},".encode(), 1)
                                       for i in range(3_000)) + b"5000,,no time\n")
    return path


def test_resume_continues_after_the_acknowledged_position(tmp_path):
    path = _big_file(tmp_path)
    state = tmp_path / "state"
    first = _CrashingSink(at=1_630)
    dead = MemoryDeadLetterSink()
    with pytest.raises(_Crash):
        replay(path, sink=first, source="tw", columns=Columns(id="id"), detect_lang=False, dead_letters=dead,
               state_dir=state, checkpoint_every=500, checkpoint_seconds=3600)
    assert len(dead.envelopes) == 1  # the row without a time, dead-lettered before publishing started
    saved = json.loads(next(state.glob("replay-*.json")).read_text())
    assert saved["done"] == 1_500  # the last checkpoint: everything before it acknowledged

    second, dead2 = MemorySink(), MemoryDeadLetterSink()
    stats = replay(path, sink=second, source="tw", columns=Columns(id="id"), detect_lang=False, dead_letters=dead2,
                   state_dir=state, resume=True, checkpoint_every=500)
    ids = [d.id for d in first.documents] + [d.id for d in second.documents]
    assert len(set(ids)) == 3_000  # nothing lost
    assert len(ids) - 3_000 == 129  # repeated: the sends after the last checkpoint (1,629 - 1,500)
    assert dead2.envelopes == []  # not dead-lettered twice
    assert stats.skipped == {"resume_already_delivered": 1_500, "resume_already_dead_lettered": 1}
    assert stats.balanced and stats.published == 1_500
    # The resumed run saved the end of the file (its own sends counted from where it started) ...
    saved = json.loads(next(state.glob("replay-*.json")).read_text())
    assert (saved["done"], saved["events"], saved["complete"]) == (3_000, 3_000, True)
    # ... so resuming once more sends nothing.
    third = MemorySink()
    again = replay(path, sink=third, source="tw", columns=Columns(id="id"), detect_lang=False,
                   dead_letters=MemoryDeadLetterSink(), state_dir=state, resume=True)
    assert third.documents == [] and again.skipped["resume_already_delivered"] == 3_000

    # Without --resume a rerun starts over; a changed file is never resumed at a stale position.
    path.write_bytes(path.read_bytes() + _row(59, "one more row"))
    with pytest.raises(ConfigError, match="changed since the saved progress"):
        replay(path, sink=MemorySink(), source="tw", columns=Columns(id="id"), detect_lang=False,
               dead_letters=MemoryDeadLetterSink(), state_dir=state, resume=True)


def test_an_interrupted_replay_leaves_its_account_so_far_in_the_stats_given(tmp_path):
    path = _big_file(tmp_path)
    stats = ReplayStats()
    with pytest.raises(KeyboardInterrupt):
        replay(path, sink=_CrashingSink(at=1_630, error=KeyboardInterrupt), source="tw", columns=Columns(id="id"), detect_lang=False,
               dead_letters=MemoryDeadLetterSink(), state_dir=tmp_path / "state", checkpoint_every=500,
               checkpoint_seconds=3600, stats=stats)
    # what the CLI prints after Ctrl-C: every row read, the acks harvested before it (at the 1,500th send)
    assert (stats.rows, stats.published, stats.dead_lettered, stats.invalid) == (3_001, 1_500, 1, {"no_time": 1})
    assert not stats.balanced and stats.seconds > 0


def test_real_multi_line_tweets_are_not_taken_for_stray_quotes(shared_data):
    # 1,976 of these 5,000 tweets span several lines, some with commas and figures ("5, 10, & 20")
    # that split into the header's field count: none of them may be rejected.
    docs, dead, stats = _run(shared_data / "replay" / "stock_market_tweets_2020.csv",
                             columns=Columns(id="id", ticker="cashtags"))
    assert (stats.rows, stats.published, dead) == (5_000, 5_000, [])


def test_an_undelivered_dead_letter_holds_the_saved_position_back(tmp_path):
    from ingest.errors import PublishError

    path = tmp_path / "c.csv"
    rows = [_row(i) for i in range(1, 21)]
    rows[9] = b'10,2020-04-09 00:00:10+00:00,"' + b"x" * 1_000_001 + b'"\n'  # a contract failure, 10th by time
    path.write_bytes(HEADER + b"".join(rows))
    dead = MemoryDeadLetterSink(fail_next=1_000)
    dead.sink.retries = 0
    with pytest.raises(PublishError, match="1 dead letter"):
        replay(path, sink=MemorySink(), source="tw", columns=Columns(id="id"), detect_lang=False, dead_letters=dead,
               state_dir=tmp_path / "state", checkpoint_every=2, checkpoint_seconds=3600)
    saved = json.loads(next((tmp_path / "state").glob("replay-*.json")).read_text())
    assert saved["done"] == 9  # not past the row whose dead letter was lost: --resume sends it again
