"""Publishing documents: the :class:`Sink` interface, Kafka and in-memory implementations.

The delivery guarantee of ingest is stated once, on :class:`Sink`.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from finpulse.contract import Document
from finpulse.settings import Settings
from ingest.errors import BrokerLoginRefused, BrokerUnavailable

log = logging.getLogger(__name__)


@dataclass
class PublishResult:
    acked: list[Document] = field(default_factory=list)
    failed: list[tuple[Document, BaseException]] = field(default_factory=list)


class _NotAcked(Exception):
    def __init__(self, failed: list[tuple[Document, BaseException]]):
        super().__init__(f"{len(failed)} document(s) not acked ({failed[0][1]})")
        self.failed = failed


class Sink:
    """Where documents (and dead letters) go. Subclasses implement :meth:`send` and :meth:`drain`.

    **Delivery guarantee of everything ingest publishes: at least once.** A document counts as
    published (remembered as seen by the crawler, past the saved position of a replay) only once
    the broker acknowledged it (acks=all); a send that fails is reported in
    ``PublishResult.failed``, never dropped. Duplicates can therefore appear, and consumers must
    be idempotent on the key (``Document.id``):

    * a send whose ack was lost (broker or network failure after the write) is sent again, by the
      client (kafka-python/librdkafka retries within ``delivery_timeout_ms``; the idempotent
      producer removes those repeats within one producer session) or by a later poll/run;
    * a crawler that crashes between the broker's ack and the seen-store update publishes those
      documents again after the restart;
    * a replay killed before its progress was saved resends, with ``--resume``, the rows after
      the last saved position (without ``--resume``, everything);
    * the same bad item met by a new process is dead-lettered again.

    Retries live in one place per sink: the Kafka clients' own retry settings for Kafka
    (``retries = 0`` here), :meth:`publish`'s resend (tenacity, exponential backoff with full
    jitter) for sinks without their own.
    """

    retries: int = 3
    retry_backoff: float = 0.5
    retry_backoff_max: float = 30.0

    def send(self, doc: Document, payload: bytes | None = None) -> None:
        """Queue one document (non-blocking unless the buffer is full)."""
        raise NotImplementedError

    def drain(self, timeout: float | None = None) -> PublishResult:
        """Wait until everything sent so far is acked or failed; return and reset the outcomes."""
        raise NotImplementedError

    def collect(self) -> PublishResult:
        """Outcomes of sends completed so far, without waiting (default: none until :meth:`drain`)."""
        return PublishResult()

    @property
    def in_flight(self) -> int:
        """Sends whose outcome has not been returned yet."""
        return 0

    def publish(self, docs: Sequence[Document]) -> PublishResult:
        """Send, wait, and resend what was not acked, up to ``retries`` more times; never drops a failure."""
        total = PublishResult()
        pending = list(docs)

        def attempt() -> None:
            nonlocal pending
            for doc in pending:
                self.send(doc)
            result = self.drain()
            total.acked.extend(result.acked)
            pending = [doc for doc, _ in result.failed]
            if result.failed:
                raise _NotAcked(result.failed)

        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_random_exponential(multiplier=self.retry_backoff, max=self.retry_backoff_max),
            retry=retry_if_exception_type(_NotAcked),
            before_sleep=lambda state: log.warning("%s; resending in %.2fs", state.outcome.exception(),
                                                   state.next_action.sleep if state.next_action else 0.0),
            reraise=True,
        )
        try:
            retrying(attempt)
        except _NotAcked as exc:  # reraise=True: the last attempt's failures, never a RetryError
            total.failed.extend(exc.failed)
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

    def collect(self) -> PublishResult:
        return self.drain()  # every send completes at once


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
    ``delivery_timeout_ms`` comes back as a failed future, reported by :meth:`drain`. That is the
    only retry layer (``retries=0``: :meth:`Sink.publish` does not resend on top of it).

    A broker that is gone costs one ``max_block_ms`` wait per batch, not one per document: after
    the first send that cannot even be queued (no metadata), the rest of the batch fails at once.
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
        max_block_ms: int = 10_000,
        retries: int = 0,
        client_id: str = "finpulse-ingest",
        **producer_config,
    ):
        from kafka import KafkaProducer

        self.topic = topic or settings.topic_documents
        self.retries = retries
        if ensure_topic:
            from finpulse.kafka import ensure_topics

            ensure_topics([self.topic], settings=settings, partitions=partitions)
        from finpulse.kafka import client_config

        config = dict(
            **client_config(settings),  # servers and security (TLS, SASL)
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            retries=2**31 - 1,  # bounded by delivery_timeout_ms instead
            delivery_timeout_ms=delivery_timeout_ms,
            request_timeout_ms=min(30_000, delivery_timeout_ms - linger_ms - 1),
            linger_ms=linger_ms,
            batch_size=batch_size,
            # "none" switches compression off; None picks lz4 if installed, else gzip.
            compression_type=None if compression_type == "none" else (compression_type or _compression()),
            max_request_size=2 * 1024 * 1024,
            metrics_enabled=False,  # client-side sensors cost time per message and nobody reads them here
            max_block_ms=max_block_ms,  # send() waiting for metadata / buffer space; default 60 s
        )
        config.update(producer_config)
        self.compression_type = config["compression_type"] or "none"
        self._producer = KafkaProducer(**config)
        # (document, future) of every send since the last drain. Futures are inspected after
        # flush() rather than through per-message callbacks: two closures and a lock per
        # message cost more than the whole send on a busy 2-core box.
        self._pending: deque[tuple[Document, object]] = deque()
        self._send_failures: list[tuple[Document, BaseException]] = []
        self._blocked: BaseException | None = None  # a send timed out: fail the rest until the next drain

    def send(self, doc: Document, payload: bytes | None = None) -> None:
        if self._blocked is not None:
            self._send_failures.append((doc, self._blocked))
            return
        try:
            future = self._producer.send(
                self.topic, key=doc.id.encode("utf-8"), value=payload if payload is not None else doc.to_json()
            )
        except Exception as exc:  # buffer full past max_block_ms, message too large, closed...
            from kafka.errors import KafkaTimeoutError

            if isinstance(exc, KafkaTimeoutError):
                self._blocked = exc
            self._send_failures.append((doc, exc))
            return
        self._pending.append((doc, future))

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def _harvest(self, *, all_done: bool) -> PublishResult:
        result = PublishResult(failed=self._send_failures)
        self._send_failures = []
        pending, still = self._pending, deque()
        while pending:
            doc, future = pending.popleft()
            if not future.is_done:
                if not all_done:
                    # Completions come roughly in send order: stop at the first open one
                    # rather than scanning everything on every call.
                    pending.appendleft((doc, future))
                    break
                still.append((doc, future))
            elif future.failed():
                result.failed.append((doc, future.exception))
            else:
                result.acked.append(doc)
        if all_done:
            self._pending = still
        if result.failed:
            log.warning("%d delivery failure(s), e.g. %s: %s", len(result.failed), result.failed[0][0].id,
                        result.failed[0][1])
        return result

    def collect(self) -> PublishResult:
        return self._harvest(all_done=False)

    def drain(self, timeout: float | None = None) -> PublishResult:
        """Flush, then sort every outstanding send into acked or failed (none is left unknown
        unless ``timeout`` expires first; those stay pending for the next drain)."""
        self._producer.flush(timeout=timeout)
        self._blocked = None
        return self._harvest(all_done=True)

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout=timeout)

    def close(self, timeout: float | None = 30) -> None:
        try:
            self._producer.flush(timeout=timeout)
        finally:
            self._producer.close(timeout=timeout)


class ConfluentSink(Sink):
    """Optional librdkafka producer (``confluent-kafka`` package), for high-volume replay/backfill.

    Same guarantees and interface as :class:`KafkaSink` (acks=all, idempotent, key = document
    id, failures returned by :meth:`drain`), at a fraction of the CPU per message: kafka-python
    batches and frames records in Python, librdkafka does it in C on its own threads.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        topic: str | None = None,
        ensure_topic: bool = True,
        partitions: int | None = None,
        linger_ms: int = 20,
        batch_size: int = 1024 * 1024,
        compression_type: str | None = None,
        delivery_timeout_ms: int = 120_000,
        retries: int = 0,
        **producer_config,
    ):
        try:
            from confluent_kafka import Producer
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("ConfluentSink needs the confluent-kafka package") from exc

        self.topic = topic or settings.topic_documents
        self.retries = retries
        if ensure_topic:
            from finpulse.kafka import ensure_topics

            ensure_topics([self.topic], settings=settings, partitions=partitions)
        # gzip, not lz4: kafka-python consumers read lz4 only with the lz4 package installed.
        compression = compression_type or "gzip"
        from finpulse.kafka import confluent_config

        config = {
            **confluent_config(settings),  # servers and security (TLS, SASL)
            "client.id": "finpulse-ingest",
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": linger_ms,
            "batch.size": batch_size,
            "compression.type": compression,
            "delivery.timeout.ms": delivery_timeout_ms,
            "queue.buffering.max.messages": 1_000_000,
            # kafka-python's murmur2 partitioner, so a key lands on the same partition whichever
            # producer wrote it (librdkafka's default is crc32).
            "partitioner": "murmur2_random",
        }
        config.update(producer_config)
        self.compression_type = compression
        self._producer = Producer(config)
        # key -> documents in flight with that key, oldest first (a key can be in flight twice,
        # e.g. a resend; per-partition order with idempotence makes the reports come FIFO).
        self._pending: dict[bytes, list[Document]] = {}
        self._sent = 0
        self._in_flight = 0
        self._result = PublishResult()

    def _delivered(self, err, msg) -> None:
        # Runs inside poll()/flush() on the caller's thread: no lock needed.
        docs = self._pending.get(msg.key())
        if not docs:
            return
        doc = docs.pop(0)
        self._in_flight -= 1
        if not docs:
            del self._pending[msg.key()]
        if err is None:
            self._result.acked.append(doc)
        else:
            self._result.failed.append((doc, RuntimeError(str(err))))

    def send(self, doc: Document, payload: bytes | None = None) -> None:
        key = doc.id.encode("utf-8")
        value = payload if payload is not None else doc.to_json()
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, on_delivery=self._delivered)
                break
            except BufferError:
                self._producer.poll(0.05)  # local queue full: serve delivery reports, then retry
            except Exception as exc:  # noqa: BLE001 - message too large, unknown topic...
                self._result.failed.append((doc, exc))
                return
        self._pending.setdefault(key, []).append(doc)
        self._sent += 1
        self._in_flight += 1
        if self._sent % 10_000 == 0:
            self._producer.poll(0)  # serve delivery reports now and then, so they do not pile up

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def collect(self) -> PublishResult:
        self._producer.poll(0)  # runs the delivery callbacks of what completed
        result, self._result = self._result, PublishResult()
        return result

    def drain(self, timeout: float | None = None) -> PublishResult:
        remaining = self._producer.flush(-1 if timeout is None else timeout)
        if remaining:
            log.warning("%d message(s) still in flight after flush(%s)", remaining, timeout)
        result, self._result = self._result, PublishResult()
        if result.failed:
            log.warning("%d delivery failure(s), e.g. %s: %s", len(result.failed), result.failed[0][0].id,
                        result.failed[0][1])
        return result

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(-1 if timeout is None else timeout)

    def close(self, timeout: float | None = 30) -> None:
        self._producer.flush(-1 if timeout is None else timeout)


