"""The crawler: polls sources on their own schedules (APScheduler), dedups, publishes, remembers.

Delivery: as stated on :class:`ingest.producer.Sink`. Order of events per poll: fetch ->
normalise/validate -> dedup -> publish -> broker ack -> mark seen (+ store HTTP validators).
A crash anywhere before the last step republishes on the next run rather than losing a story.

Items that fail (contract, parse, encoding, no id...; not duplicates) and response bodies that
cannot be parsed go to the dead-letter sink: if a dead letter is not acked, the poll's HTTP
validators are not stored, so the next poll meets the item again.

Sources are fetched concurrently on the scheduler's thread pool (I/O bound; a hanging host only
ties up its own worker), while dedup, publishing and the seen-store updates happen on the calling
thread, one poll at a time, so dedup decisions are never racy. A broker that is down holds the
calling thread for at most ``max_block_ms`` (no metadata: 10 s by default) or
``delivery_timeout_ms`` (30 s) per publish, once for a poll's documents and once for its dead
letters; after that they count as failed and stay unseen, so the next poll meets them again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from finpulse.contract import Document
from finpulse.settings import Settings
from ingest.config import CrawlerConfig
from ingest.deadletter import DeadLetter, DeadLetterSink
from ingest.dedup import Deduplicator, Verdict
from ingest.errors import IngestError
from ingest.http import PoliteClient
from ingest.metrics import IngestMetrics
from ingest.normalize import merge_tickers
from ingest.producer import KafkaSink, Sink
from ingest.sources.base import Skipped, Source, source_from_config
from ingest.store import SeenStore

log = logging.getLogger(__name__)


@dataclass
class PollOutcome:
    """What one poll of one source produced (built on a worker thread)."""

    source: Source
    items: list[Document | Skipped] = field(default_factory=list)
    error: BaseException | None = None
    seconds: float = 0.0


@dataclass
class PollSummary:
    source: str
    fetched: int = 0
    published: int = 0
    duplicate: int = 0
    near_duplicate: int = 0
    failed: int = 0
    dead_lettered: int = 0
    error: str | None = None
    seconds: float = 0.0
    documents: list[Document] = field(default_factory=list)

    def line(self) -> str:
        tail = f" error={self.error}" if self.error else ""
        return (
            f"poll source={self.source} fetched={self.fetched} published={self.published} "
            f"duplicate={self.duplicate} near_duplicate={self.near_duplicate} failed={self.failed} "
            f"dead_lettered={self.dead_lettered} "
            f"took={self.seconds:.2f}s{tail}"
        )


def _reason(exc: BaseException) -> str:
    return getattr(exc, "reason", None) or type(exc).__name__


class Crawler:
    """Polls every enabled source of a :class:`CrawlerConfig` into a :class:`Sink` (see its delivery guarantee)."""

    # Fingerprints of dead letters acked by this process, so a bad item that stays in a feed (or
    # an API without validators) is not dead-lettered again on every poll. Bounded: the oldest
    # are forgotten, and a restarted crawler sends each one again once (at least once).
    DEAD_LETTER_MEMORY = 100_000

    def __init__(
        self,
        *,
        config: CrawlerConfig,
        sink: Sink,
        dead_letters: DeadLetterSink,
        store: SeenStore,
        metrics: IngestMetrics | None = None,
        client: PoliteClient | None = None,
    ):
        self.config = config
        self.sink = sink
        self.dead_letters = dead_letters
        self._dead_lettered: OrderedDict[str, None] = OrderedDict()
        self.store = store
        self.metrics = metrics or IngestMetrics()
        self.client = client or PoliteClient(options=config.http.options())
        self.sources: list[Source] = [
            source_from_config(s, client=self.client, store=store) for s in config.sources if s.enabled
        ]
        self.dedup = Deduplicator(store, **config.dedup.model_dump())
        self._pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="ingest-poll")
        self._stop = threading.Event()

    @classmethod
    def from_settings(
        cls,
        config: CrawlerConfig,
        *,
        settings: Settings,
        topic: str | None = None,
        state_dir: Path | None = None,
        metrics: IngestMetrics | None = None,
        dead_letters: DeadLetterSink | None = None,
        dead_letter_topic: str | None = None,
        **sink_options,
    ) -> Crawler:
        """A crawler publishing to Kafka, with its seen-store under ``settings.home/ingest``.

        Dead letters go to ``dead_letters`` if given, else to ``dead_letter_topic`` (default
        ``settings.topic_dead_letters``, created if missing).
        """
        store = SeenStore(Path(state_dir) / "seen.sqlite3") if state_dir else SeenStore.for_home(settings.home)
        # A daemon must not hold its processing thread for minutes on a dead broker: a poll's
        # documents fail after these bounds and are fetched again by the next poll.
        sink_options.setdefault("delivery_timeout_ms", 30_000)
        sink_options.setdefault("max_block_ms", 10_000)
        sink = KafkaSink(settings=settings, topic=topic, **sink_options)
        if dead_letters is None:
            dead_letters = DeadLetterSink.kafka(settings=settings, topic=dead_letter_topic,
                                                partitions=sink_options.get("partitions"),
                                                delivery_timeout_ms=sink_options["delivery_timeout_ms"],
                                                max_block_ms=sink_options["max_block_ms"])
        return cls(config=config, sink=sink, dead_letters=dead_letters, store=store, metrics=metrics)

    # -- lifecycle ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to return after the poll in hand is published (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Flush and close the sink, the HTTP client and the store. Worker threads are not waited for."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        try:
            try:
                self.sink.close()
            finally:
                self.dead_letters.close()
        finally:
            self.client.close()
            self.store.close()

    def __enter__(self) -> Crawler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- polling --------------------------------------------------------------------------
    @staticmethod
    def _poll(source: Source) -> PollOutcome:
        outcome = PollOutcome(source)
        started = time.monotonic()
        try:
            # Iterate by hand: items yielded before a failure (say page 3 of 5) are kept.
            for item in source.poll():
                outcome.items.append(item)
        except BaseException as exc:  # noqa: BLE001 - reported per source, never fatal
            outcome.error = exc
        outcome.seconds = time.monotonic() - started
        return outcome

    def run_once(self, sources: Iterable[Source] | None = None) -> list[PollSummary]:
        """Poll the given (default: all) sources once, concurrently; publish; return a summary each."""
        futures = [self._pool.submit(self._poll, s) for s in (sources if sources is not None else self.sources)]
        return [self.process(f.result()) for f in futures]

    def run(self, *, once: bool = False) -> None:
        """Poll each source every ``interval`` seconds until :meth:`stop` (or one round with ``once``).

        APScheduler runs the polls (an interval job per source, first run at once, on a pool of
        ``workers`` threads); each outcome is handed to this thread, which dedups and publishes.
        A job returns only once its outcome was processed, and ``max_instances=1`` skips a source's
        next run while one is in hand, so a slow source is never polled twice at a time.
        """
        if once:
            self.run_once()
            return
        from apscheduler.executors.pool import ThreadPoolExecutor as PoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        handoff: queue.Queue[tuple[PollOutcome, threading.Event]] = queue.Queue()

        def job(source: Source) -> None:
            outcome = self._poll(source)
            processed = threading.Event()
            handoff.put((outcome, processed))
            while not processed.wait(0.5) and not self._stop.is_set():
                pass

        scheduler = BackgroundScheduler(
            executors={"default": PoolExecutor(self.config.workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=timezone.utc,
        )
        now = datetime.now(timezone.utc)
        for source in self.sources:
            scheduler.add_job(job, "interval", seconds=source.interval, args=(source,), id=source.name,
                              name=f"poll {source.name}", next_run_time=now)
        scheduler.start()
        try:
            while not self._stop.is_set():
                try:
                    outcome, processed = handoff.get(timeout=0.5)
                except queue.Empty:
                    continue
                try:
                    self._process_safely(outcome)
                finally:
                    processed.set()
        finally:
            scheduler.shutdown(wait=False)
        # Publish what is already fetched; polls still in flight are abandoned (nothing was
        # marked seen for them, so the next run fetches them again).
        while True:
            try:
                outcome, processed = handoff.get_nowait()
            except queue.Empty:
                break
            self._process_safely(outcome)
            processed.set()

    def _process_safely(self, outcome: PollOutcome) -> None:
        # A bug or a store error while handling one source's poll must not end the daemon;
        # nothing of that poll was marked seen, so the next poll retries it.
        try:
            self.process(outcome)
        except Exception:  # noqa: BLE001
            outcome.source.rollback()
            self.dedup.reset_pending()
            self.metrics.failed.labels(outcome.source.name, "internal").inc()
            log.exception("source=%s poll could not be processed", outcome.source.name)

    # -- dead letters ---------------------------------------------------------------------
    def _dead_letter(self, name: str, rejected: list[Skipped], summary: PollSummary) -> bool:
        """Publish the dead letters of one poll; False if any was not delivered (never raises)."""
        letters = [DeadLetter(stage="ingest", source=name, reason=s.reason, detail=s.detail, raw=s.raw, url=s.url)
                   for s in rejected]
        fresh = [letter for letter in letters if letter.fingerprint not in self._dead_lettered]
        if len(fresh) < len(letters):
            log.debug("source=%s %d dead letter(s) already sent by this process", name, len(letters) - len(fresh))
        if not fresh:
            return True
        result = self.dead_letters.publish(fresh)
        for letter in result.acked:
            summary.dead_lettered += 1
            self.metrics.dead_lettered.labels(name, letter.reason).inc()
            self._dead_lettered[letter.fingerprint] = None
        while len(self._dead_lettered) > self.DEAD_LETTER_MEMORY:
            self._dead_lettered.popitem(last=False)
        for letter, _ in result.failed:
            self.metrics.dead_letter_failed.labels(name, letter.reason).inc()
        return not result.failed

    # -- dedup + publish --------------------------------------------------------------------
    def process(self, outcome: PollOutcome) -> PollSummary:
        """Dedup, publish and dead-letter one poll's items; commit the source's state only if all got through."""
        source = outcome.source
        summary = PollSummary(source=source.name, seconds=outcome.seconds)
        candidates, rejected = self._sort_items(outcome, summary)
        delivered = self._publish(self._novel(candidates, summary), summary)
        if outcome.error is not None:
            self._count_poll_error(outcome.error, summary)
        if not self._dead_letter(source.name, rejected, summary):
            delivered = False
        if outcome.error is None and delivered:
            source.commit()
        else:
            source.rollback()
        log.info(summary.line())
        return summary

    def _sort_items(self, outcome: PollOutcome, summary: PollSummary) -> tuple[list[Document], list[Skipped]]:
        """Split a poll's items into documents to dedup and items to dead-letter (counting both)."""
        name, m = outcome.source.name, self.metrics
        candidates: list[Document] = []
        rejected: list[Skipped] = []
        for item in outcome.items:
            summary.fetched += 1
            if not isinstance(item, Skipped):
                candidates.append(item)
            elif item.duplicate:
                summary.duplicate += 1
                m.duplicate.labels(name).inc()
            else:
                summary.failed += 1
                m.failed.labels(name, item.reason).inc()
                rejected.append(item)
                log.warning("source=%s skipped item: %s: %s", name, item.reason, item.detail[:300])
        if outcome.error is not None:
            # A whole response that could not be parsed: its body is a dead letter too.
            whole = Skipped.from_error(name, outcome.error)
            if whole is not None:
                rejected.append(whole)
        m.fetched.labels(name).inc(summary.fetched)
        return candidates, rejected

    def _novel(self, candidates: list[Document], summary: PollSummary) -> list[tuple[Document, Verdict]]:
        """The documents that are no exact duplicate, annotated with their novelty and reserved in the dedup."""
        name = summary.source
        batch: list[tuple[Document, Verdict]] = []
        position: dict[str, int] = {}  # id -> index in batch
        for doc in candidates:
            verdict = self.dedup.check(doc)
            if verdict.duplicate == "id" and doc.id in position:
                # The same id twice in this poll: one document, with the tickers of both.
                i = position[doc.id]
                first, first_verdict = batch[i]
                batch[i] = (first.model_copy(update={"tickers": merge_tickers(first.tickers, doc.tickers)}),
                            first_verdict)
            elif verdict.duplicate == "id" and (update := self._with_new_tickers(doc, verdict)) is not None:
                # Published before under fewer tickers (the same story in another ticker's feed): published
                # again with the union; consumers upsert by id, so it is one document with more tickers.
                doc, verdict = update
                log.info("source=%s %s seen before with tickers %s: published again with %s", name, doc.id,
                         doc.extra.get("tickers_before"), doc.tickers)
                self.dedup.reserve(doc, verdict)
                position[doc.id] = len(batch)
                batch.append((doc, verdict))
                continue
            if verdict.duplicate:
                summary.duplicate += 1
                self.metrics.duplicate.labels(name).inc()
                log.debug("source=%s duplicate (%s) %s", name, verdict.duplicate, doc.id)
                continue
            extra = dict(doc.extra)
            extra["novelty"] = verdict.novelty
            extra["first_story_id"] = verdict.first_story_id or doc.id
            extra["content_hash"] = verdict.content_hash
            if verdict.similarity is not None:
                extra["similarity"] = verdict.similarity
            doc = doc.model_copy(update={"extra": extra})
            self.dedup.reserve(doc, verdict)
            position[doc.id] = len(batch)
            batch.append((doc, verdict))
        return batch

    def _with_new_tickers(self, doc: Document, verdict: Verdict) -> tuple[Document, Verdict] | None:
        """``doc`` (an id already published) with the union of its published and its own tickers, when that adds
        any; None otherwise (a plain duplicate, or a story published before tickers were recorded)."""
        before = self.dedup.store.seen_tickers(doc.id)
        if before is None:
            return None
        union = merge_tickers(before, doc.tickers)
        if set(union) <= set(before):
            return None
        first = self.dedup.store.first_story_of(doc.id) or doc.id
        extra = dict(doc.extra)
        extra.update(novelty=first == doc.id, first_story_id=first, content_hash=verdict.content_hash,
                     tickers_before=list(before))
        return (doc.model_copy(update={"tickers": union, "extra": extra}),
                Verdict(duplicate=None, content_hash=verdict.content_hash, novelty=first == doc.id,
                        first_story_id=first))

    def _publish(self, batch: list[tuple[Document, Verdict]], summary: PollSummary) -> bool:
        """Publish ``batch``; remember the acked ones as seen, release the rest. False if any failed."""
        if not batch:
            return True
        name, m = summary.source, self.metrics
        by_id = {doc.id: (doc, v) for doc, v in batch}
        try:
            result = self.sink.publish([doc for doc, _ in batch])
        except Exception as exc:  # noqa: BLE001 - the sink itself broke; nothing is marked seen
            acked_pairs, failed_pairs = [], list(batch)
            failures = [(doc, exc) for doc, _ in batch]
        else:
            acked_pairs = [by_id[d.id] for d in result.acked if d.id in by_id]
            failed_pairs = [by_id[i] for i in {d.id for d, _ in result.failed}]
            failures = result.failed
        if acked_pairs:
            self.dedup.confirm(acked_pairs)
        if failed_pairs:
            self.dedup.release(failed_pairs)
            summary.failed += len(failed_pairs)
            m.failed.labels(name, "publish").inc(len(failed_pairs))
            log.error("source=%s %d document(s) not delivered, will retry next poll: %s",
                      name, len(failed_pairs), failures[0][1])
        for doc, verdict in acked_pairs:
            summary.published += 1
            summary.documents.append(doc)
            m.published.labels(name).inc()
            if not verdict.novelty:
                summary.near_duplicate += 1
                m.near_duplicate.labels(name).inc()
        return not failed_pairs

    def _count_poll_error(self, error: BaseException, summary: PollSummary) -> None:
        """Count and log a poll that failed (after the items it yielded before failing were handled)."""
        reason = _reason(error)
        summary.failed += 1
        summary.error = f"{reason}: {error}"[:300]
        self.metrics.failed.labels(summary.source, reason).inc()
        level = logging.WARNING if isinstance(error, IngestError) else logging.ERROR
        log.log(level, "source=%s poll failed: %s", summary.source, summary.error,
                exc_info=not isinstance(error, IngestError))
