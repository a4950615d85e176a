"""A real round trip through the local broker with kafka-python."""

from collections import defaultdict

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from finpulse.kafka import admin, client_config, confluent_config, ensure_topics, security_summary, spark_source_options
from finpulse.settings import Settings
from tests.finpulse.pki import make_pki


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


# --- the security settings as each client library takes them ------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _secure(pki, **fields) -> Settings:
    return Settings(kafka_bootstrap="k1.example:9093,k2.example:9093", kafka_security_protocol="SASL_SSL",
                    kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="ingest",
                    kafka_sasl_password='pa"ss\\word', kafka_ssl_cafile=pki.ca, kafka_ssl_certfile=pki.client_cert,
                    kafka_ssl_keyfile=pki.client_key, kafka_ssl_key_password="keypw", **fields)


def test_kafka_python_gets_every_security_setting_under_names_its_clients_know(pki):
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    config = client_config(_secure(pki))
    assert config == {
        "bootstrap_servers": ["k1.example:9093", "k2.example:9093"], "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "ingest", "sasl_plain_password": 'pa"ss\\word',
        "ssl_check_hostname": True, "ssl_cafile": str(pki.ca), "ssl_certfile": str(pki.client_cert),
        "ssl_keyfile": str(pki.client_key), "ssl_password": "keypw",
    }
    for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):  # unknown names are refused at construction
        assert set(config) <= set(client.DEFAULT_CONFIG), client.__name__
    assert client_config(Settings()) == {"bootstrap_servers": Settings().bootstrap_servers,
                                         "security_protocol": "PLAINTEXT"}


def test_librdkafka_takes_the_same_settings(pki):
    from confluent_kafka import Producer

    config = confluent_config(_secure(pki, kafka_ssl_check_hostname=False))
    assert config == {
        "bootstrap.servers": "k1.example:9093,k2.example:9093", "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "ingest", "sasl.password": 'pa"ss\\word',
        "ssl.endpoint.identification.algorithm": "none", "ssl.ca.location": str(pki.ca),
        "ssl.certificate.location": str(pki.client_cert), "ssl.key.location": str(pki.client_key),
        "ssl.key.password": "keypw",
    }
    Producer(config)  # librdkafka checks every property name and loads the CA, certificate and key here


def test_spark_gets_the_pem_contents_and_a_jaas_line(pki):
    options = spark_source_options(_secure(pki))
    assert options == {
        "kafka.bootstrap.servers": "k1.example:9093,k2.example:9093", "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "SCRAM-SHA-512",
        "kafka.sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required '
                                  'username="ingest" password="pa\\"ss\\\\word";',
        "kafka.ssl.endpoint.identification.algorithm": "https",
        "kafka.ssl.truststore.type": "PEM", "kafka.ssl.truststore.certificates": pki.ca.read_text(),
        "kafka.ssl.keystore.type": "PEM", "kafka.ssl.keystore.certificate.chain": pki.client_cert.read_text(),
        "kafka.ssl.keystore.key": pki.client_key.read_text(), "kafka.ssl.key.password": "keypw",
    }
    plain = spark_source_options(Settings(kafka_bootstrap="k1:9092"))
    assert plain == {"kafka.bootstrap.servers": "k1:9092", "kafka.security.protocol": "PLAINTEXT"}


def test_what_is_logged_about_the_security_holds_no_secret(pki):
    assert security_summary(_secure(pki)) == "SASL_SSL SCRAM-SHA-512 as user 'ingest'"
    assert security_summary(Settings()) == "PLAINTEXT"
