from __future__ import annotations

from datetime import datetime, timezone

import pytest

from finpulse.contract import Document
from ingest.producer import KafkaSink, MemorySink

from tests.ingest.kafka_utils import consume_all

NOW = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)


def _doc(i: int) -> Document:
    return Document(id=f"t:{i}", source="t", kind="comment", text=f"comment {i}", published_at=NOW, fetched_at=NOW)


def test_memory_sink_resends_failed_deliveries():
    sink = MemorySink(fail_next=2)
    result = sink.publish([_doc(i) for i in range(3)])
    assert sorted(d.id for d in result.acked) == ["t:0", "t:1", "t:2"]
    assert result.failed == []
    assert sorted(d.id for d in sink.documents) == ["t:0", "t:1", "t:2"]


def test_memory_sink_reports_what_never_got_through():
    sink = MemorySink(fail_next=100)
    sink.retries = 2
    result = sink.publish([_doc(1)])
    assert result.acked == []
    assert [d.id for d, _ in result.failed] == ["t:1"]


def test_kafka_sink_delivers_keyed_by_id(stack, unique_topic):
    docs = [_doc(i) for i in range(50)]
    with KafkaSink(settings=stack, topic=unique_topic, partitions=3) as sink:
        result = sink.publish(docs)
    assert result.failed == []
    assert len(result.acked) == 50
    got = consume_all(stack, unique_topic)
    assert sorted(d.id for _, d in got) == sorted(d.id for d in docs)
    assert all(key == doc.id.encode() for key, doc in got)
    assert got[0][1] in docs


def test_kafka_sink_surfaces_failures_instead_of_dropping(stack, unique_topic):
    # A message above max_request_size can never be delivered: it must come back as failed.
    big = Document(id="t:big", source="t", kind="comment", text="x" * 900_000, published_at=NOW, fetched_at=NOW)
    with KafkaSink(settings=stack, topic=unique_topic, max_request_size=100_000, retries=1) as sink:
        sink.retry_backoff = 0.0
        result = sink.publish([big, _doc(1)])
    assert [d.id for d, _ in result.failed] == ["t:big"]
    assert [d.id for d in result.acked] == ["t:1"]


def test_confluent_sink_delivers_to_the_same_partitions(stack, unique_topic):
    pytest.importorskip("confluent_kafka")
    from ingest.producer import ConfluentSink

    docs = [_doc(i) for i in range(200)]
    with ConfluentSink(settings=stack, topic=unique_topic, partitions=3) as sink:
        result = sink.publish(docs + docs[:5])  # a key twice in flight is still accounted for
    assert result.failed == [] and len(result.acked) == 205
    got = consume_all(stack, unique_topic)
    assert sorted(d.id for _, d in got) == sorted(d.id for d in docs + docs[:5])
    # Same key -> same partition as kafka-python's partitioner would choose.
    from kafka import KafkaConsumer, TopicPartition
    from kafka.partitioner.default import murmur2

    consumer = KafkaConsumer(bootstrap_servers=stack.bootstrap_servers, enable_auto_commit=False)
    try:
        for p in range(3):
            tp = TopicPartition(unique_topic, p)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            end = consumer.end_offsets([tp])[tp]
            seen = 0
            while seen < end:
                for records in consumer.poll(timeout_ms=5000).values():
                    for r in records:
                        seen += 1
                        assert (murmur2(r.key) & 0x7FFFFFFF) % 3 == p  # kafka-python's (and Java's) choice
    finally:
        consumer.close()
