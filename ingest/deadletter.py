"""Dead letters: what ingest could not turn into a document, kept with the reason and the raw payload.

A dead letter is published to ``settings.topic_dead_letters``, key = source name, value = a
JSON envelope::

    {"stage": "ingest" | "replay", "source": ..., "reason": "contract", "detail": "text: ...",
     "raw": "<the raw item/row/body as text>", "raw_base64": "...",   # only if not valid UTF-8
     "raw_truncated": false, "raw_bytes": 1234, "url": "http://..." | null,
     "at": "2024-05-01T12:00:00.123456+00:00"}

``raw`` keeps the head of the payload (``max_raw_bytes``, 512 KiB by default) so one 50 MB
response cannot blow up the topic; ``raw_bytes`` is the original size. Bytes that are not valid
UTF-8 are decoded with ``errors="replace"`` for reading and also kept exactly in ``raw_base64``.

Delivery: :class:`DeadLetterSink` publishes through a documents :class:`~ingest.producer.Sink`,
so the guarantee (and where repeats come from) is the one stated there; what still fails is
logged at ERROR and returned to the caller to count, and :meth:`DeadLetterSink.publish` never
raises, so one undeliverable dead letter never ends a crawler.
"""

from __future__ import annotations

import base64
import codecs
import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from finpulse.settings import Settings
from ingest.normalize import utcnow
from ingest.producer import KafkaSink, MemorySink, PublishResult, Sink

log = logging.getLogger(__name__)

# The broker's default message.max.bytes is ~1 MB. The worst envelope (invalid bytes: replacement
# characters plus base64) is ~2.4x the kept head before compression, so 512 KiB stays deliverable
# with gzip for anything but random binary, which is then reported as an undeliverable dead letter.
MAX_RAW_BYTES = 512 * 1024


def raw_text(raw: Any, *, as_json: bool = False) -> str | bytes | None:
    """A raw item as text for a dead letter: bytes and (unless ``as_json``) strings as they are, else JSON."""
    if raw is None or isinstance(raw, (bytes, bytearray)) or (isinstance(raw, str) and not as_json):
        return raw
    return json.dumps(raw, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class DeadLetter:
    """One rejected item. Quacks like a Document for a :class:`Sink`: ``id`` is the key, ``to_json()`` the value."""

    stage: Literal["ingest", "replay"]
    source: str
    reason: str
    detail: str
    raw: str | bytes | None = None
    url: str | None = None
    at: datetime = field(default_factory=utcnow)
    max_raw_bytes: int = MAX_RAW_BYTES

    @property
    def id(self) -> str:
        # The Kafka key: all dead letters of a source land in one partition, in order.
        return self.source

    @functools.cached_property
    def fingerprint(self) -> str:
        """Same source, reason and raw payload -> same fingerprint (to avoid re-sending a repeat)."""
        data = self.raw.encode("utf-8", "replace") if isinstance(self.raw, str) else bytes(self.raw or b"")
        digest = hashlib.sha256(data)
        digest.update(f"\x1f{self.stage}\x1f{self.source}\x1f{self.reason}".encode("utf-8", "replace"))
        return digest.hexdigest()

    def envelope(self) -> dict[str, Any]:
        envelope: dict[str, Any] = {"stage": self.stage, "source": self.source, "reason": self.reason,
                                    "detail": self.detail}
        if self.raw is None:
            envelope.update(raw=None, raw_truncated=False, raw_bytes=0)
        else:
            data = self.raw.encode("utf-8", "surrogatepass") if isinstance(self.raw, str) else bytes(self.raw)
            head = data[: self.max_raw_bytes]
            truncated = len(data) > len(head)
            try:
                # final=False when truncated: a multi-byte character cut by the cap is dropped
                # rather than turning valid UTF-8 into "invalid".
                text = codecs.getincrementaldecoder("utf-8")("strict").decode(head, final=not truncated)
            except UnicodeDecodeError:
                text = head.decode("utf-8", errors="replace")
                envelope["raw_base64"] = base64.b64encode(head).decode("ascii")
            envelope.update(raw=text, raw_truncated=truncated, raw_bytes=len(data))
        envelope["url"] = self.url
        envelope["at"] = self.at.isoformat()
        return envelope

    def to_json(self) -> bytes:
        return json.dumps(self.envelope(), ensure_ascii=False).encode("utf-8")


class DeadLetterSink:
    """Publishes :class:`DeadLetter` s through a documents :class:`Sink` (its retry logic included).

    :meth:`publish` blocks until each letter is acked or failed for good
    after the Sink's retries; it never raises -- failures are logged at ERROR and returned.
    """

    def __init__(self, *, sink: Sink):
        self.sink = sink

    @classmethod
    def kafka(cls, *, settings: Settings, topic: str | None = None, partitions: int | None = None,
              **producer_config) -> DeadLetterSink:
        """Into ``topic`` (default ``settings.topic_dead_letters``), created if missing."""
        producer_config.setdefault("client_id", "finpulse-dead-letters")
        # Room for an envelope of a full MAX_RAW_BYTES head; the broker has the final word.
        producer_config.setdefault("max_request_size", 4 * 1024 * 1024)
        sink = KafkaSink(settings=settings, topic=topic or settings.topic_dead_letters, partitions=partitions,
                         **producer_config)
        return cls(sink=sink)

    def publish(self, letters: Sequence[DeadLetter]) -> PublishResult:
        """Deliver ``letters``; return which were acked and which failed (never raises)."""
        if not letters:
            return PublishResult()
        try:
            result = self.sink.publish(letters)
        except Exception as exc:  # noqa: BLE001 - the producer itself broke; report, never crash the caller
            result = PublishResult(failed=[(letter, exc) for letter in letters])
        for letter, exc in result.failed:
            log.error("DEAD LETTER LOST: source=%s stage=%s reason=%s not delivered (%s); detail: %s",
                      letter.source, letter.stage, letter.reason, exc, letter.detail[:300])
        return result

    def close(self, timeout: float | None = None) -> None:
        self.sink.close(timeout) if timeout is not None else self.sink.close()

    def __enter__(self) -> DeadLetterSink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MemoryDeadLetterSink(DeadLetterSink):
    """Keeps dead letters in memory (tests); ``fail_next`` makes that many sends fail, as in MemorySink."""

    def __init__(self, *, fail_next: int = 0):
        super().__init__(sink=MemorySink(fail_next=fail_next))

    @property
    def letters(self) -> list[DeadLetter]:
        return self.sink.documents  # type: ignore[attr-defined]

    @property
    def envelopes(self) -> list[dict[str, Any]]:
        """The wire form of every delivered letter, parsed back."""
        return [json.loads(letter.to_json()) for letter in self.letters]
