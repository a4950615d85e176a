"""Publishing documents: the :class:`Sink` interface, Kafka and in-memory implementations.

Delivery guarantee: **at least once**. :meth:`Sink.publish` returns only after every
document was either acknowledged by the broker (acks=all) or failed for good after retries;
failures are returned, never dropped. Callers remember a document as published only once it
is in ``acked``. Consumers must therefore be idempotent (the key is the document id).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from finpulse.contract import Document
from finpulse.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class PublishResult:
    acked: list[Document] = field(default_factory=list)
    failed: list[tuple[Document, BaseException]] = field(default_factory=list)


class Sink:
    """Where documents go. Subclasses implement :meth:`send` and :meth:`drain`."""

    retries: int = 3
    retry_backoff: float = 0.5

    def send(self, doc: Document, payload: bytes | None = None) -> None:
        """Queue one document (non-blocking unless the buffer is full)."""
        raise NotImplementedError

    def drain(self, timeout: float | None = None) -> PublishResult:
        """Wait until everything sent so far is acked or failed; return and reset the outcomes."""
        raise NotImplementedError

    def publish(self, docs: Sequence[Document]) -> PublishResult:
        """Send, wait, and resend failures (backoff with jitter) up to ``retries`` times."""
        total = PublishResult()
        pending = list(docs)
        for attempt in range(self.retries + 1):
            for doc in pending:
                self.send(doc)
            result = self.drain()
            total.acked.extend(result.acked)
            if not result.failed:
                return total
            pending = [doc for doc, _ in result.failed]
            if attempt == self.retries:
                total.failed.extend(result.failed)
                break
            delay = random.uniform(0, self.retry_backoff * 2**attempt)
            log.warning("%d document(s) not acked (%s); resending in %.2fs", len(pending), result.failed[0][1], delay)
            time.sleep(delay)
        return total

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MemorySink(Sink):
    """Keeps published documents in a list; ``fail_next`` makes that many sends fail (for tests)."""

    def __init__(self, *, fail_next: int = 0):
        self.documents: list[Document] = []
        self.fail_next = fail_next
        self.retry_backoff = 0.0
        self._result = PublishResult()

    def send(self, doc: Document, payload: bytes | None = None) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            self._result.failed.append((doc, RuntimeError("injected delivery failure")))
        else:
            self.documents.append(doc)
            self._result.acked.append(doc)

    def drain(self, timeout: float | None = None) -> PublishResult:
        result, self._result = self._result, PublishResult()
        return result


def _compression() -> str:
    # lz4 is faster for the same ratio on JSON but needs the lz4 package; gzip is in the stdlib.
    try:
        import lz4.frame  # noqa: F401

        return "lz4"
    except ImportError:
        return "gzip"


class KafkaSink(Sink):
    """kafka-python producer, key = document id (a story always lands in the same partition).

    acks=all with the idempotent producer (kafka-python 3.x): the client retries internally
    without reordering or duplicating within a partition; what still fails after
    ``delivery_timeout_ms`` surfaces through the future's errback and is resent by
    :meth:`Sink.publish`.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        topic: str | None = None,
        ensure_topic: bool = True,
        partitions: int | None = None,
        linger_ms: int = 20,
        batch_size: int = 256 * 1024,
        compression_type: str | None = None,
        delivery_timeout_ms: int = 120_000,
        retries: int = 3,
        client_id: str = "finpulse-ingest",
        **producer_config,
    ):
        from kafka import KafkaProducer

        self.topic = topic or settings.topic_documents
        self.retries = retries
        if ensure_topic:
            from finpulse.kafka import ensure_topics

            ensure_topics([self.topic], settings=settings, partitions=partitions)
        config = dict(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            retries=2**31 - 1,  # bounded by delivery_timeout_ms instead
            delivery_timeout_ms=delivery_timeout_ms,
            request_timeout_ms=min(30_000, delivery_timeout_ms - linger_ms - 1),
            linger_ms=linger_ms,
            batch_size=batch_size,
            compression_type=compression_type or _compression(),
            max_request_size=2 * 1024 * 1024,
            metrics_enabled=False,  # client-side sensors cost time per message and nobody reads them here
        )
        config.update(producer_config)
        self.compression_type = config["compression_type"]
        self._producer = KafkaProducer(**config)
        self._lock = threading.Lock()
        self._result = PublishResult()
        self._in_flight = 0
        self._done = threading.Condition(self._lock)

    def _on_ack(self, doc: Document):
        def callback(_metadata) -> None:
            with self._lock:
                self._result.acked.append(doc)
                self._in_flight -= 1
                self._done.notify_all()

        return callback

    def _on_error(self, doc: Document):
        def errback(exc: BaseException) -> None:
            log.warning("delivery of %s failed: %s", doc.id, exc)
            with self._lock:
                self._result.failed.append((doc, exc))
                self._in_flight -= 1
                self._done.notify_all()

        return errback

    def send(self, doc: Document, payload: bytes | None = None) -> None:
        with self._lock:
            self._in_flight += 1
        try:
            future = self._producer.send(
                self.topic, key=doc.id.encode("utf-8"), value=payload if payload is not None else doc.to_json()
            )
        except Exception as exc:  # buffer full past max_block_ms, message too large, closed...
            with self._lock:
                self._in_flight -= 1
                self._result.failed.append((doc, exc))
            return
        future.add_callback(self._on_ack(doc))
        future.add_errback(self._on_error(doc))

    def drain(self, timeout: float | None = None) -> PublishResult:
        self._producer.flush(timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            # flush() returns once requests completed; callbacks run on the I/O thread and may
            # lag a moment behind, so wait for the in-flight count to reach zero.
            while self._in_flight > 0:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._done.wait(timeout=remaining if remaining is not None else 1.0)
            result, self._result = self._result, PublishResult()
        return result

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout=timeout)

    def close(self, timeout: float | None = 30) -> None:
        try:
            self._producer.flush(timeout=timeout)
        finally:
            self._producer.close(timeout=timeout)
