"""An embedded broker with its SASL listener on (``FINPULSE_KAFKA_SASL_PORT``), for the tests that run
Kafka clients with security settings through it. Its own state dir and ports; started once per session."""

from __future__ import annotations

import secrets

import pytest
from pydantic import SecretStr

from finpulse.settings import Settings
from stack.kafka import EmbeddedKafka
from tests.conftest import TEST_KAFKA_PORT

SASL_USER = "finpulse-test"


@pytest.fixture(scope="session")
def sasl_broker(tmp_path_factory):
    """Settings of the running SASL-enabled broker, as the broker itself sees them (PLAINTEXT clients)."""
    # Quote, backslash and a non-ASCII letter: the JAAS line and server.properties must carry them.
    password = secrets.token_urlsafe(12) + '"\\é'
    broker = Settings(home=tmp_path_factory.mktemp("sasl-broker"), kafka_port=TEST_KAFKA_PORT + 300,
                      kafka_controller_port=TEST_KAFKA_PORT + 301, kafka_sasl_port=TEST_KAFKA_PORT + 302,
                      kafka_sasl_username=SASL_USER, kafka_sasl_password=password)
    kafka = EmbeddedKafka(settings=broker)
    try:
        kafka.up()
        yield broker
    finally:
        kafka.down(purge=True)


def sasl_client(broker: Settings, mechanism: str = "SCRAM-SHA-256", *, password: str | None = None) -> Settings:
    """Settings of a client that logs in to ``broker``'s SASL listener with ``mechanism``."""
    update = {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": mechanism}
    if password is not None:
        update["kafka_sasl_password"] = SecretStr(password)
    client = broker.model_copy(update=update)
    assert client.bootstrap_servers == [f"127.0.0.1:{broker.kafka_sasl_port}"]
    return client


def sasl_environment(broker: Settings, mechanism: str = "SCRAM-SHA-256", *, password: str | None = None) -> dict:
    """The same client configured the way an operator does it: FINPULSE_* variables."""
    secret = password if password is not None else broker.kafka_sasl_password.get_secret_value()
    return {"FINPULSE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "FINPULSE_KAFKA_SASL_MECHANISM": mechanism,
            "FINPULSE_KAFKA_SASL_PORT": str(broker.kafka_sasl_port), "FINPULSE_KAFKA_SASL_USERNAME": SASL_USER,
            "FINPULSE_KAFKA_SASL_PASSWORD": secret}
