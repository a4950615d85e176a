"""A real round trip through the local broker with kafka-python."""

from collections import defaultdict

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from finpulse.kafka import admin, ensure_topics


def test_topic_with_three_partitions_round_trip_by_key(stack, unique_topic):
    assert ensure_topics([unique_topic], settings=stack, partitions=3) == [unique_topic]
    assert ensure_topics([unique_topic], settings=stack, partitions=3) == []  # idempotent

    client = admin(stack)
    try:
        (described,) = client.describe_topics([unique_topic])
    finally:
        client.close()
    assert len(described["partitions"]) == 3

    producer = KafkaProducer(bootstrap_servers=stack.bootstrap_servers, acks="all", retries=5)
    sent = defaultdict(list)
    for i in range(30):
        key = f"doc-{i % 5}"
        meta = producer.send(unique_topic, key=key.encode(), value=f"v{i}".encode()).get(timeout=30)
        sent[key].append((meta.partition, f"v{i}"))
    producer.flush()
    producer.close()

    # Same key, same partition: the ordering guarantee the pipeline relies on.
    for key, entries in sent.items():
        assert len({partition for partition, _ in entries}) == 1, key

    consumer = KafkaConsumer(bootstrap_servers=stack.bootstrap_servers, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=10_000)
    consumer.assign([TopicPartition(unique_topic, p) for p in range(3)])
    received = defaultdict(list)
    for message in consumer:
        received[message.key.decode()].append(message.value.decode())
        if sum(map(len, received.values())) == 30:
            break
    consumer.close()
    assert {k: [v for _, v in entries] for k, entries in sent.items()} == dict(received)
