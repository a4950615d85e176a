"""The dead-letter envelope and sinks (in memory; the Kafka path is in test_crawler_kafka / test_cli)."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

from ingest.deadletter import MAX_RAW_BYTES, DeadLetter, DeadLetterSink, MemoryDeadLetterSink
from ingest.producer import Sink


def _letter(raw, **kw) -> DeadLetter:
    return DeadLetter(stage="ingest", source="wire", reason="parse", detail="malformed feed", raw=raw, **kw)


def test_envelope_of_a_text_item():
    at = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    env = json.loads(_letter('{"id": 1, "body": "Café"}', url="http://127.0.0.1/x", at=at).to_json())
    assert env == {"stage": "ingest", "source": "wire", "reason": "parse", "detail": "malformed feed",
                   "raw": '{"id": 1, "body": "Café"}', "raw_truncated": False, "raw_bytes": 26,
                   "url": "http://127.0.0.1/x", "at": "2024-05-01T12:00:00+00:00"}


def test_default_time_is_aware_utc_and_no_raw_is_allowed():
    env = _letter(None).envelope()
    assert env["raw"] is None and env["raw_truncated"] is False and "raw_base64" not in env
    assert datetime.fromisoformat(env["at"]).utcoffset() == timedelta(0)


def test_a_huge_body_keeps_its_head_only():
    body = b"<rss>" + b"x" * (50 * 1024 * 1024)
    letter = _letter(body)
    wire = letter.to_json()
    env = json.loads(wire)
    assert env["raw_truncated"] is True and env["raw_bytes"] == len(body)
    assert env["raw"].encode() == body[:MAX_RAW_BYTES]
    assert len(wire) < MAX_RAW_BYTES + 1024
    assert "raw_base64" not in env


def test_truncation_inside_a_multibyte_character_is_still_valid_utf8():
    text = "a" + "€" * MAX_RAW_BYTES  # 3 bytes each: the cap falls inside a character
    env = _letter(text).envelope()
    assert env["raw_truncated"] is True and "raw_base64" not in env
    assert text.startswith(env["raw"]) and len(env["raw"].encode()) > MAX_RAW_BYTES - 3


def test_non_utf8_bytes_are_replaced_and_kept_exactly_in_base64():
    body = '<?xml version="1.0" encoding="iso-8859-1"?><rss>Caf\u00e9</rss>'.encode("latin-1") + b"\xff\xfe"
    env = _letter(body).envelope()
    assert env["raw"] == '<?xml version="1.0" encoding="iso-8859-1"?><rss>Caf\ufffd</rss>\ufffd\ufffd'
    assert base64.b64decode(env["raw_base64"]) == body
    assert env["raw_truncated"] is False and env["raw_bytes"] == len(body)


def test_non_utf8_and_truncated_base64_holds_the_head():
    body = b"\xff" * (MAX_RAW_BYTES + 10)
    env = _letter(body).envelope()
    assert env["raw_truncated"] is True
    assert base64.b64decode(env["raw_base64"]) == body[:MAX_RAW_BYTES]


def test_key_is_the_source_and_fingerprint_ignores_time():
    a, b = _letter("x"), _letter("x", at=datetime(2020, 1, 1, tzinfo=timezone.utc))
    assert a.id == "wire"
    assert a.fingerprint == b.fingerprint != _letter("y").fingerprint


def test_memory_sink_retries_like_the_document_sink():
    dead = MemoryDeadLetterSink(fail_next=2)
    result = dead.publish([_letter("a"), _letter("b")])
    assert len(result.acked) == 2 and result.failed == []
    assert [json.loads(l.to_json())["raw"] for l in dead.letters] == ["a", "b"]


def test_failures_are_returned_and_logged_never_raised(caplog):
    dead = MemoryDeadLetterSink(fail_next=100)
    dead.sink.retries = 1
    result = dead.publish([_letter("a")])
    assert result.acked == [] and len(result.failed) == 1
    assert "DEAD LETTER LOST" in caplog.text

    class Broken(Sink):
        def publish(self, docs):
            raise RuntimeError("producer closed")

    result = DeadLetterSink(sink=Broken()).publish([_letter("a"), _letter("b")])
    assert len(result.failed) == 2 and str(result.failed[0][1]) == "producer closed"