def make_sink(kind: str = "kafka-python", **kwargs) -> Sink:
    """``kafka-python`` (:class:`KafkaSink`), ``confluent`` (:class:`ConfluentSink`) or ``auto``
    (confluent when the optional confluent-kafka package is installed, else kafka-python)."""
    if kind == "auto":
        try:
            import confluent_kafka  # noqa: F401
        except ImportError:
            kind = "kafka-python"
        else:
            kind = "confluent"
    if kind == "kafka-python":
        return KafkaSink(**kwargs)
    if kind == "confluent":
        return ConfluentSink(**kwargs)
    raise ValueError(f"unknown producer {kind!r} (auto, kafka-python or confluent)")


def require_broker(settings: Settings, *, timeout: float = 5.0) -> None:
    """Raise :class:`BrokerUnavailable` (one line: the address and the setting) unless a bootstrap server accepts a connection.

    A TCP connect, not a Kafka request: it answers in at most ``timeout`` seconds per address,
    where the Kafka clients would log connection errors for half a minute before failing. With
    TLS or SASL the handshake and the login are tried too (once, at most ``timeout`` seconds): a
    refused login or an untrusted certificate raises :class:`BrokerLoginRefused` in one line.
    """
    errors = []
    for server in settings.bootstrap_servers:
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
                pass
        except (OSError, ValueError) as exc:
            errors.append(f"{server} ({exc.strerror or exc})" if isinstance(exc, OSError) else f"{server} ({exc})")
        else:
            if settings.kafka_security_protocol != "PLAINTEXT":
                _require_login(settings, timeout)
            return
    where = ", ".join(errors)
    if settings.kafka_bootstrap:
        hint = "check FINPULSE_KAFKA_BOOTSTRAP"
    else:
        hint = ("FINPULSE_KAFKA_BOOTSTRAP is unset, so this is the embedded broker on FINPULSE_KAFKA_PORT: "
                "start it with `finpulse stack up` or set FINPULSE_KAFKA_BOOTSTRAP")
    raise BrokerUnavailable(f"Kafka broker not reachable at {where}; {hint}")


def _require_login(settings: Settings, timeout: float) -> None:
    from finpulse.kafka import security_problem

    problem = security_problem(settings, timeout_s=timeout)
    if problem is not None:
        raise BrokerLoginRefused(problem)
