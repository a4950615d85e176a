"""Kafka clients with security settings (FINPULSE_KAFKA_SECURITY_PROTOCOL, SASL_*, SSL_*) against a real
broker's SASL_PLAINTEXT, SASL_SSL and SSL (client certificate) listeners: the admin client, ingest's
producers (kafka-python and librdkafka), a consumer and the pipeline's lag consumer connect; a wrong
password and an untrusted certificate are one clear line each."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone

import pytest
from pydantic import SecretStr

from finpulse.contract import Document
from finpulse.kafka import KafkaSecurityError, admin, ensure_topics, security_problem
from ingest.producer import ConfluentSink, KafkaSink
from stack.kafka import probe_kafka
from tests.ingest.kafka_utils import consume_all
from tests.finpulse.pki import make_pki
from tests.stack.conftest import (
    SASL_SSL_PORT,
    SASL_USER,
    mtls_client,
    sasl_client,
    sasl_environment,
    sasl_ssl_client,
)

pytestmark = pytest.mark.slow
NOW = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
WRONG = "not-the-password-7f3a"


def _docs(prefix: str, n: int) -> list[Document]:
    return [Document(id=f"{prefix}:{i}", source="sasl", kind="comment", text=f"comment {i}", published_at=NOW,
                     fetched_at=NOW) for i in range(n)]


def _clients(secure_broker, pki):
    return {
        "SASL_PLAINTEXT PLAIN": sasl_client(secure_broker, "PLAIN"),
        "SASL_PLAINTEXT SCRAM-SHA-256": sasl_client(secure_broker, "SCRAM-SHA-256"),
        "SASL_PLAINTEXT SCRAM-SHA-512": sasl_client(secure_broker, "SCRAM-SHA-512"),
        "SASL_SSL SCRAM-SHA-512": sasl_ssl_client(secure_broker, pki),
        "SSL with a client certificate": mtls_client(secure_broker, pki),
    }


@pytest.mark.parametrize("how", ["SASL_PLAINTEXT PLAIN", "SASL_PLAINTEXT SCRAM-SHA-256", "SASL_PLAINTEXT SCRAM-SHA-512",
                                 "SASL_SSL SCRAM-SHA-512", "SSL with a client certificate"])
def test_admin_producers_and_consumers_connect(secure_broker, pki, how):
    from pipeline.job import kafka_lag

    client = _clients(secure_broker, pki)[how]
    topic = f"sasl.{uuid.uuid4().hex[:10]}"
    assert ensure_topics([topic], settings=client, partitions=2) == [topic]  # the admin client
    with KafkaSink(settings=client, topic=topic, ensure_topic=False) as sink:
        assert sink.publish(_docs("kp", 5)).failed == []
    with ConfluentSink(settings=client, topic=topic, ensure_topic=False) as sink:
        assert sink.publish(_docs("rd", 5)).failed == []
    got = sorted(doc.id for _, doc in consume_all(client, topic))
    assert got == sorted([f"kp:{i}" for i in range(5)] + [f"rd:{i}" for i in range(5)])
    # The pipeline's status consumer: no checkpoint yet, so every record is lag.
    assert kafka_lag(client, secure_broker.home / "no-checkpoint", [topic])["lag"] == 10


def test_a_wrong_password_is_refused_in_one_line(secure_broker):
    wrong = sasl_client(secure_broker, "SCRAM-SHA-256", password=WRONG)
    line = (f"Kafka at 127.0.0.1:{secure_broker.kafka_sasl_port} refused the SCRAM-SHA-256 login of user "
            f"'{SASL_USER}' (Authentication failed during authentication due to invalid credentials with SASL "
            "mechanism SCRAM-SHA-256); check FINPULSE_KAFKA_SASL_USERNAME and FINPULSE_KAFKA_SASL_PASSWORD")
    assert probe_kafka(wrong, timeout_s=3) == line  # `finpulse stack status` / `stack up` of an external Kafka
    assert security_problem(wrong) == line  # ingest's check before it starts a producer
    with pytest.raises(KafkaSecurityError) as info:  # what ensure_topics and every admin call raise
        admin(wrong, bootstrap_timeout_ms=3_000)
    assert str(info.value) == line
    assert security_problem(sasl_client(secure_broker, "SCRAM-SHA-256")) is None


def _replay(tmp_path, env: dict, topic: str) -> subprocess.CompletedProcess:
    csv = tmp_path / "rows.csv"
    csv.write_text("id,text,created_at\n1,Shares rally,2024-05-01T10:00:00Z\n2,Shares slump,2024-05-01T10:01:00Z\n")
    environ = {**os.environ, "FINPULSE_HOME": str(tmp_path / "home"), **env}
    return subprocess.run([sys.executable, "-m", "finpulse", "ingest", "replay", str(csv), "--id-column", "id",
                           "--lang", "en", "--topic", topic, "--dead-letter-topic", f"{topic}.dl"],
                          capture_output=True, text=True, env=environ, timeout=180)


def test_ingest_replay_through_sasl_and_a_wrong_password_in_one_line(secure_broker, tmp_path):
    topic = f"sasl.{uuid.uuid4().hex[:10]}"
    ok = _replay(tmp_path, sasl_environment(secure_broker, "SCRAM-SHA-512"), topic)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("rows read 2 = published 2 + dead-lettered 0"), ok.stdout
    assert sorted(doc.id for _, doc in consume_all(sasl_client(secure_broker, "SCRAM-SHA-512"), topic)) == [
        "rows:1", "rows:2"]

    bad = _replay(tmp_path, sasl_environment(secure_broker, "SCRAM-SHA-256", password=WRONG), topic)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert bad.stderr.strip().splitlines() == [
        f"Error: Kafka at 127.0.0.1:{secure_broker.kafka_sasl_port} refused the SCRAM-SHA-256 login of user "
        f"'{SASL_USER}' (Authentication failed during authentication due to invalid credentials with SASL "
        "mechanism SCRAM-SHA-256); check FINPULSE_KAFKA_SASL_USERNAME and FINPULSE_KAFKA_SASL_PASSWORD"]
    assert WRONG not in bad.stdout + bad.stderr


def test_the_broker_config_holding_the_password_is_private(secure_broker):
    config = secure_broker.home / "kafka" / "server.properties"
    assert config.stat().st_mode & 0o777 == 0o600
    assert f"user_{SASL_USER}=" in config.read_text()


def test_an_untrusted_certificate_is_one_line(secure_broker, pki, tmp_path):
    stranger = make_pki(tmp_path / "other-ca")  # the broker's certificate is not signed by this CA
    client = sasl_ssl_client(secure_broker, pki).model_copy(update={"kafka_ssl_cafile": stranger.ca})
    assert security_problem(client) == (
        f"TLS: the certificate of Kafka at 127.0.0.1:{SASL_SSL_PORT} is not trusted (unable to get local issuer "
        "certificate); check FINPULSE_KAFKA_SSL_CAFILE and FINPULSE_KAFKA_SSL_CHECK_HOSTNAME")
    assert security_problem(sasl_ssl_client(secure_broker, pki)) is None
    assert security_problem(mtls_client(secure_broker, pki)) is None
    assert security_problem(sasl_ssl_client(secure_broker, pki, "SCRAM-SHA-256")) is None
    wrong = sasl_ssl_client(secure_broker, pki).model_copy(update={"kafka_sasl_password": SecretStr(WRONG)})
    assert security_problem(wrong).startswith(f"Kafka at 127.0.0.1:{SASL_SSL_PORT} refused the SCRAM-SHA-512 login")
