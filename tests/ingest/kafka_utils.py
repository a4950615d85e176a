"""Reading a topic back completely: up to the end offsets at the time of the call (no sleeps)."""

from __future__ import annotations

import json
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from finpulse.contract import Document, validate_document
from finpulse.kafka import client_config


def consume_raw(settings, topic: str) -> list[tuple[bytes, bytes]]:
    """Every (key, value) in ``topic`` now; deterministic, because it reads to the end offsets."""
    consumer = KafkaConsumer(
        **client_config(settings),  # servers and security: the SASL tests read through this too
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        consumer_timeout_ms=30_000,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        assert partitions, f"topic {topic} has no partitions"
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        end = consumer.end_offsets(partitions)
        out: list[tuple[bytes, bytes]] = []
        remaining = {tp for tp in partitions if end[tp] > 0}
        while remaining:
            batch = consumer.poll(timeout_ms=5_000)
            if not batch:
                raise AssertionError(f"stalled before the end offsets of {sorted(str(t) for t in remaining)}")
            for tp, records in batch.items():
                for record in records:
                    if record.offset < end[tp]:
                        out.append((record.key, record.value))
                if consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return out
    finally:
        consumer.close()


def consume_all(settings, topic: str) -> list[tuple[bytes, Document]]:
    """Every (key, document) in ``topic`` now, each validated against the contract."""
    return [(key, validate_document(value)) for key, value in consume_raw(settings, topic)]


def consume_dead_letters(settings, topic: str) -> list[tuple[bytes, dict[str, Any]]]:
    """Every (key, parsed JSON envelope) in a dead-letter topic now."""
    return [(key, json.loads(value)) for key, value in consume_raw(settings, topic)]
