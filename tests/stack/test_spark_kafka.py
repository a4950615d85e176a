"""Spark (local mode) reads the real broker through the connector jars the stack resolved."""

import pytest
from kafka import KafkaProducer

from finpulse.kafka import ensure_topics

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def test_spark_reads_a_topic_with_the_resolved_connector(stack, unique_topic):
    from pyspark.sql import SparkSession

    from stack import spark_jars

    ensure_topics([unique_topic], settings=stack)
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap_servers, acks="all")
    for i in range(5):
        producer.send(unique_topic, key=f"k{i}".encode(), value=f"value-{i}".encode())
    producer.flush()
    producer.close()

    spark = (
        SparkSession.builder.master("local[1]")
        .appName("finpulse-test-connector")
        .config("spark.jars", ",".join(spark_jars(stack)))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    try:
        frame = (
            spark.read.format("kafka")
            .option("kafka.bootstrap.servers", ",".join(stack.bootstrap_servers))
            .option("subscribe", unique_topic)
            .option("startingOffsets", "earliest")
            .load()
            .selectExpr("CAST(key AS STRING) AS k", "CAST(value AS STRING) AS v")
        )
        rows = sorted((r.k, r.v) for r in frame.collect())
    finally:
        spark.stop()
    assert rows == [(f"k{i}", f"value-{i}") for i in range(5)]
