"""Spark (local mode) reads the real broker through the connector jars the stack resolved, and through
TLS + SASL and TLS with a client certificate with the pipeline's own source options."""

import uuid

import pytest
from kafka import KafkaProducer

from finpulse.kafka import client_config, ensure_topics
from finpulse.kafka import spark_source_options
from tests.stack.conftest import mtls_client, sasl_ssl_client

pytestmark = [pytest.mark.spark, pytest.mark.slow]


# The driver JVM (a process of its own, so no pytest capture sees it) logs everything at INFO into a
# file: Spark's and the Kafka clients' lines, including the client configs they print.
LOG4J2 = """\
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
appender.file.type = File
appender.file.name = file
appender.file.fileName = {path}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = %d %p %c: %m%n
"""


@pytest.fixture(scope="module")
def spark_log(tmp_path_factory):
    return tmp_path_factory.mktemp("spark-log") / "driver.log"


@pytest.fixture(scope="module")
def spark(stack, spark_log):
    from pyspark.sql import SparkSession

    from stack import spark_jars

    config = spark_log.with_name("log4j2.properties")
    config.write_text(LOG4J2.format(path=spark_log))
    session = (
        SparkSession.builder.master("local[1]")
        .appName("finpulse-test-connector")
        .config("spark.jars", ",".join(spark_jars(stack)))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .getOrCreate()
    )
    # Reconfigured in the running JVM, not through spark.driver.extraJavaOptions: earlier tests in this
    # pytest process have started the one driver JVM PySpark keeps, and those options only reach a new one.
    jvm = session._jvm
    configurator = jvm.org.apache.logging.log4j.core.config.Configurator
    configurator.reconfigure(jvm.java.net.URI(config.as_uri()))
    yield session
    defaults = jvm.java.lang.Thread.currentThread().getContextClassLoader().getResource(
        "org/apache/spark/log4j2-defaults.properties")
    configurator.reconfigure(defaults.toURI())  # the console logging Spark starts with, for later tests
    session.stop()


def _produce(settings, topic: str, n: int) -> None:
    producer = KafkaProducer(**client_config(settings), acks="all")
    for i in range(n):
        producer.send(topic, key=f"k{i}".encode(), value=f"value-{i}".encode())
    producer.flush()
    producer.close()


def test_spark_reads_a_topic_with_the_resolved_connector(stack, spark, unique_topic):
    ensure_topics([unique_topic], settings=stack)
    _produce(stack, unique_topic, 5)
    frame = (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", ",".join(stack.bootstrap_servers))
        .option("subscribe", unique_topic)
        .option("startingOffsets", "earliest")
        .load()
        .selectExpr("CAST(key AS STRING) AS k", "CAST(value AS STRING) AS v")
    )
    rows = sorted((r.k, r.v) for r in frame.collect())
    assert rows == [(f"k{i}", f"value-{i}") for i in range(5)]


def test_the_pipeline_stream_over_tls_and_sasl_never_logs_the_password(secure_broker, pki, spark, spark_log,
                                                                       tmp_path):
    """PipelineJob._stream (the job's readStream with finpulse.kafka.spark_source_options) against the SASL_SSL
    listener: the CA travels as a PEM truststore, the login as a JAAS line. With Spark and the Kafka clients
    logging at INFO: the rows arrive, the password is in no line."""
    from pipeline.job import JobOptions, PipelineJob

    name = uuid.uuid4().hex[:10]
    client = sasl_ssl_client(secure_broker, pki).model_copy(
        update={"topic_documents": f"sasl.docs.{name}", "topic_dead_letters": f"sasl.dead.{name}"})
    ensure_topics([client.topic_documents, client.topic_dead_letters], settings=client, partitions=1)
    _produce(client, client.topic_documents, 4)
    job = PipelineJob(JobOptions.from_settings(client, query_name=f"sasl-{name}"), settings=client)
    password = client.kafka_sasl_password.get_secret_value()
    query = (job._stream(spark).selectExpr("topic", "CAST(value AS STRING) AS v").writeStream
             .format("memory").queryName(f"sasl_{name}").option("checkpointLocation", str(tmp_path / "cp"))
             .trigger(availableNow=True).start())
    query.awaitTermination(180)
    assert query.exception() is None
    rows = sorted(r.v for r in spark.sql(f"SELECT v FROM sasl_{name}").collect())
    assert rows == [f"value-{i}" for i in range(4)]
    logged = spark_log.read_text(errors="replace")
    assert "sasl.jaas.config = [hidden]" in logged  # the clients' configs were logged: the right log was read
    assert "SCRAM-SHA-512" in logged
    assert password not in logged and password[:16] not in logged


def test_spark_reads_with_a_client_certificate(secure_broker, pki, spark):
    """The SSL listener requires a client certificate: Spark presents it from the PEM keystore options."""
    client = mtls_client(secure_broker, pki)
    topic = f"mtls.{uuid.uuid4().hex[:10]}"
    ensure_topics([topic], settings=client, partitions=1)
    _produce(client, topic, 3)
    frame = (spark.read.format("kafka").options(**spark_source_options(client)).option("subscribe", topic)
             .option("startingOffsets", "earliest").load().selectExpr("CAST(value AS STRING) AS v"))
    assert sorted(r.v for r in frame.collect()) == [f"value-{i}" for i in range(3)]
